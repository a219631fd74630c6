"""The pod policy (pipeline/podpolicy.py): every pod and container field a run's podTemplate can set is
either allowed or refused by name, the namespace's widenings, what `cai validate` reports, and the
restricted fields the builders force after merging."""

from __future__ import annotations

import json

import pytest

from cai.api.manifest import parse_resource
from cai.controller.builders import build_job
from cai.controller.config import ConfigError, OperatorConfig
from cai.controller.observed import FrozenPlan, Storage
from cai.controller.reconcile import pod_policy_problems
from cai.pipeline.podpolicy import ClusterPodPolicy, PodPolicy, force_restricted, pod_problems
from cai.validation import check_resources

DEFAULT = PodPolicy()
T = "spec.resources.podTemplate"
C = f"{T}.spec.containers[name=stage]"


def stage(**fields) -> dict:
    return {"spec": {"containers": [{"name": "stage", **fields}]}}


def paths(template, policy=DEFAULT, sa=None) -> list[str]:
    return [p for p, _ in pod_problems(sa, template, policy)]


# One template per way into the node, another identity or code of the author's own in the stage container.
REFUSED = [
    ({"spec": {"hostNetwork": True}}, f"{T}.spec.hostNetwork"),
    ({"spec": {"hostPID": True}}, f"{T}.spec.hostPID"),
    ({"spec": {"hostIPC": True}}, f"{T}.spec.hostIPC"),
    ({"spec": {"hostUsers": True}}, f"{T}.spec.hostUsers"),
    ({"spec": {"shareProcessNamespace": True}}, f"{T}.spec.shareProcessNamespace"),
    ({"spec": {"nodeName": "control-plane"}}, f"{T}.spec.nodeName"),
    ({"spec": {"serviceAccountName": "admin"}}, f"{T}.spec.serviceAccountName"),
    ({"spec": {"serviceAccount": "admin"}}, f"{T}.spec.serviceAccount"),
    ({"spec": {"automountServiceAccountToken": True}}, f"{T}.spec.automountServiceAccountToken"),
    ({"spec": {"runtimeClassName": "unconfined"}}, f"{T}.spec.runtimeClassName"),
    ({"spec": {"restartPolicy": "Always"}}, f"{T}.spec.restartPolicy"),
    ({"spec": {"initContainers": [{"name": "x", "image": "busybox"}]}}, f"{T}.spec.initContainers"),
    ({"spec": {"ephemeralContainers": [{"name": "x", "image": "busybox"}]}}, f"{T}.spec.ephemeralContainers"),
    ({"spec": {"containers": [{"name": "sidecar", "image": "busybox"}]}}, f"{T}.spec.containers[name=sidecar]"),
    ({"spec": {"someFutureField": True}}, f"{T}.spec.someFutureField"),
    ({"spec": {"securityContext": {"runAsUser": 0}}}, f"{T}.spec.securityContext.runAsUser"),
    ({"spec": {"securityContext": {"runAsNonRoot": False}}}, f"{T}.spec.securityContext.runAsNonRoot"),
    ({"spec": {"securityContext": {"sysctls": [{"name": "kernel.x", "value": "1"}]}}},
     f"{T}.spec.securityContext.sysctls"),
    ({"spec": {"securityContext": {"seLinuxOptions": {"type": "spc_t"}}}}, f"{T}.spec.securityContext.seLinuxOptions"),
    ({"spec": {"securityContext": {"seccompProfile": {"type": "Unconfined"}}}},
     f"{T}.spec.securityContext.seccompProfile"),
    ({"spec": {"securityContext": {"supplementalGroups": [0]}}}, f"{T}.spec.securityContext.supplementalGroups"),
    ({"spec": {"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}}, f"{T}.spec.volumes[name=root].hostPath"),
    ({"spec": {"volumes": [{"name": "g", "gitRepo": {"repository": "x"}}]}}, f"{T}.spec.volumes[name=g].gitRepo"),
    ({"spec": {"volumes": [{"name": "stage-spec", "configMap": {"name": "mine"}}]}},
     f"{T}.spec.volumes[name=stage-spec]"),
    ({"spec": {"volumes": [{"name": "t", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}]}},
     f"{T}.spec.volumes[name=t].projected.sources[0].serviceAccountToken"),
    (stage(image="evil:latest"), f"{C}.image"),
    (stage(command=["sh", "-c", "env"]), f"{C}.command"),
    (stage(args=["--spec", "/tmp/x"]), f"{C}.args"),
    (stage(workingDir="/data"), f"{C}.workingDir"),
    (stage(envFrom=[{"configMapRef": {"name": "x"}}]), f"{C}.envFrom"),
    (stage(lifecycle={"postStart": {"exec": {"command": ["sh"]}}}), f"{C}.lifecycle"),
    (stage(livenessProbe={"exec": {"command": ["sh"]}}), f"{C}.livenessProbe"),
    (stage(startupProbe={"exec": {"command": ["sh"]}}), f"{C}.startupProbe"),
    (stage(terminationMessagePath="/tmp/x"), f"{C}.terminationMessagePath"),
    (stage(volumeDevices=[{"name": "d", "devicePath": "/dev/x"}]), f"{C}.volumeDevices"),
    (stage(securityContext={"privileged": True}), f"{C}.securityContext.privileged"),
    (stage(securityContext={"allowPrivilegeEscalation": True}), f"{C}.securityContext.allowPrivilegeEscalation"),
    (stage(securityContext={"capabilities": {"add": ["SYS_ADMIN"]}}), f"{C}.securityContext.capabilities"),
    (stage(securityContext={"capabilities": {"drop": ["NET_RAW"]}}), f"{C}.securityContext.capabilities"),
    (stage(securityContext={"runAsUser": 0}), f"{C}.securityContext.runAsUser"),
    (stage(securityContext={"procMount": "Unmasked"}), f"{C}.securityContext.procMount"),
    (stage(securityContext={"readOnlyRootFilesystem": False}), f"{C}.securityContext.readOnlyRootFilesystem"),
    ({"spec": {"volumes": [{"name": "tmp", "hostPath": {"path": "/tmp"}}]}}, f"{T}.spec.volumes[name=tmp]"),
    (stage(securityContext={"appArmorProfile": {"type": "Unconfined"}}), f"{C}.securityContext.appArmorProfile"),
    (stage(ports=[{"containerPort": 80, "hostPort": 80}]), f"{C}.ports[containerPort=80]"),
    (stage(env=[{"name": "LD_PRELOAD", "value": "/data/x.so"}]), f"{C}.env[name=LD_PRELOAD]"),
    (stage(env=[{"name": "PYTHONPATH", "value": "/data"}]), f"{C}.env[name=PYTHONPATH]"),
    (stage(env=[{"name": "PATH", "value": "/data/bin"}]), f"{C}.env[name=PATH]"),
    (stage(env=[{"name": "AWS_CONFIG_FILE", "value": "/data/c"}]), f"{C}.env[name=AWS_CONFIG_FILE]"),
    (stage(env=[{"name": "CAI_S3_ENDPOINT", "value": "http://evil"}]), f"{C}.env[name=CAI_S3_ENDPOINT]"),
    (stage(env=[{"name": "NCCL_NET_PLUGIN", "value": "/data/x.so"}]), f"{C}.env[name=NCCL_NET_PLUGIN]"),
    (stage(env=[{"name": "NCCL_CONF_FILE", "value": "/data/nccl.conf"}]), f"{C}.env[name=NCCL_CONF_FILE]"),
    (stage(env=[{"name": "FI_PROVIDER_PATH", "value": "/data"}]), f"{C}.env[name=FI_PROVIDER_PATH]"),
    (stage(env=[{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "other-team", "key": "t"}}}]),
     f"{C}.env[name=HF_TOKEN].valueFrom.secretKeyRef.name"),
    ({"spec": {"volumes": [{"name": "s", "secret": {"secretName": "db-password"}}]}},
     f"{T}.spec.volumes[name=s].secret.secretName"),
    ({"spec": {"volumes": [{"name": "d", "emptyDir": {}}], "containers": [
        {"name": "stage", "volumeMounts": [{"name": "d", "mountPath": "/opt/cai/lib"}]}]}},
     f"{C}.volumeMounts[mountPath=/opt/cai/lib].mountPath"),
    ({"spec": {"volumes": [{"name": "d", "emptyDir": {}}], "containers": [
        {"name": "stage", "volumeMounts": [{"name": "d", "mountPath": "/data/../tmp"}]}]}},
     f"{C}.volumeMounts[mountPath=/data/../tmp].mountPath"),
    (stage(volumeMounts=[{"name": "stage-spec", "mountPath": "/data/spec"}]), f"{C}.volumeMounts[mountPath=/data/spec].name"),
    ({"spec": {"volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "other"}}]}},
     f"{T}.spec.volumes[name=v].persistentVolumeClaim"),
    ({"spec": {"$patch": "replace"}}, f"{T}.spec.$patch"),
    ({"$patch": "replace", "spec": {}}, f"{T}.$patch"),
    ({"spec": {"securityContext": None}}, f"{T}.spec.securityContext"),
    (stage(env=[{"name": "HF_HOME", "$patch": "delete"}]), f"{C}.env[name=HF_HOME].$patch"),
    ({"metadata": {"labels": {"cai.dev/run": "other"}}}, f"{T}.metadata.labels[cai.dev/run]"),
    ({"metadata": {"annotations": {"container.apparmor.security.beta.kubernetes.io/stage": "unconfined"}}},
     f"{T}.metadata.annotations[container.apparmor.security.beta.kubernetes.io/stage]"),
    ({"metadata": {"name": "x"}}, f"{T}.metadata.name"),
]


@pytest.mark.parametrize(("template", "path"), REFUSED, ids=[p for _, p in REFUSED])
def test_each_way_out_is_refused_by_field(template, path):
    assert path in paths(template), paths(template)


def test_harmless_settings_pass():
    template = {
        "metadata": {"labels": {"team": "a"}, "annotations": {"sidecar.istio.io/inject": "false"}},
        "spec": {
            "affinity": {"nodeAffinity": {}}, "nodeSelector": {"pool": "gpu"}, "priorityClassName": "high",
            "tolerations": [{"key": "x", "operator": "Exists"}], "schedulingGates": [{"name": "g"}],
            "topologySpreadConstraints": [], "dnsConfig": {"options": []}, "terminationGracePeriodSeconds": 60,
            "imagePullSecrets": [{"name": "registry"}], "automountServiceAccountToken": False,
            "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
                                "seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"}},
            "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "10Gi"}},
                        {"name": "cfg", "configMap": {"name": "settings"}},
                        {"name": "claim", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}}],
            "containers": [{
                "name": "stage", "imagePullPolicy": "Always",
                "env": [{"name": "HF_HUB_OFFLINE", "value": "1"}, {"name": "NCCL_DEBUG", "value": "INFO"},
                        {"name": "CAI_CACHE_DIR", "value": "/cache/cai"},
                        {"name": "CAI_CHECKPOINT_STEPS", "value": "10"},
                        {"name": "HTTPS_PROXY", "valueFrom": {"configMapKeyRef": {"name": "p", "key": "k"}}}],
                "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"},
                                 {"name": "cfg", "mountPath": "/data/cfg", "readOnly": True},
                                 {"name": "claim", "mountPath": "/cache"}],
                "resources": {"limits": {"example.com/rdma": "1"}},
                "securityContext": {"readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
                                    "allowPrivilegeEscalation": False, "runAsNonRoot": True},
            }],
        },
    }
    assert pod_problems(None, template, DEFAULT) == []


