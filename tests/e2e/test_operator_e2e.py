"""End to end through the operator: stage pods really run (tests/e2e/kubelet.py runs the pods of node
cai-e2e-node as local processes), artifacts land in the test's MinIO, Prometheus scrapes the operator.

* the quickstart (the harmless Constitution and examples/quickstart's CritiqueRun, PreferenceModel and
  RLAIFRun), on `builtin:tiny-random`: every stage's `cai stage` runs from its ConfigMap spec with S3
  credentials from a Secret (secretKeyRef); status, outputs, manifest metrics, events, Prometheus series;
* a stage that fails: retries exhausted → BackoffLimitExceeded with the pod's termination message, and
  its dependent fails with DependencyFailed;
* a CritiqueRun with `resources.nodes: 2`: the finetune stage is an Indexed Job whose two pods train
  together through torchrun (static rendezvous at <job>-0.<service>) and DeepSpeed ZeRO-2 on CPU.
"""
from __future__ import annotations

import copy
import json

import pytest
import yaml

from tests.cluster.control_plane import REPO, free_ports
from tests.e2e.kubelet import POD_PLACEMENT
from tests.integration.operator_support import constitution_spec, until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

TINY = "builtin:tiny-random"
SMALL_GENERATION = {"maxNewTokens": 16, "batchSize": 8}
SMALL_TRAINING = {"epochs": 1, "batchSize": 4, "maxLength": 256}


def quickstart() -> list[dict]:
    """examples/quickstart's runs (SL and RL), shrunk to the tiny random model, a few prompts and steps."""
    docs = [d for p in sorted((REPO / "examples" / "quickstart").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text())]
    runs = [copy.deepcopy(d) for d in docs if d and d.get("kind") in ("CritiqueRun", "PreferenceModel", "RLAIFRun")]
    assert {r["kind"] for r in runs} == {"CritiqueRun", "PreferenceModel", "RLAIFRun"}, "the quickstart changed shape"
    for run in runs:
        spec = run["spec"]
        spec["resources"] = {**spec.get("resources", {}), **POD_PLACEMENT}
        spec["prompts"] = {**spec.get("prompts", {}), "limit": 4}
        for key in ("model", "feedbackModel"):
            if key in spec:
                spec[key] = TINY
        if "model" in spec.get("policy", {}):
            spec["policy"]["model"] = TINY
        if "generation" in spec or run["kind"] != "RLAIFRun":
            spec["generation"] = {**spec.get("generation", {}), **SMALL_GENERATION}
        if run["kind"] == "CritiqueRun":
            if "helpfulPrompts" in spec:
                spec["helpfulPrompts"]["limit"] = 2
            spec.update(revisions=2, fewShotExamples=1)
            spec["finetune"] = {**spec.get("finetune", {}), **SMALL_TRAINING}
        elif run["kind"] == "PreferenceModel":
            spec["training"] = {**spec.get("training", {}), **SMALL_TRAINING}
            spec.pop("pairsPerPrompt", None)
        else:
            spec.update(steps=2, generationsPerPrompt=2, batchSize=2, maxNewTokens=16)
            ev = spec.setdefault("evaluation", {})
            ev["redTeamPrompts"] = {**ev.get("redTeamPrompts", {"source": "builtin:red-team", "split": "test"}), "limit": 2}
            ev["helpfulPrompts"] = {**ev.get("helpfulPrompts", {"source": "builtin:helpful", "split": "test"}), "limit": 2}
            ev["maxNewTokens"] = 16
    return runs


def s3_setup(api, s3_server, kube_namespace) -> str:
    """Secret with the S3 credentials and the namespace's cai-storage ConfigMap; returns the storage root."""
    api.secret("cai-s3", {"AWS_ACCESS_KEY_ID": s3_server.access_key, "AWS_SECRET_ACCESS_KEY": s3_server.secret_key})
    root = f"s3://{s3_server.bucket}/e2e-{kube_namespace}"
    code, body = api.kube.request("POST", f"/api/v1/namespaces/{kube_namespace}/configmaps", {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cai-storage"},
        "data": {"uri": root, "endpoint": s3_server.endpoint, "secretName": "cai-s3", "region": s3_server.region}})
    assert code == 201, body
    return root


