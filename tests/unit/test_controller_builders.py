"""Pure builders of the operator: names, labels, ownerReferences, the stage Job / ConfigMap / Service, the
strategic merge of `podTemplate`, status merge patches, operator config from env, the no-torch import."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cai.api.manifest import parse_resource
from cai.controller.builders import (
    build_configmap,
    build_job,
    build_service,
    child_name,
    job_name,
    service_name,
)
from cai.controller.config import ConfigError, OperatorConfig
from cai.controller.merge import MergeError, merge_patch, strategic_merge
from cai.controller.observed import FrozenPlan, JobObs, Storage

CONFIG = OperatorConfig(stage_image="img:cpu", stage_image_gpu="img:gpu", stage_images={"evaluate": "img:eval"},
                        job_ttl_seconds=600, default_cpu="2", default_memory="4Gi")


def run(spec: dict, name="sl", kind="CritiqueRun"):
    r, problems = parse_resource({"apiVersion": "cai.dev/v1alpha1", "kind": kind,
                                  "metadata": {"name": name, "namespace": "ns", "uid": "u-1"}, "spec": spec})
    assert not problems, problems
    return r


def plan(stages=("generate-revisions", "finetune"), secret="creds"):
    return FrozenPlan(stages=tuple(stages), outputs={s: f"s3://b/{s}" for s in stages},
                      storage=Storage(uri="s3://b", endpoint="http://minio:9000", secret_name=secret),
                      specs={s: "{}" for s in stages})


def env_of(container):
    return {e["name"]: e for e in container["env"]}


def test_names_are_deterministic_and_bounded():
    assert job_name("sl", "finetune") == "sl-finetune"
    long = "x" * 63
    a, b = job_name(long, "train-preference-model"), job_name(long, "train-preference-model")
    assert a == b and len(a) <= 60 and a.endswith("-train-preference-model")
    assert job_name(long + "y"[:0], "finetune") != job_name("x" * 62 + "z", "finetune")
    assert service_name("1abc-finetune").startswith("cai-") and service_name("abc-finetune") == "abc-finetune"
    assert len(child_name("a" * 300, "crun-spec", 253)) <= 253


def test_stage_job_spec():
    r = run({"constitutionRef": {"name": "h"}, "resources": {
        "gpusPerNode": 2, "nodeSelector": {"pool": "gpu"}, "priorityClassName": "high", "serviceAccountName": "trainer",
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
        "backoffLimit": 1, "activeDeadlineSeconds": 3600}})
    job = build_job(r, "finetune", plan(), CONFIG)
    meta, spec = job["metadata"], job["spec"]
    assert meta["name"] == "sl-finetune" and meta["namespace"] == "ns"
    assert meta["labels"]["cai.dev/run"] == "sl" and meta["labels"]["cai.dev/stage"] == "finetune"
    assert meta["labels"]["cai.dev/kind"] == "CritiqueRun"
    assert meta["ownerReferences"] == [{"apiVersion": "cai.dev/v1alpha1", "kind": "CritiqueRun", "name": "sl", "uid": "u-1",
                                        "controller": True, "blockOwnerDeletion": True}]
    assert meta["annotations"]["cai.dev/output"] == "s3://b/finetune"
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"], spec["ttlSecondsAfterFinished"], spec["suspend"]) == (1, 3600, 600, False)
    pod = spec["template"]["spec"]
    assert spec["template"]["metadata"]["labels"]["cai.dev/stage"] == "finetune"
    c = pod["containers"][0]
    assert c["image"] == "img:gpu" and c["command"] == ["cai", "stage", "finetune", "--spec", "/etc/cai/spec.json"]
    assert c["resources"]["limits"] == {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "2"}
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    env = env_of(c)
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"] == {"secretKeyRef": {"name": "creds", "key": "AWS_ACCESS_KEY_ID"}}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "creds"
    assert all("value" not in e for n, e in env.items() if n.startswith("AWS_"))  # never literal credentials
    assert env["CAI_S3_ENDPOINT"]["value"] == "http://minio:9000"
    assert pod["nodeSelector"] == {"pool": "gpu"} and pod["priorityClassName"] == "high"
    assert pod["serviceAccountName"] == "trainer" and pod["restartPolicy"] == "Never"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"} in pod["tolerations"]
    vol = next(v for v in pod["volumes"] if v["name"] == "stage-spec")
    assert vol["configMap"] == {"name": "sl-crun-spec", "items": [{"key": "finetune.json", "path": "spec.json"}]}
    # Restricted pod security standard.
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"] and {"name": "tmp", "emptyDir": {}} in pod["volumes"]
    # The pod runs as the trainer images' own user, so files the image owns stay readable.
    images = Path(__file__).parents[2] / "images"
    for dockerfile in ("trainer.Dockerfile", "trainer-gpu.Dockerfile"):
        user = re.search(r"^USER (\d+):(\d+)$", (images / dockerfile).read_text(), re.MULTILINE)
        assert user, dockerfile
        uid, gid = int(user.group(1)), int(user.group(2))
        assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (uid, gid), dockerfile
    assert "completionMode" not in spec


def test_images_per_stage_and_cpu():
    r = run({"constitutionRef": {"name": "h"}, "resources": {"cpu": "500m"}})
    job = build_job(r, "generate-revisions", plan(secret=None), CONFIG)
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == "img:cpu" and c["resources"]["requests"]["cpu"] == "500m"
    assert not any(e["name"].startswith("AWS_") for e in c["env"])
    rl = run({"policy": {"model": "builtin:tiny-random"}, "rewardModelRef": {"name": "pm"}}, kind="RLAIFRun")
    assert build_job(rl, "evaluate", plan(("train-policy", "evaluate")), CONFIG)["spec"]["template"]["spec"]["containers"][0]["image"] == "img:eval"


def test_multi_node_training_is_an_indexed_job_with_torchrun_and_headless_service():
    r = run({"constitutionRef": {"name": "h"}, "resources": {"nodes": 2}})
    job = build_job(r, "finetune", plan(), CONFIG)
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == "sl-finetune"
    cmd = pod["containers"][0]["command"]
    assert cmd[:2] == ["torchrun", "--nnodes=2"] and "--node-rank=$(JOB_COMPLETION_INDEX)" in cmd
    assert cmd[cmd.index("-m"):] == ["-m", "cai", "stage", "finetune", "--spec", "/etc/cai/spec.json"]
    env = env_of(pod["containers"][0])
    assert env["MASTER_ADDR"]["value"] == "sl-finetune-0.sl-finetune" and env["MASTER_PORT"]["value"] == "29500"
    svc = build_service(r, "finetune")
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {"cai.dev/run": "sl", "cai.dev/kind": "CritiqueRun", "cai.dev/stage": "finetune"}
    # Generation is not a training stage: one pod even with nodes > 1.
    assert "completionMode" not in build_job(r, "generate-revisions", plan(), CONFIG)["spec"]


def test_data_parallel_generation_is_an_indexed_job_of_workers_retried_per_index():
    r = run({"constitutionRef": {"name": "h"}, "resources": {"workers": 4, "backoffLimit": 3}})
    spec = build_job(r, "generate-revisions", plan(), CONFIG)["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 4, 4)
    # One failed worker is retried alone, up to backoffLimit times; a worker out of retries fails the Job.
    assert (spec["backoffLimitPerIndex"], spec["maxFailedIndexes"]) == (3, 0) and "backoffLimit" not in spec
    pod = spec["template"]["spec"]
    assert pod["containers"][0]["command"] == ["cai", "stage", "generate-revisions", "--spec", "/etc/cai/spec.json",
                                               "--workers", "4"]
    assert "subdomain" not in pod and not any(e["name"] == "MASTER_ADDR" for e in pod["containers"][0]["env"])
    # Training stages scale with nodes, not workers: one pod here.
    finetune = build_job(r, "finetune", plan(), CONFIG)["spec"]
    assert "completionMode" not in finetune and finetune["backoffLimit"] == 3
    assert finetune["template"]["spec"]["containers"][0]["command"][-1] == "/etc/cai/spec.json"


def test_pod_template_is_strategically_merged():
    r = run({"constitutionRef": {"name": "h"}, "resources": {"podTemplate": {
        "metadata": {"annotations": {"team": "a"}},
        "spec": {"containers": [{"name": "stage", "env": [{"name": "HF_HUB_OFFLINE", "value": "1"}],
                                 "volumeMounts": [{"name": "cache", "mountPath": "/cache"}]}],
                 "volumes": [{"name": "cache", "emptyDir": {}}]}}}})
    pod = build_job(r, "finetune", plan(), CONFIG)["spec"]["template"]
    assert pod["metadata"]["annotations"] == {"team": "a"} and pod["metadata"]["labels"]["cai.dev/run"] == "sl"
    [stage] = pod["spec"]["containers"]
    assert stage["image"] == "img:cpu"
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in stage["env"] and any(e["name"] == "CAI_PROGRESS" for e in stage["env"])
    assert [m["mountPath"] for m in stage["volumeMounts"]] == ["/etc/cai", "/tmp", "/cache"]
    assert [v["name"] for v in pod["spec"]["volumes"]] == ["stage-spec", "tmp", "cache"]


def test_strategic_merge_directives():
    base = {"containers": [{"name": "a", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]}],
            "tolerations": [{"key": "k"}], "nodeSelector": {"a": "1", "b": "2"}}
    out = strategic_merge(base, {"containers": [{"name": "a", "env": [{"name": "X", "$patch": "delete"}]}],
                                 "tolerations": [{"key": "z"}], "nodeSelector": {"a": None}})
    assert out["containers"][0]["env"] == [{"name": "Y", "value": "2"}]
    assert out["tolerations"] == [{"key": "z"}]  # no merge key: replaced, as the apiserver does
    assert out["nodeSelector"] == {"b": "2"}
    assert strategic_merge(base, {"nodeSelector": {"$patch": "replace", "c": "3"}})["nodeSelector"] == {"c": "3"}
    assert base["containers"][0]["env"][0] == {"name": "X", "value": "1"}  # inputs untouched
    with pytest.raises(MergeError, match="containers"):
        strategic_merge(base, {"containers": [{"image": "no-name"}]})


def test_merge_patch_clears_removed_fields_and_is_none_when_equal():
    old = {"a": 1, "b": {"c": 2, "d": 3}, "l": [1]}
    assert merge_patch(old, old) is None
    assert merge_patch(old, {"a": 1, "b": {"c": 2}, "l": [1, 2]}) == {"b": {"d": None}, "l": [1, 2]}


def test_configmap_round_trips_the_frozen_plan():
    r = run({"constitutionRef": {"name": "h"}})
    p = plan()
    cm = build_configmap(r, p)
    assert cm["metadata"]["name"] == "sl-crun-spec" and cm["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    back = FrozenPlan.from_configmap_data(cm["data"])
    assert back == p


def test_job_observation_from_body():
    body = {"metadata": {"name": "sl-finetune", "namespace": "ns", "uid": "j", "labels": {"cai.dev/stage": "finetune"},
                         "annotations": {"cai.dev/output": "s3://b/ft"},
                         "ownerReferences": [{"apiVersion": "cai.dev/v1alpha1", "kind": "CritiqueRun", "uid": "u-1", "controller": True}]},
            "spec": {"suspend": False},
            "status": {"failed": 3, "conditions": [{"type": "FailureTarget", "status": "True"},
                                                   {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                                    "message": "Job has reached the specified backoff limit"}]}}
    obs = JobObs.from_body(body)
    assert (obs.owner_uid, obs.stage, obs.failed, obs.failed_reason, obs.complete) == ("u-1", "finetune", 3, "BackoffLimitExceeded", False)
    assert obs.output == "s3://b/ft"
    assert JobObs.from_body({"metadata": {"name": "other", "labels": {}}}) is None


def test_config_from_env():
    cfg = OperatorConfig.from_env({
        "CAI_STAGE_IMAGE": "reg/cai:1", "CAI_STAGE_IMAGES": json.dumps({"evaluate": "reg/eval:1"}),
        "CAI_STORAGE_URI": "s3://b/p", "CAI_S3_ENDPOINT": "http://minio:9000", "CAI_STORAGE_SECRET": "s3",
        "CAI_JOB_TTL_SECONDS": "60", "CAI_DEFAULT_CPU": "1", "CAI_DEFAULT_MEMORY": "2Gi",
        "CAI_WATCH_NAMESPACES": "a, b", "POD_NAME": "op-0", "POD_NAMESPACE": "cai-system"})
    assert (cfg.stage_image, cfg.stage_image_gpu, cfg.image_for("evaluate", 0)) == ("reg/cai:1", "reg/cai:1", "reg/eval:1")
    assert (cfg.storage_uri, cfg.s3_endpoint, cfg.storage_secret, cfg.job_ttl_seconds) == ("s3://b/p", "http://minio:9000", "s3", 60)
    assert cfg.watch_namespaces == ("a", "b") and cfg.identity == "op-0" and cfg.lease_namespace == "cai-system"
    for bad, name in (({"CAI_STAGE_IMAGES": "[1]"}, "CAI_STAGE_IMAGES"), ({"CAI_STAGE_IMAGES": '{"nope": "x"}'}, "CAI_STAGE_IMAGES"),
                      ({"CAI_JOB_TTL_SECONDS": "x"}, "CAI_JOB_TTL_SECONDS"), ({"CAI_STORAGE_URI": "http://x"}, "CAI_STORAGE_URI")):
        with pytest.raises(ConfigError, match=name):
            OperatorConfig.from_env(bad)


def test_operator_imports_no_ml_libraries():
    code = ("import sys, cai.controller.main, cai.controller.handlers, cai.controller.controller; "
            "heavy = [m for m in ('torch', 'transformers', 'trl', 'datasets', 'deepspeed', 'vllm') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 0, p.stdout + p.stderr


def test_stage_pods_get_no_api_token_and_own_their_volumes():
    """Stages never call the Kubernetes API: without a serviceAccountName of the run's choosing the pod
    mounts no token. fsGroup makes mounted volumes (the model cache, scratch) writable by the pod's group."""
    pod = build_job(run({"constitutionRef": {"name": "h"}}), "finetune", plan(), CONFIG)["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and "serviceAccountName" not in pod
    sc = pod["securityContext"]
    assert sc["fsGroup"] == sc["runAsGroup"] == sc["runAsUser"] and sc["runAsUser"] != 0
    # A run that names its own ServiceAccount (e.g. IRSA for S3) decides about the token itself.
    own = build_job(run({"constitutionRef": {"name": "h"}, "resources": {"serviceAccountName": "trainer"}}),
                    "finetune", plan(), CONFIG)["spec"]["template"]["spec"]
    assert own["serviceAccountName"] == "trainer" and "automountServiceAccountToken" not in own