def test_namespace_policy_widens_only_what_it_names():
    template = {"spec": {
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "datasets"}},
                    {"name": "tok", "secret": {"secretName": "hf"}}],
        "containers": [{"name": "stage", "env": [
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}},
            {"name": "WANDB_PROJECT", "value": "cai"}],
            "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}}
    refused = paths(template, sa="trainer")
    assert set(refused) == {"spec.resources.serviceAccountName", f"{T}.spec.volumes[name=data].persistentVolumeClaim",
                            f"{T}.spec.volumes[name=tok].secret.secretName",
                            f"{C}.env[name=HF_TOKEN].valueFrom.secretKeyRef.name", f"{C}.env[name=WANDB_PROJECT]"}
    cluster = ClusterPodPolicy.from_wire({"envNames": ["WANDB_*"], "namespaces": {"ml": {
        "serviceAccountNames": ["trainer"], "secretNames": ["hf"], "volumeTypes": ["persistentVolumeClaim"]}}})
    assert paths(template, cluster.for_namespace("ml"), sa="trainer") == []
    other = paths(template, cluster.for_namespace("other"), sa="trainer")
    assert f"{C}.env[name=WANDB_PROJECT]" not in other and "spec.resources.serviceAccountName" in other
    # Reserved names stay reserved whatever the policy says.
    wide = ClusterPodPolicy.from_wire({"envNames": ["*"]}).for_namespace("ml")
    assert paths(stage(env=[{"name": "LD_PRELOAD", "value": "x"}]), wide) == [f"{C}.env[name=LD_PRELOAD]"]
    # The stage ServiceAccount is always allowed; nothing else without a policy.
    assert paths(None, ClusterPodPolicy(stage_service_account="cai-stage").for_namespace("x"), sa="cai-stage") == []
    message = dict(pod_problems("default", None, DEFAULT))["spec.resources.serviceAccountName"]
    assert "'default' is not allowed" in message and "stages.podPolicy.serviceAccountNames" in message