def test_quickstart_runs_through_the_operator(api, start_operator, local_kubelet, s3_server, prometheus, kube_namespace):
    root = s3_setup(api, s3_server, kube_namespace)
    # No operator-wide default storage: the namespace's ConfigMap must be what the runs use.
    op = start_operator(env={"CAI_STORAGE_URI": "", "CAI_STORAGE_SECRET": ""})
    prometheus.add_target(f"127.0.0.1:{op.metrics_port}", job=f"cai-operator-{kube_namespace}")

    api.create("Constitution", "harmless", constitution_spec())
    runs = {r["kind"]: r for r in quickstart()}
    for kind in ("RLAIFRun", "PreferenceModel", "CritiqueRun"):  # dependents first: they wait
        api.create(kind, runs[kind]["metadata"]["name"], runs[kind]["spec"])
    name, pm_name, rl_name = (runs[k]["metadata"]["name"] for k in ("CritiqueRun", "PreferenceModel", "RLAIFRun"))

    def why() -> str:
        return f"{local_kubelet.describe(kube_namespace)}\n--- operator ---\n{op.log_tail()}"

    api.wait_condition("CritiqueRun", name, "Succeeded", "True", timeout=300, log=why)
    api.wait_condition("PreferenceModel", pm_name, "Ready", "True", timeout=300, log=why)
    api.wait_condition("RLAIFRun", rl_name, "Succeeded", "True", timeout=360, log=why)

    fs = s3_server.filesystem()
    sl_status = api.get("CritiqueRun", name)["status"]
    pm_status = api.get("PreferenceModel", pm_name)["status"]
    rl_status = api.get("RLAIFRun", rl_name)["status"]
    for status in (sl_status, pm_status, rl_status):
        assert all(c["status"] == "True" for c in status["conditions"]), status["conditions"]
        for uri in status["outputs"].values():
            assert uri.startswith(root + "/"), uri
            artifact = uri.removesuffix("/report.html")
            manifest = json.loads(fs.cat(f"{artifact.removeprefix('s3://')}/manifest.json"))
            assert manifest["producer"]["name"] in (name, pm_name, rl_name)
    # Figures read from the stages' manifests.
    assert sl_status["metrics"]["sftRows"] > 0 and sl_status["metrics"]["tokensGenerated"] > 0
    assert 0.0 <= pm_status["metrics"]["heldOutAccuracy"] <= 1.0
    assert "rewardMean" in rl_status["metrics"] and "kl" in rl_status["metrics"]
    assert "harmlessWinRate" in rl_status["metrics"]
    # Dependents started from their dependencies' outputs and the same Constitution version.
    assert rl_status["constitutionDigest"] == pm_status["constitutionDigest"] == sl_status["constitutionDigest"]
    spec = json.loads(api.core("configmaps", f"{rl_name}-rlaif-spec")["data"]["train-policy.json"])
    assert spec["models"] == {"policy": sl_status["outputs"]["model"], "reward": pm_status["outputs"]["model"]}
    # Stage pods ran with credentials from the Secret only.
    for job in api.jobs():
        env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert env[key] == {"name": key, "valueFrom": {"secretKeyRef": {"name": "cai-s3", "key": key}}}
    reasons = [e["reason"] for e in api.events(rl_name)]
    assert reasons.index("WaitingForDependency") < reasons.index("JobCreated") < reasons.index("Succeeded")

    # Prometheus scraped the operator: run counts by state and stage durations.
    ns = kube_namespace
    prometheus.wait_for(f'cai_runs{{namespace="{ns}",kind="CritiqueRun",condition="Succeeded"}} == 1', timeout=30)
    prometheus.wait_for(f'cai_runs{{namespace="{ns}",kind="PreferenceModel",condition="Ready"}} == 1', timeout=30)
    prometheus.wait_for(f'cai_runs{{namespace="{ns}",kind="RLAIFRun",condition="Succeeded"}} == 1', timeout=30)
    durations = prometheus.wait_for(f'cai_stage_duration_seconds_count{{job="cai-operator-{ns}"}}', timeout=30,
                                    predicate=lambda r: len(r) == 7)
    assert {r["metric"]["stage"] for r in durations} == {
        "generate-revisions", "finetune", "sample-pairs", "label-preferences", "train-preference-model",
        "train-policy", "evaluate"}
    slowest = prometheus.query(f'max(cai_stage_duration_seconds_sum{{job="cai-operator-{ns}"}})')
    assert float(slowest[0]["value"][1]) >= 1.0
    assert prometheus.query(f'cai_tokens_generated_total{{job="cai-operator-{ns}",stage="generate-revisions"}} > 0')
    assert prometheus.query(f'cai_preference_model_accuracy{{job="cai-operator-{ns}",name="{pm_name}"}}')
    assert prometheus.query(f'cai_policy_reward{{job="cai-operator-{ns}",name="{rl_name}"}}')
    prometheus.remove_target(f"cai-operator-{ns}")


