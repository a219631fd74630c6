"""Multi-tenant safety and faults, on the real control plane and MinIO (issue 12, the operator's side).

Where it sits: `cai operator` as a subprocess under the documented RBAC (tests/integration/operator_support.py);
kwok completes stage pods, KwokPublisher writes the artifacts the stages would have written. Each test
injects one fault or attack and checks what reaches the run's status:

* a namespace user holding only the chart's run-author ClusterRole tries every way into the node or another
  identity through a run's spec (podTemplate, serviceAccountName, storage): each run ends InvalidSpec
  naming the field and no Job exists, while harmless settings and what the namespace's policy allows run;
* spec.storage outside what the namespace's cai-storage permits is refused; inside, artifacts stay below
  the run's namespace;
* an admission policy refusing stage Jobs (403) and pods that cannot start become conditions with the
  apiserver's message;
* a stage Job that completes without publishing fails the run, naming the artifact;
* the apiserver restarted mid-run: every run completes, no Job is created twice;
* a leader whose connection to the apiserver hangs stops acting before the standby takes over.
"""
from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from cai.controller import rbac
from tests.cluster import control_plane as cp
from tests.integration.operator_support import (
    KWOK,
    OperatorProcess,
    constitution_spec,
    grant_lease_role,
    until,
)
from tests.integration.test_operator_restart import JobRecorder

pytestmark = pytest.mark.cluster

TINY = "builtin:tiny-random"
T = "spec.resources.podTemplate.spec"
C = f"{T}.containers[name=stage]"


def crun(resources: dict | None = None, **extra) -> dict:
    """A small CritiqueRun placed on the kwok node (its tolerations added to the test's own)."""
    resources = resources or {}
    resources = {**KWOK, **resources, "tolerations": KWOK["tolerations"] + resources.get("tolerations", [])}
    return {"constitutionRef": {"name": "harmless"}, "model": TINY, "prompts": {"source": "builtin:red-team", "limit": 2},
            "resources": resources, **extra}


def template(spec: dict) -> dict:
    return {"podTemplate": {"spec": {**KWOK["podTemplate"]["spec"], **spec}}}


def stage(**fields) -> dict:
    return template({"containers": [{"name": "stage", **fields}]})


def mount(volume: dict, path: str = "/data/x") -> dict:
    return template({"volumes": [volume], "containers": [{"name": "stage", "volumeMounts": [
        {"name": volume["name"], "mountPath": path}]}]})