@pytest.mark.parametrize(("doc", "error"), [
    ({"volumeTypes": ["hostPath"]}, "hostPath cannot be allowed"),
    ({"serviceAcountNames": ["x"]}, "serviceAcountNames: unknown key"),
    ({"namespaces": {"ml": {"secretNames": "hf"}}}, "namespaces.ml.secretNames: expected a list"),
    ([], "expected an object"),
])
def test_cluster_policy_errors_name_the_key(doc, error):
    with pytest.raises(ConfigError, match=f"CAI_POD_POLICY: .*{error}"):
        OperatorConfig.from_env({"CAI_POD_POLICY": json.dumps(doc)})


def test_validate_reports_what_no_namespace_can_allow():
    doc = {"apiVersion": "cai.dev/v1alpha1", "kind": "CritiqueRun", "metadata": {"name": "sl"}, "spec": {
        "constitutionRef": {"name": "h"}, "resources": {"serviceAccountName": "trainer", "podTemplate": {
            "spec": {"hostNetwork": True, "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "c"}}],
                     "containers": [{"name": "stage", "command": ["sh"]}]}}}}}
    res, problems = parse_resource(doc, "run.yaml")
    assert not problems and res is not None
    found = [(p.path, p.obj) for p in check_resources([res], local=False) if "podTemplate" in p.path or "serviceAccount" in p.path]
    # Host network and the command are refused anywhere; the ServiceAccount and the PVC depend on the
    # namespace's policy, which only the operator knows.
    assert found == [(f"{T}.spec.hostNetwork", "CritiqueRun/sl"), (f"{C}.command", "CritiqueRun/sl")]
    config = OperatorConfig(pod_policy=ClusterPodPolicy())
    operator = pod_policy_problems(res, config)
    assert any(p.startswith(f"{T}.spec.hostNetwork: not allowed") for p in operator)
    assert any(p.startswith("spec.resources.serviceAccountName: ") for p in operator)