def test_failing_stage_exhausts_retries_and_fails_dependents(api, start_operator, local_kubelet, s3_server, kube_namespace):
    s3_setup(api, s3_server, kube_namespace)
    op = start_operator()
    api.create("Constitution", "harmless", constitution_spec())
    missing = f"s3://{s3_server.bucket}/e2e-{kube_namespace}/no-such-prompts.jsonl"
    api.create("CritiqueRun", "broken", {
        "constitutionRef": {"name": "harmless"}, "model": TINY, "prompts": {"source": missing, "limit": 2},
        "generation": SMALL_GENERATION, "resources": {**POD_PLACEMENT, "backoffLimit": 1}})
    api.create("PreferenceModel", "after-broken", {
        "constitutionRef": {"name": "harmless"}, "policy": {"critiqueRunRef": {"name": "broken"}}, "resources": POD_PLACEMENT})

    failed = api.wait_condition("CritiqueRun", "broken", "Succeeded", "False", "BackoffLimitExceeded", timeout=240,
                                log=lambda: local_kubelet.describe(kube_namespace) + op.log_tail())
    # The message carries what the stage wrote to its termination log in the pod.
    assert "no-such-prompts.jsonl" in failed["message"], failed["message"]
    stage = api.condition("CritiqueRun", "broken", "CritiquesGenerated")
    assert (stage["status"], stage["reason"]) == ("False", "BackoffLimitExceeded")
    status = api.get("CritiqueRun", "broken")["status"]
    assert status["stages"][0]["attempts"] == 2  # backoffLimit 1: the first pod and one retry
    assert [j["metadata"]["name"] for j in api.jobs()] == ["broken-generate-revisions"]  # finetune never started
    warnings = [e for e in api.events("broken") if e["type"] == "Warning"]
    assert any(e["reason"] == "BackoffLimitExceeded" and "no-such-prompts" in e["message"] for e in warnings)
    dep = api.wait_condition("PreferenceModel", "after-broken", "Ready", "False", "DependencyFailed", timeout=30)
    assert "CritiqueRun/broken" in dep["message"]
    assert op.metric("cai_stage_failures_total", kind="CritiqueRun", stage="generate-revisions",
                     reason="BackoffLimitExceeded") == 1
    assert op.metric("cai_runs", kind="PreferenceModel", condition="Failed") == 1


def test_two_node_finetune_trains_with_torchrun_and_deepspeed(api, start_operator, local_kubelet, s3_server, kube_namespace):
    s3_setup(api, s3_server, kube_namespace)
    (port,) = free_ports(1)
    op = start_operator(env={"CAI_TORCHRUN_PORT": str(port)})
    api.create("Constitution", "harmless", constitution_spec())
    api.create("CritiqueRun", "two-nodes", {
        "constitutionRef": {"name": "harmless"}, "model": TINY, "prompts": {"source": "builtin:red-team", "limit": 4},
        "revisions": 1, "generation": SMALL_GENERATION,
        "finetune": {**SMALL_TRAINING, "batchSize": 2, "deepspeed": "zero2"},
        "resources": {**POD_PLACEMENT, "nodes": 2, "backoffLimit": 0}})
    api.wait_condition("CritiqueRun", "two-nodes", "Succeeded", "True", timeout=420,
                       log=lambda: local_kubelet.describe(kube_namespace) + op.log_tail())
    job = api.job("two-nodes-finetune")
    assert job["spec"]["completionMode"] == "Indexed" and job["status"]["succeeded"] == 2
    logs = local_kubelet.pod_logs(kube_namespace, "two-nodes-finetune-")
    assert len(logs) == 2, list(logs)
    rank0 = next(log for pod, log in logs.items() if pod.startswith("two-nodes-finetune-0-"))
    rank1 = next(log for pod, log in logs.items() if pod.startswith("two-nodes-finetune-1-"))
    assert "rank 1 done" in rank1 and "wrote s3://" not in rank1  # rank 1 trains, rank 0 publishes
    assert "[finetune] wrote s3://" in rank0
    for log in (rank0, rank1):
        assert "deepspeed_shm_comm_op" in log, log[-3000:]  # DeepSpeed engine with its CPU comm op, both ranks
    status = api.get("CritiqueRun", "two-nodes")["status"]
    model = status["outputs"]["model"]
    manifest = json.loads(s3_server.filesystem().cat(f"{model.removeprefix('s3://')}/manifest.json"))
    assert any(f["path"].endswith(".safetensors") for f in manifest["files"])
    assert status["metrics"]["trainSteps"] >= 1
    until("headless Service", lambda: api.core("services", "two-nodes-finetune"))