# name -> (spec.resources, or a whole spec when it has "spec"), the field the refusal must name
ATTACKS: dict[str, tuple[dict, str]] = {
    "host-network": (template({"hostNetwork": True}), f"{T}.hostNetwork"),
    "host-pid": (template({"hostPID": True}), f"{T}.hostPID"),
    "host-ipc": (template({"hostIPC": True}), f"{T}.hostIPC"),
    "host-path": (mount({"name": "root", "hostPath": {"path": "/"}}), f"{T}.volumes[name=root].hostPath"),
    "privileged": (stage(securityContext={"privileged": True}), f"{C}.securityContext.privileged"),
    "escalation": (stage(securityContext={"allowPrivilegeEscalation": True}), f"{C}.securityContext.allowPrivilegeEscalation"),
    "capabilities": (stage(securityContext={"capabilities": {"add": ["SYS_ADMIN"]}}), f"{C}.securityContext.capabilities"),
    "root-user": (template({"securityContext": {"runAsUser": 0, "runAsNonRoot": False}}), f"{T}.securityContext.runAsUser"),
    "unconfined": (stage(securityContext={"seccompProfile": {"type": "Unconfined"}}), f"{C}.securityContext.seccompProfile"),
    "host-port": (stage(ports=[{"containerPort": 22, "hostPort": 22}]), f"{C}.ports[containerPort=22]"),
    "node-name": (template({"nodeName": cp.KWOK_NODE}), f"{T}.nodeName"),
    "share-pids": (template({"shareProcessNamespace": True}), f"{T}.shareProcessNamespace"),
    "runtime-class": (template({"runtimeClassName": "unsandboxed"}), f"{T}.runtimeClassName"),
    "command": (stage(command=["sh", "-c", "env"]), f"{C}.command"),
    "args": (stage(args=["-c", "env"]), f"{C}.args"),
    "image": (stage(image="busybox"), f"{C}.image"),
    "post-start": (stage(lifecycle={"postStart": {"exec": {"command": ["sh", "-c", "env"]}}}), f"{C}.lifecycle"),
    "exec-probe": (stage(livenessProbe={"exec": {"command": ["sh"]}}), f"{C}.livenessProbe"),
    "sidecar": (template({"containers": [{"name": "sidecar", "image": "busybox"}]}), f"{T}.containers[name=sidecar]"),
    "init": (template({"initContainers": [{"name": "i", "image": "busybox"}]}), f"{T}.initContainers"),
    "ephemeral": (template({"ephemeralContainers": [{"name": "e", "image": "busybox"}]}), f"{T}.ephemeralContainers"),
    "sa-field": ({"serviceAccountName": "power"}, "spec.resources.serviceAccountName"),
    "sa-template": (template({"serviceAccountName": "power"}), f"{T}.serviceAccountName"),
    "sa-deprecated": (template({"serviceAccount": "power"}), f"{T}.serviceAccount"),
    "sa-token": (mount({"name": "t", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}),
                 f"{T}.volumes[name=t].projected.sources[0].serviceAccountToken"),
    "automount": (template({"automountServiceAccountToken": True}), f"{T}.automountServiceAccountToken"),
    "secret-env": (stage(env=[{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "db-password", "key": "p"}}}]),
                   f"{C}.env[name=HF_TOKEN].valueFrom.secretKeyRef.name"),
    "secret-env-from": (stage(envFrom=[{"secretRef": {"name": "db-password"}}]), f"{C}.envFrom"),
    "secret-volume": (mount({"name": "s", "secret": {"secretName": "db-password"}}), f"{T}.volumes[name=s].secret.secretName"),
    "aws-env": (stage(env=[{"name": "AWS_SHARED_CREDENTIALS_FILE", "value": "/data/c"}]),
                f"{C}.env[name=AWS_SHARED_CREDENTIALS_FILE]"),
    "code-path-mount": (mount({"name": "d", "emptyDir": {}}, "/opt/cai"), f"{C}.volumeMounts[mountPath=/opt/cai].mountPath"),
    "pvc": (mount({"name": "v", "persistentVolumeClaim": {"claimName": "someone-elses"}}),
            f"{T}.volumes[name=v].persistentVolumeClaim"),
    "replace-all": ({"podTemplate": {"$patch": "replace", "spec": {"hostNetwork": True}}}, "spec.resources.podTemplate.$patch"),
    "delete-security": (template({"securityContext": None}), f"{T}.securityContext"),
    # (the namespace's own storage root, with another Secret: filled in by the test)
    "storage-secret": ({"spec": {"storage": {"secretRef": {"name": "db-password"}}}}, "spec.storage.secretRef.name"),
}


def impersonate(kube, user: str, namespace: str, *args: str, input: str | None = None):
    return kube.kubectl(f"--as={user}", "-n", namespace, *args, input=input, check=False)


