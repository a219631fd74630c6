"""The chart's RBAC is sufficient and minimal, shown on the real control plane.

Sufficient: the chart is installed with helm; then the operator runs here, as a local process, with the
Deployment's own arguments and environment and *the chart's ServiceAccount's token* (TokenRequest), so
every API call it makes is authorized exactly as in the cluster. A CritiqueRun (builtin:tiny-random) goes
all the way to Succeeded: Jobs created, stage pods run in the trainer image on the cluster's real node
(kubelet + containerd) against the real MinIO, status patched, events posted, leader Lease taken. The
operator's log must show no 403.

Minimal: `kubectl auth can-i --list` for that ServiceAccount equals the operator's own list of what it
calls (`cai.controller.rbac`, docs/rbac.md) and nothing more,
and a list of things it must not do -- Secrets anywhere, deletes, spec writes, nodes, CRDs, RBAC, exec,
other Leases -- is denied. The namespaced install grants nothing outside its namespaces. The chart's roles
for people (run author, run viewer) reach edit/admin and view through aggregation.
"""
from __future__ import annotations

import base64
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cai.controller import rbac
from tests.cluster import control_plane as cp

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "cai-operator"
GROUP_VERSION = "cai.dev/v1alpha1"


# ------------------------------------------------------------------------------------------- helpers

def _until(what: str, fn, timeout: float = 120.0, every: float = 0.5, detail=lambda: ""):
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{detail()}")
        time.sleep(every)