def test_the_examples_pass_the_default_policy():
    """What the project ships must run on a cluster with the chart's defaults."""
    from pathlib import Path

    from cai.validation import validate_paths

    repo = Path(__file__).resolve().parents[2]
    resources, problems = validate_paths([repo / "examples"], check_references=False)
    assert not problems
    runs = [r for r in resources if r.info.is_run]
    assert any(r.spec.resources.pod_template for r in runs)  # the multi-node example has one
    for r in runs:
        assert pod_problems(r.spec.resources.service_account_name, r.spec.resources.pod_template, DEFAULT) == [], r.display


def plan() -> FrozenPlan:
    return FrozenPlan(stages=("generate-revisions",), outputs={"generate-revisions": "s3://b/g"},
                      storage=Storage(uri="s3://b", secret_name="creds"), specs={"generate-revisions": "{}"})


def run(resources: dict):
    r, problems = parse_resource({"apiVersion": "cai.dev/v1alpha1", "kind": "CritiqueRun",
                                  "metadata": {"name": "sl", "namespace": "ns", "uid": "u"},
                                  "spec": {"constitutionRef": {"name": "h"}, "resources": resources}})
    assert not problems
    return r


def test_builder_uses_stage_service_account_and_default_deadline():
    config = OperatorConfig(pod_policy=ClusterPodPolicy(stage_service_account="cai-stage"),
                            default_active_deadline_seconds=7200)
    job = build_job(run({}), "generate-revisions", plan(), config)
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "cai-stage" and pod["automountServiceAccountToken"] is False
    assert job["spec"]["activeDeadlineSeconds"] == 7200
    own = build_job(run({"serviceAccountName": "trainer", "activeDeadlineSeconds": 60}), "generate-revisions",
                    plan(), config)
    assert own["spec"]["activeDeadlineSeconds"] == 60
    assert own["spec"]["template"]["spec"]["serviceAccountName"] == "trainer"
    assert "automountServiceAccountToken" not in own["spec"]["template"]["spec"]
    none = build_job(run({}), "generate-revisions", plan(), OperatorConfig())
    assert "serviceAccountName" not in none["spec"]["template"]["spec"] and "activeDeadlineSeconds" not in none["spec"]


def test_merged_pods_are_restricted_even_past_a_gap_in_the_rules():
    # What a template the policy refuses would produce if it were merged anyway.
    pod = force_restricted({
        "hostNetwork": True, "hostPID": True, "nodeName": "n", "initContainers": [{"name": "i"}],
        "securityContext": {"runAsUser": 0, "sysctls": [{"name": "x"}]},
        "volumes": [{"name": "root", "hostPath": {"path": "/"}}, {"name": "ok", "emptyDir": {}}],
        "containers": [{"name": "stage", "ports": [{"containerPort": 1, "hostPort": 1}], "securityContext": {
            "privileged": True, "allowPrivilegeEscalation": True, "capabilities": {"add": ["SYS_ADMIN"]},
            "seccompProfile": {"type": "Unconfined"}}}]})
    assert not {"hostNetwork", "hostPID", "nodeName", "initContainers"} & set(pod)
    assert pod["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    assert [v["name"] for v in pod["volumes"]] == ["ok"]
    c = pod["containers"][0]
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                    "readOnlyRootFilesystem": True, "runAsNonRoot": True,
                                    "seccompProfile": {"type": "RuntimeDefault"}}
    assert c["ports"] == [{"containerPort": 1}]