def test_run_author_cannot_get_privilege_through_any_spec_field(api, start_operator, kube_cluster, kube_namespace,
                                                               operator_env):
    ns = kube_namespace
    # A ServiceAccount with power and a Secret the author may not read, both in the author's namespace.
    kube_cluster.request("POST", f"/api/v1/namespaces/{ns}/serviceaccounts",
                         {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "power"}})
    api.secret("db-password", {"p": "hunter2"})
    api.secret("hf-token", {"token": "hf_abc"})
    role = rbac.user_role(rbac.AUTHOR_RULES, f"cai-run-author-{ns}")
    assert kube_cluster.request("POST", "/apis/rbac.authorization.k8s.io/v1/clusterroles", role)[0] == 201
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "alice"},
               "subjects": [{"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"}],
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role["metadata"]["name"]}}
    assert kube_cluster.request("POST", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings", binding)[0] == 201
    try:
        # The namespace's policy allows one Secret; another namespace's allowances do not leak here.
        policy = {"namespaces": {ns: {"secretNames": ["hf-token"]},
                                 "elsewhere": {"serviceAccountNames": ["power"], "secretNames": ["db-password"],
                                               "volumeTypes": ["persistentVolumeClaim"]}}}
        op = start_operator(env={"CAI_POD_POLICY": json.dumps(policy)})
        for verb, what in (("create", "pods"), ("create", "jobs"), ("get", "secrets"), ("create", "configmaps")):
            out = impersonate(kube_cluster, "alice", ns, "auth", "can-i", verb, what)
            assert out.stdout.strip() == "no", (verb, what, out.stdout)
        api.create("Constitution", "harmless", constitution_spec())

        def submit(name: str, spec: dict) -> None:
            doc = {"apiVersion": "cai.dev/v1alpha1", "kind": "CritiqueRun", "metadata": {"name": name}, "spec": spec}
            out = impersonate(kube_cluster, "alice", ns, "create", "-f", "-", input=json.dumps(doc))
            assert out.returncode == 0, out.stderr  # runs she may create: the operator must hold the line

        own_root = operator_env["CAI_STORAGE_URI"]
        for name, (resources, _) in ATTACKS.items():
            if "spec" in resources:
                storage = {"uri": own_root, **resources["spec"]["storage"]}
                submit(name, crun(storage=storage))
            else:
                submit(name, crun(resources))
        harmless = {"nodeSelector": {"type": "kwok"}, "tolerations": [{"key": "spot", "operator": "Exists"}],
                    **template({"volumes": [{"name": "scratch", "emptyDir": {}}], "containers": [{
                        "name": "stage", "env": [{"name": "HF_HUB_OFFLINE", "value": "1"},
                                                 {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
                                                     "name": "hf-token", "key": "token"}}}],
                        "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
                        "securityContext": {"readOnlyRootFilesystem": True}}]})}
        submit("harmless", crun(harmless))

        for name, (_, field) in ATTACKS.items():
            refused = api.wait_condition("CritiqueRun", name, "Succeeded", "False", "InvalidSpec", log=op.log_tail)
            assert field in refused["message"], (name, refused["message"])
        api.wait_condition("CritiqueRun", "harmless", "Succeeded", "True", log=op.log_tail)
        jobs = api.jobs()
        assert {j["metadata"]["labels"]["cai.dev/run"] for j in jobs} == {"harmless"}
        pods = api.core("pods")
        assert {p["metadata"]["labels"]["cai.dev/run"] for p in pods["items"]} <= {"harmless"}
        assert all(e["type"] == "Warning" for e in api.events() if e["reason"] == "InvalidSpec")
        for job in jobs:
            pod = job["spec"]["template"]["spec"]
            assert not {"hostNetwork", "hostPID", "hostIPC", "nodeName", "serviceAccountName", "initContainers"} & set(pod)
            assert pod["automountServiceAccountToken"] is False
            assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 65532
            [c] = pod["containers"]
            assert c["command"][:2] == ["cai", "stage"] and c["image"] == "cai-trainer:test"
            assert c["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                            "runAsNonRoot": True, "readOnlyRootFilesystem": True,
                                            "seccompProfile": {"type": "RuntimeDefault"}}
            env = {e["name"]: e for e in c["env"]}
            assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "hf-token"  # what the namespace allows
            assert {v["name"] for v in pod["volumes"]} == {"stage-spec", "tmp", "scratch"}
    finally:
        kube_cluster.request("DELETE", f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{role['metadata']['name']}")


def test_storage_overrides_stay_inside_what_the_namespace_permits(api, start_operator, kube_cluster, kube_namespace, s3_server):
    ns = kube_namespace
    code, body = kube_cluster.request("POST", f"/api/v1/namespaces/{ns}/configmaps", {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cai-storage"},
        "data": {"uri": f"s3://{s3_server.bucket}/{ns}-team", "secretName": "cai-s3",
                 "allowedURIs": f"s3://{s3_server.bucket}/scratch"}})
    assert code == 201, body
    op = start_operator()
    api.create("Constitution", "harmless", constitution_spec())
    # Another namespace's tree of the shared bucket, and the bucket root: not this namespace's.
    api.create("CritiqueRun", "theirs", crun(storage={"uri": f"s3://{s3_server.bucket}/victim-team/victim"}))
    api.create("CritiqueRun", "root", crun(storage={"uri": f"s3://{s3_server.bucket}"}))
    api.create("CritiqueRun", "scratch", crun(storage={"uri": f"s3://{s3_server.bucket}/scratch/exp-1"}))
    for name in ("theirs", "root"):
        refused = api.wait_condition("CritiqueRun", name, "Succeeded", "False", "InvalidSpec", log=op.log_tail)
        assert refused["message"].startswith("spec.storage.uri: ") and "allowedURIs" in refused["message"], refused
    api.wait_condition("CritiqueRun", "scratch", "Succeeded", "True", log=op.log_tail)
    run = api.get("CritiqueRun", "scratch")
    root = f"s3://{s3_server.bucket}/scratch/exp-1/{ns}/critiqueruns/scratch/{run['metadata']['uid']}"
    assert run["status"]["outputs"] == {"dataset": f"{root}/generate-revisions", "model": f"{root}/finetune"}
    assert s3_server.filesystem().exists(f"{root.removeprefix('s3://')}/finetune/manifest.json")
    assert {j["metadata"]["labels"]["cai.dev/run"] for j in api.jobs()} == {"scratch"}


def test_refused_jobs_and_pods_that_never_start_reach_status(api, start_operator, kube_cluster, kube_namespace):
    ns = kube_namespace
    # An admission policy (as a webhook would) refuses the stage Jobs of one run with 403.
    policy = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
              "metadata": {"name": f"{ns}-approval"},
              "spec": {"failurePolicy": "Fail", "matchConstraints": {"resourceRules": [{
                  "apiGroups": ["batch"], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["jobs"]}]},
                  "validations": [{"expression": "!('cai.dev/run' in object.metadata.?labels.orValue({})) || "
                                                 "object.metadata.labels['cai.dev/run'] != 'refused'",
                                   "message": "stage Jobs of this run need the platform team's approval",
                                   "reason": "Forbidden"}]}}
    binding = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
               "metadata": {"name": f"{ns}-approval"},
               "spec": {"policyName": f"{ns}-approval", "validationActions": ["Deny"],
                        "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}}}
    vap = "/apis/admissionregistration.k8s.io/v1"
    assert kube_cluster.request("POST", f"{vap}/validatingadmissionpolicies", policy)[0] == 201
    assert kube_cluster.request("POST", f"{vap}/validatingadmissionpolicybindings", binding)[0] == 201
    try:
        op = start_operator(env={"CAI_POD_START_TIMEOUT_SECONDS": "3",
                                 "CAI_POD_POLICY": json.dumps({"serviceAccountNames": ["missing"]})})
        api.create("Constitution", "harmless", constitution_spec())
        until("the admission policy is in force", lambda: kube_cluster.request(
            "POST", f"/apis/batch/v1/namespaces/{ns}/jobs?dryRun=All",
            {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "probe", "labels": {"cai.dev/run": "refused"}},
             "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}}}})[0] == 403)
        api.create("CritiqueRun", "refused", crun())
        # Pods that cannot be scheduled, and pods that cannot even be created (their ServiceAccount is missing).
        api.create("CritiqueRun", "unschedulable", crun({"nodeSelector": {"cai.dev/nowhere": "true"}}))
        api.create("CritiqueRun", "no-pods", crun({"serviceAccountName": "missing"}))

        refused = api.wait_condition("CritiqueRun", "refused", "Succeeded", "Unknown", "FailedCreate", log=op.log_tail)
        assert "refused-generate-revisions" in refused["message"] and "platform team's approval" in refused["message"]
        assert ("Warning", "FailedCreate") in {(e["type"], e["reason"]) for e in api.events("refused")}
        stalled = api.wait_condition("CritiqueRun", "unschedulable", "Succeeded", "Unknown", "PodsNotStarted", log=op.log_tail)
        assert "unschedulable-generate-revisions" in stalled["message"], stalled
        assert "node(s) didn't match Pod's node affinity/selector" in stalled["message"], stalled
        stalled = api.wait_condition("CritiqueRun", "no-pods", "Succeeded", "Unknown", "PodsNotStarted", log=op.log_tail)
        assert 'serviceaccount "missing" not found' in stalled["message"], stalled
        assert api.condition("CritiqueRun", "no-pods", "CritiquesGenerated")["reason"] == "PodsNotStarted"
        assert not any(j["metadata"]["name"].startswith("refused-") for j in api.jobs())

        # Approval granted: the refused run is tried again and goes through.
        kube_cluster.request("DELETE", f"{vap}/validatingadmissionpolicybindings/{ns}-approval")
        api.wait_condition("CritiqueRun", "refused", "Succeeded", "True", timeout=120, log=op.log_tail)
    finally:
        kube_cluster.request("DELETE", f"{vap}/validatingadmissionpolicybindings/{ns}-approval")
        kube_cluster.request("DELETE", f"{vap}/validatingadmissionpolicies/{ns}-approval")


def test_a_stage_job_that_succeeds_without_its_manifest_fails_the_run(api, start_operator, kwok_publisher):
    op = start_operator()
    kwok_publisher.skip.add("empty")  # its pods complete (kwok) without writing anything
    api.create("Constitution", "harmless", constitution_spec())
    api.create("CritiqueRun", "empty", crun())
    api.create("CritiqueRun", "full", crun())
    failed = api.wait_condition("CritiqueRun", "empty", "Succeeded", "False", "ArtifactMissing", log=op.log_tail)
    job = api.job("empty-generate-revisions")
    assert any(c["type"] == "Complete" and c["status"] == "True" for c in job["status"]["conditions"])
    assert f"{job['metadata']['annotations']['cai.dev/output']}/manifest.json does not exist" in failed["message"]
    assert api.condition("CritiqueRun", "empty", "CritiquesGenerated")["reason"] == "ArtifactMissing"
    assert api.job("empty-finetune") is None  # nothing ran on a missing dataset
    assert "outputs" not in api.get("CritiqueRun", "empty")["status"] or not api.get("CritiqueRun", "empty")["status"]["outputs"]
    api.wait_condition("CritiqueRun", "full", "Succeeded", "True", log=op.log_tail)
    assert op.metric("cai_stage_failures_total", stage="generate-revisions", reason="ArtifactMissing") == 1


def restart_apiserver(cluster: cp.Cluster) -> None:
    """Stop the kube-apiserver process and start it again with the same arguments (its state is etcd's)."""
    rec = next(r for r in cluster.procs if r["name"] == "kube-apiserver")
    argv = [a.decode() for a in Path(f"/proc/{rec['pid']}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")]
    cp.stop_procs([rec])
    new = cp.spawn("kube-apiserver", argv, Path(rec["log"]).parent, cwd=cluster.root,
                   die_with_parent=cluster.state.get("owner") == "pytest")
    cluster.procs[cluster.procs.index(rec)] = new
    cluster.save()
    until("apiserver ready again", cluster.healthy, timeout=90, every=0.5)


def test_apiserver_restarted_mid_run(api, start_operator, kube_cluster, kube_namespace, kwok_publisher, _cai_cluster):
    recorder = JobRecorder(kube_cluster, kube_namespace)
    try:
        op = start_operator()
        kwok_publisher.paused.set()  # stage pods stay gated: the restart lands while every run is mid-way
        api.create("Constitution", "harmless", constitution_spec())
        names = [f"run-{i}" for i in range(3)]
        for name in names:
            api.create("CritiqueRun", name, crun())
        until("every run's first Job", lambda: all(api.job(f"{n}-generate-revisions") for n in names), timeout=60,
              on_timeout=op.log_tail)
        before = {n: api.job(f"{n}-generate-revisions")["metadata"]["uid"] for n in names}
        restart_apiserver(_cai_cluster)
        kwok_publisher.paused.clear()
        for name in names:
            api.wait_condition("CritiqueRun", name, "Succeeded", "True", timeout=180, log=op.log_tail)
        assert {n: api.job(f"{n}-generate-revisions")["metadata"]["uid"] for n in names} == before
        assert {j["metadata"]["name"] for j in api.jobs()} == {f"{n}-{s}" for n in names
                                                             for s in ("generate-revisions", "finetune")}
        assert not {n: u for n, u in recorder.uids.items() if len(u) > 1}, recorder.uids
        created = [e["message"] for e in api.events() if e["reason"] == "JobCreated"]
        assert len(created) == len(set(created)) == 6, created
        assert op.starts == 1 and op.ready()  # the same operator process rode it out
    finally:
        recorder.close()


class FreezableProxy:
    """A TCP proxy to the apiserver that can stop passing bytes (connections stay open and hang), as a
    stalled network or an overloaded apiserver would look to a client."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.flowing = threading.Event()
        self.flowing.set()
        self.server = socket.create_server((target[0], 0))  # the address the certificate names
        self.port = self.server.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                self.flowing.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.closed = True
        self.flowing.set()
        self.server.close()


def test_a_leader_that_cannot_renew_stops_acting(api, start_operator, kube_cluster, kube_namespace, operator_sa_kubeconfig,
                                                 tmp_path):
    grant_lease_role(kube_cluster, kube_namespace)
    host, port = kube_cluster.server.removeprefix("https://").rsplit(":", 1)
    proxy = FreezableProxy((host, int(port)))
    cfg = json.loads(operator_sa_kubeconfig.read_text())
    cfg["clusters"][0]["cluster"]["server"] = f"https://{host}:{proxy.port}"
    via_proxy = tmp_path / "via-proxy.kubeconfig"
    via_proxy.write_text(json.dumps(cfg))
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    try:
        # Lease 4 s, renewed every 0.5 s (operator_env): a leader must stop within its renew deadline.
        a: OperatorProcess = start_operator("replica-a", standalone=False, env={"POD_NAME": "replica-a"},
                                            kubeconfig=via_proxy)
        until("replica-a leads", lambda: a.metric("cai_leader") == 1, timeout=30, on_timeout=a.log_tail)
        b = start_operator("replica-b", standalone=False, env={"POD_NAME": "replica-b"})
        assert b.metric("cai_leader") == 0

        def sample() -> None:
            while not stop.wait(0.05):
                samples.append((a.metric("cai_leader"), b.metric("cai_leader")))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        proxy.flowing.clear()  # replica-a's requests (Lease renewals, watches) now hang
        until("replica-b leads", lambda: b.metric("cai_leader") == 1, timeout=30, on_timeout=b.log_tail)
        until("a few samples with b leading", lambda: sum(1 for _, lb in samples if lb == 1) >= 5)
        stop.set()
        sampler.join(timeout=5)
        assert (1.0, 1.0) not in samples, "both replicas reported leading at the same time"
        assert samples[-1] == (0.0, 1.0)
        assert "stepping down" in a.log_tail()
        # The new leader acts.
        api.create("Constitution", "harmless", constitution_spec())
        api.create("CritiqueRun", "after", crun())
        api.wait_condition("CritiqueRun", "after", "Succeeded", "True", log=b.log_tail)
        assert {e.get("reportingInstance") for e in api.events() if e["reason"] == "JobCreated"} == {"replica-b"}
    finally:
        stop.set()
        proxy.close()