def _helm(kube_cluster, home: Path, *args: str) -> subprocess.CompletedProcess:
    helm = kube_cluster.bin_dir / "helm"
    assert helm.exists(), f"no helm in {kube_cluster.bin_dir}: run `make cluster`"
    env = {**kube_cluster.env, "HELM_CACHE_HOME": str(home / "c"), "HELM_CONFIG_HOME": str(home / "g"),
           "HELM_DATA_HOME": str(home / "d")}
    p = subprocess.run([str(helm), *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=240, check=False)
    assert p.returncode == 0, f"helm {' '.join(args)}:\n{p.stdout}\n{p.stderr}"
    return p


def _namespace(kube_cluster, prefix: str) -> str:
    name = f"{prefix}-{secrets.token_hex(3)}"
    code, body = kube_cluster.request("POST", "/api/v1/namespaces",
                                      {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    assert code == 201, body
    return name


def _secret_value(kube_cluster, namespace: str, name: str, key: str) -> str | None:
    code, body = kube_cluster.request("GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")
    if code != 200 or key not in (body.get("data") or {}):
        return None
    return base64.b64decode(body["data"][key]).decode()


def _sa_kubeconfig(kube_cluster, namespace: str, sa: str, path: Path) -> Path:
    """A kubeconfig that authenticates as the ServiceAccount (a bound token from the TokenRequest API)."""
    code, body = kube_cluster.request("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{sa}/token",
                                      {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                                       "spec": {"expirationSeconds": 3600}})
    assert code == 201, body
    path.write_text(cp.kubeconfig_yaml(kube_cluster.server, kube_cluster.ca_file, body["status"]["token"],
                                       f"system:serviceaccount:{namespace}:{sa}"))
    return path


class Release:
    def __init__(self, kube_cluster, home: Path, namespace: str, name: str, values: dict):
        self.kube, self.home, self.namespace, self.name = kube_cluster, home, namespace, name
        self.full = f"{name}-cai-operator"
        self.sa = f"system:serviceaccount:{namespace}:{self.full}"
        flags = [f"--set-json={k}={json.dumps(v)}" for k, v in values.items()]
        _helm(kube_cluster, home, "install", name, str(CHART), "-n", namespace, "--take-ownership",
              *cp.KWOK_HELM_FLAGS, *flags)

    def deployment(self) -> dict:
        code, dep = self.kube.request("GET", f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{self.full}")
        assert code == 200, dep
        return dep

    def uninstall(self) -> None:
        _helm(self.kube, self.home, "uninstall", self.name, "-n", self.namespace, "--wait", "--timeout=120s")

    def can_i(self, verb: str, resource: str, namespace: str | None = None, *extra: str) -> bool:
        args = ["auth", "can-i", verb, resource, f"--as={self.sa}", *extra]
        args += ["-n", namespace] if namespace else ["--all-namespaces"]
        p = self.kube.kubectl(*args, check=False)
        assert p.stdout.strip() in ("yes", "no"), p.stdout + p.stderr
        return p.stdout.strip() == "yes"


class LocalOperator:
    """`cai <Deployment args>` here, with the Deployment's env and the ServiceAccount's kubeconfig."""

    def __init__(self, kube_cluster, release: Release, workdir: Path, identity: str = "rbac-test-operator-0"):
        dep = release.deployment()
        (c,) = dep["spec"]["template"]["spec"]["containers"]
        env = {**os.environ, "HOME": str(workdir), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        env.pop("KUBECONFIG", None)
        for e in c["env"]:
            if "value" in e:
                env[e["name"]] = e["value"]
            elif "fieldRef" in e.get("valueFrom", {}):
                path = e["valueFrom"]["fieldRef"]["fieldPath"]
                env[e["name"]] = {"metadata.name": identity, "metadata.namespace": release.namespace}[path]
            elif "secretKeyRef" in e.get("valueFrom", {}):  # what the kubelet would do
                ref = e["valueFrom"]["secretKeyRef"]
                value = _secret_value(kube_cluster, release.namespace, ref["name"], ref["key"])
                assert value is not None or ref.get("optional"), f"Secret {ref} missing"
                if value is not None:
                    env[e["name"]] = value
        env["HOME"] = str(workdir)  # the Deployment's /tmp is the pod's own; here, a directory of the test
        self.metrics_port, self.health_port = cp.free_ports(2)
        args = [a for a in c["args"] if not a.startswith(("--metrics-port", "--health-port"))]
        kubeconfig = _sa_kubeconfig(kube_cluster, release.namespace, release.full, workdir / "sa.kubeconfig")
        self.argv = [str(Path(sys.executable).parent / "cai"), *args, f"--kubeconfig={kubeconfig}",
                     f"--metrics-port={self.metrics_port}", f"--health-port={self.health_port}"]
        self.log = workdir / "operator.log"
        self.identity = identity
        with open(self.log, "wb") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir,
                                         start_new_session=True)
        _until("the operator's /readyz", self.ready, 90, detail=self.tail)

    def ready(self) -> bool:
        assert self.proc.poll() is None, f"operator exited with {self.proc.returncode}:\n{self.tail()}"
        try:
            code, _ = cp.http("GET", f"http://127.0.0.1:{self.health_port}/readyz")
        except OSError:  # not listening yet
            return False
        return code == 200

    def tail(self, n: int = 60) -> str:
        return cp.log_tail(self.log, n)

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode

    def forbidden_lines(self) -> list[str]:
        text = self.log.read_text(errors="replace")
        return [line for line in text.splitlines()
                if _REFUSED.search(_LOG_PREFIX.sub("", line, count=1)) and _NOT_RBAC not in line]


# A refusal in the operator's log: an HTTP 403 or the API's words for it. The "[time] logger [LEVEL]"
# prefix is cut first: its milliseconds (",403") are not a status code. The apiserver's namespace
# lifecycle check also answers 403 (an event for a run of a namespace an earlier test is deleting):
# that is not a permission the chart lacks.
_LOG_PREFIX = re.compile(r"^\[[^\]]*\]\s*\S+\s*\[[A-Z]+\s*\]")
_REFUSED = re.compile(r"\b403\b|forbidden|not enough permissions", re.IGNORECASE)
_NOT_RBAC = "because it is being terminated"


def _stage_pods(kube_cluster, namespace: str, run: str) -> list[dict]:
    code, pods = kube_cluster.request("GET", f"/api/v1/namespaces/{namespace}/pods?labelSelector=cai.dev%2Frun%3D{run}")
    assert code == 200, pods
    return pods["items"]


def _pod_logs(kube_cluster, namespace: str) -> str:
    """`kubectl logs` of every pod of the namespace (what a failed assertion shows)."""
    names = kube_cluster.kubectl("get", "pods", "-n", namespace, "-o", "name", check=False).stdout.split()
    return "\n".join(f"--- {n}\n" + kube_cluster.kubectl("logs", "-n", namespace, n, "--tail=30", check=False).stdout
                     for n in names)


def _get(kube_cluster, plural: str, namespace: str, name: str) -> dict:
    code, body = kube_cluster.request("GET", f"/apis/{GROUP_VERSION}/namespaces/{namespace}/{plural}/{name}")
    assert code == 200, body
    return body


def _condition(obj: dict, type_: str) -> dict:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_), {})


# ------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def cluster_release(kube_cluster, s3_server, tmp_path_factory):
    """The chart installed cluster-wide (the default) with storage on the test MinIO."""
    home = tmp_path_factory.mktemp("helm")
    ns = _namespace(kube_cluster, "cai-rbac")
    release = Release(kube_cluster, home, ns, f"r{secrets.token_hex(2)}", {
        "storage.bucket": s3_server.bucket, "storage.prefix": f"rbac-{secrets.token_hex(3)}",
        "storage.endpoint": s3_server.endpoint, "storage.createSecret": True,
        "storage.accessKeyId": s3_server.access_key, "storage.secretAccessKey": s3_server.secret_key,
    })
    yield release
    release.uninstall()
    kube_cluster.request("DELETE", f"/api/v1/namespaces/{ns}")


@pytest.fixture
def run_namespace(kube_cluster, s3_server):
    """A team namespace with the storage Secret the stage pods reference."""
    ns = _namespace(kube_cluster, "cai-team")
    code, body = kube_cluster.request("POST", f"/api/v1/namespaces/{ns}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cai-storage"},
        "stringData": {"AWS_ACCESS_KEY_ID": s3_server.access_key, "AWS_SECRET_ACCESS_KEY": s3_server.secret_key}})
    assert code == 201, body
    yield ns
    kube_cluster.request("DELETE", f"/api/v1/namespaces/{ns}")


# ---------------------------------------------------------------------------------------------- tests

def test_operator_as_the_chart_service_account_completes_a_run(kube_cluster, cluster_release, run_namespace,
                                                               project_images, real_node, tmp_path):
    ns = run_namespace
    constitution = yaml.safe_load((REPO / "constitutions" / "harmless.yaml").read_text())
    constitution["metadata"] = {"name": "harmless"}
    run = {
        "apiVersion": GROUP_VERSION, "kind": "CritiqueRun", "metadata": {"name": "rbac-sl"},
        "spec": {
            "constitutionRef": {"name": "harmless"}, "model": "builtin:tiny-random",
            "prompts": {"source": "builtin:red-team", "limit": 2}, "revisions": 1, "fewShotExamples": 0, "seed": 3,
            "generation": {"backend": "transformers", "maxNewTokens": 8, "batchSize": 2},
            "finetune": {"epochs": 1, "batchSize": 2, "maxLength": 64},
            "resources": {"cpu": "1", "memory": "2Gi"},  # the real node: kwok's is tainted
        },
    }
    op = LocalOperator(kube_cluster, cluster_release, tmp_path)
    try:
        kube_cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(constitution) + "\n---\n" + json.dumps(run))

        def succeeded():
            cond = _condition(_get(kube_cluster, "critiqueruns", ns, "rbac-sl"), "Succeeded")
            assert cond.get("status") != "False", f"the run failed: {cond}\n{_pod_logs(kube_cluster, ns)}\n{op.tail()}"
            return cond.get("status") == "True"

        _until("the CritiqueRun to succeed", succeeded, 420, 1.0,
               detail=lambda: f"{json.dumps(_get(kube_cluster, 'critiqueruns', ns, 'rbac-sl').get('status'), indent=1)}\n"
                              f"{_pod_logs(kube_cluster, ns)}\noperator:\n{op.tail()}")
        crun = _get(kube_cluster, "critiqueruns", ns, "rbac-sl")
        status = crun["status"]
        assert status["outputs"].get("dataset", "").startswith("s3://") and status["outputs"].get("model"), status
        stages = {s["name"]: s for s in status["stages"]}
        assert set(stages) == {"generate-revisions", "finetune"} and all(s["jobName"] for s in stages.values())
        pods = _stage_pods(kube_cluster, ns, "rbac-sl")
        assert sorted(p["status"]["phase"] for p in pods) == ["Succeeded", "Succeeded"], _pod_logs(kube_cluster, ns)
        for pod in pods:  # the chart's trainer image, on the real node
            assert pod["spec"]["containers"][0]["image"] == project_images["trainer"]
            assert pod["spec"]["nodeName"] == real_node.name, pod["spec"]["nodeName"]
        assert _condition(_get(kube_cluster, "constitutions", ns, "harmless"), "Ready").get("status") == "True"
        # the Jobs it created, owned by the run
        code, jobs = kube_cluster.request("GET", f"/apis/batch/v1/namespaces/{ns}/jobs?labelSelector=cai.dev%2Frun%3Drbac-sl")
        assert code == 200 and len(jobs["items"]) == 2, jobs
        for job in jobs["items"]:
            assert job["metadata"]["ownerReferences"][0]["uid"] == crun["metadata"]["uid"]
        # events it posted, and the Lease it holds
        code, events = kube_cluster.request("GET", f"/api/v1/namespaces/{ns}/events")
        reasons = {e["reason"] for e in events["items"] if e["involvedObject"].get("name") == "rbac-sl"}
        assert "JobCreated" in reasons, reasons
        code, lease = kube_cluster.request(
            "GET", f"/apis/coordination.k8s.io/v1/namespaces/{cluster_release.namespace}/leases/{cluster_release.full}")
        assert code == 200 and lease["spec"]["holderIdentity"] == op.identity, lease
        # metrics it exports after a run
        code, text = cp.http("GET", f"http://127.0.0.1:{op.metrics_port}/metrics")
        assert code == 200 and b'cai_runs{condition="Succeeded",kind="CritiqueRun"' in text, text[:2000]
    finally:
        rc = op.stop()
    assert rc == 0, op.tail()
    forbidden = op.forbidden_lines()
    assert not forbidden, "the operator was refused something:\n" + "\n".join(forbidden)


def _expected(rules) -> dict[str, set[str]]:
    """{resource.group: verbs} of rules in cai.controller.rbac (the operator's own list, docs/rbac.md)."""
    out: dict[str, set[str]] = {}
    for group, resources, verbs, _why in rules:
        for res in resources:
            out.setdefault(f"{res}.{group}" if group else res, set()).update(verbs)
    return out


# What the operator needs in the namespaces it serves, from the operator's own list.
WORKLOAD = _expected(rbac.CLUSTER_RULES)


def _granted(release: Release, namespace: str) -> dict[str, set[str]]:
    """What the ServiceAccount may do in `namespace` (a SelfSubjectRulesReview made as it: what
    `kubectl auth can-i --list` shows), minus what every authenticated user may do."""
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview", "spec": {"namespace": namespace}}
    p = release.kube.kubectl("create", f"--as={release.sa}", "--validate=false", "-o", "json", "-f", "-",
                             input=json.dumps(review),
                             check=False)
    assert p.returncode == 0, p.stderr
    status = json.loads(p.stdout)["status"]
    assert not status.get("incomplete"), status
    rules = status["resourceRules"]
    out: dict[str, set[str]] = {}
    for r in rules:
        for group in r.get("apiGroups", []):
            for res in r.get("resources", []):
                if group in ("authorization.k8s.io", "authentication.k8s.io") and res.startswith("selfsubject"):
                    continue  # system:basic-user, granted to every authenticated user
                key = f"{res}.{group}" if group else res
                key += f" [{','.join(r['resourceNames'])}]" if r.get("resourceNames") else ""
                out.setdefault(key, set()).update(r["verbs"])
    return out


def test_cluster_scope_grants_exactly_what_the_operator_uses(cluster_release, run_namespace):
    got = _granted(cluster_release, run_namespace)
    assert got == WORKLOAD, json.dumps({k: sorted(v) for k, v in got.items()}, indent=1)
    lease_ns = _granted(cluster_release, cluster_release.namespace)
    (lease_verbs,) = _expected(rbac.LEASE_RULES).values()
    # the chart narrows every Lease verb but create to the release's own Lease
    assert lease_ns == {**WORKLOAD, "leases.coordination.k8s.io": {"create"} & lease_verbs,
                        f"leases.coordination.k8s.io [{cluster_release.full}]": lease_verbs - {"create"}}, lease_ns


DENIED = [
    ("get", "secrets"), ("list", "secrets"), ("watch", "secrets"), ("create", "secrets"),
    ("delete", "jobs.batch"), ("deletecollection", "jobs.batch"), ("update", "jobs.batch"),
    ("create", "pods"), ("delete", "pods"), ("create", "pods/exec"), ("get", "pods/log"),
    ("create", "critiqueruns.cai.dev"), ("patch", "critiqueruns.cai.dev"), ("update", "critiqueruns.cai.dev"),
    ("delete", "critiqueruns.cai.dev"), ("delete", "constitutions.cai.dev"),
    ("update", "configmaps"), ("delete", "configmaps"), ("list", "configmaps"),
    ("get", "services"), ("delete", "services"),
    ("create", "serviceaccounts/token"), ("impersonate", "serviceaccounts"),
    ("create", "rolebindings.rbac.authorization.k8s.io"), ("escalate", "roles.rbac.authorization.k8s.io"),
    ("get", "leases.coordination.k8s.io"),
]
DENIED_CLUSTER = [
    ("list", "nodes"), ("list", "customresourcedefinitions.apiextensions.k8s.io"),
    ("create", "customresourcedefinitions.apiextensions.k8s.io"),
    ("update", "customresourcedefinitions.apiextensions.k8s.io"),
    ("delete", "customresourcedefinitions.apiextensions.k8s.io"),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io"), ("list", "namespaces"), ("delete", "namespaces"),
    ("create", "namespaces"), ("get", "secrets"),
]


def test_cluster_scope_denies_what_the_operator_does_not_need(cluster_release, run_namespace):
    for ns in (run_namespace, cluster_release.namespace, "kube-system", "default"):
        allowed = [(v, r) for v, r in DENIED if cluster_release.can_i(v, r, ns)]
        assert not allowed, f"the ServiceAccount may {allowed} in {ns}"
    allowed = [(v, r) for v, r in DENIED_CLUSTER if cluster_release.can_i(v, r)]
    assert not allowed, f"the ServiceAccount may {allowed} cluster-wide"
    # the Lease: only its own name, only in the release namespace
    assert cluster_release.can_i("update", f"leases.coordination.k8s.io/{cluster_release.full}",
                                 cluster_release.namespace)
    assert not cluster_release.can_i("update", "leases.coordination.k8s.io/other-operator", cluster_release.namespace)
    assert not cluster_release.can_i("update", "leases.coordination.k8s.io/kube-scheduler", "kube-system")
    # and the positive side, so the checks above are not vacuous
    assert cluster_release.can_i("create", "jobs.batch", run_namespace)
    assert cluster_release.can_i("patch", "critiqueruns.cai.dev", run_namespace, "--subresource=status")


def test_roles_for_people_are_aggregated_into_edit_and_view(kube_cluster, cluster_release, run_namespace):
    """The chart's run-author and run-viewer ClusterRoles reach whoever holds edit or view in a namespace
    (the clusterrole-aggregation controller), and the run-author role alone gives runs and nothing else."""
    ns = run_namespace
    for user, role in (("ed", "edit"), ("vi", "view"), ("author", f"{cluster_release.full}-run-author")):
        code, body = kube_cluster.request("POST", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": user},
            "subjects": [{"kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io"}],
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role}})
        assert code == 201, body

    def can(user: str, verb: str, resource: str) -> bool:
        resource, _, sub = resource.partition("/")
        p = kube_cluster.kubectl("auth", "can-i", verb, resource, f"--as={user}", "-n", ns,
                                 *([f"--subresource={sub}"] if sub else []), check=False)
        return p.stdout.strip() == "yes"

    _until("edit and view to aggregate the chart's roles",
           lambda: can("ed", "create", "critiqueruns.cai.dev") and can("vi", "list", "rlaifruns.cai.dev"), 60)
    for kind in ("constitutions", "critiqueruns", "preferencemodels", "rlaifruns"):
        assert can("ed", "delete", f"{kind}.cai.dev") and can("author", "create", f"{kind}.cai.dev")
        assert can("vi", "watch", f"{kind}.cai.dev") and not can("vi", "create", f"{kind}.cai.dev")
    # Status is the operator's; pods, Jobs and Secrets are not the run author's.
    assert not can("ed", "patch", "critiqueruns.cai.dev/status")
    for verb, resource in (("create", "pods"), ("create", "jobs.batch"), ("get", "secrets"),
                           ("patch", "critiqueruns.cai.dev/status"), ("create", "configmaps")):
        assert not can("author", verb, resource), (verb, resource)


@pytest.fixture(scope="module")
def crds(kube_cluster):
    """The cai.dev CRDs, for the install that leaves them to someone else (crds.enabled=false)."""
    files = sorted((REPO / "crds").glob("*.yaml"))
    kube_cluster.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=cai-tests",
                         *(f"--filename={f}" for f in files))
    names = [yaml.safe_load(f.read_text())["metadata"]["name"] for f in files]
    kube_cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{n}" for n in names))
    _until("the cai.dev kinds to be served", lambda: kube_cluster.kubectl("get", "const", "-A", check=False).returncode == 0,
           30)


def test_namespaced_install_is_confined_and_works(kube_cluster, s3_server, crds, tmp_path):
    """rbac.scope=namespaced: Roles only in the served namespace, nothing cluster-wide; the operator, run
    with that ServiceAccount, reconciles a Constitution there without any 403."""
    rel_ns, served, other = (_namespace(kube_cluster, p) for p in ("cai-nsrel", "cai-served", "cai-other"))
    release = Release(kube_cluster, tmp_path / "helm", rel_ns, f"n{secrets.token_hex(2)}", {
        "rbac.scope": "namespaced", "watchNamespaces": [served], "crds.enabled": False,
        "storage.bucket": s3_server.bucket, "storage.endpoint": s3_server.endpoint})
    op = None
    try:
        assert _granted(release, served) == WORKLOAD
        assert _granted(release, other) == {}
        assert not release.can_i("list", "namespaces") and not release.can_i("list", "critiqueruns.cai.dev")
        assert not release.can_i("create", "jobs.batch", other)
        assert not release.can_i("get", "secrets", served)
        op = LocalOperator(kube_cluster, release, tmp_path)
        assert f"--namespace={served}" in op.argv
        constitution = yaml.safe_load((REPO / "constitutions" / "harmless.yaml").read_text())
        constitution["metadata"] = {"name": "harmless"}
        # The other namespace's object first: by the time the served one has made the whole round trip
        # (watch, reconcile, status write), an operator watching both would have seen the other one too.
        for ns in (other, served):
            kube_cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(constitution))
        _until("the Constitution in the served namespace to be Ready",
               lambda: _condition(_get(kube_cluster, "constitutions", served, "harmless"), "Ready").get("status") == "True",
               60, detail=op.tail)
        assert not _condition(_get(kube_cluster, "constitutions", other, "harmless"), "Ready"), \
            "the operator reconciled a namespace it does not serve"
        code, text = cp.http("GET", f"http://127.0.0.1:{op.metrics_port}/metrics")
        assert code == 200 and f'namespace="{served}"'.encode() in text, text[-2000:]
        assert f'namespace="{other}"'.encode() not in text, "the operator indexed a namespace it does not serve"
    finally:
        rc = op.stop() if op else 0
        release.uninstall()
        for ns in (rel_ns, served, other):
            kube_cluster.request("DELETE", f"/api/v1/namespaces/{ns}")
    assert rc == 0, op.tail()
    forbidden = op.forbidden_lines()
    assert not forbidden, "the operator was refused something:\n" + "\n".join(forbidden)
