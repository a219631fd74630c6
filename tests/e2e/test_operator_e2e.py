"""End to end as a user runs it: the operator installed with the README's Helm block (tests/e2e/conftest.py)
runs in its pod, its stage Jobs run the CPU trainer image on the real node (kubelet + containerd + runc)
under the restricted Pod Security Standard, credentials reach pods only through secretKeyRef, artifacts
go to MinIO, and the cluster's Prometheus scrapes the operator's pods.

* the quickstart (the harmless Constitution and examples/quickstart's CritiqueRun, PreferenceModel and
  RLAIFRun) shrunk to `builtin:tiny-random`: status, outputs, manifest metrics, events, Prometheus series,
  and a stage pod seen with `kubectl logs` and `kubectl describe`;
* a stage that fails: retries exhausted, BackoffLimitExceeded with the pod's termination message, and its
  dependent fails with DependencyFailed;
* suspend and resume: the running stage pod is stopped on the node, and the run finishes after resuming;
  a suspended finetune's new pod restores the checkpoint its first pod kept in MinIO and resumes there;
* a CritiqueRun with `resources.nodes: 2`: an Indexed Job of two pods that train together through torchrun
  and DeepSpeed ZeRO-2, rank 1 finding rank 0 at `<job>-0.<service>` through cluster DNS (CoreDNS);
* a CritiqueRun with `resources.workers: 4`: generation as four data-parallel pods whose merged dataset is
  byte for byte the one a single pod writes.
"""
from __future__ import annotations

import json
import re

import pytest

from tests.integration.operator_support import constitution_spec, until
from tests.quickstart import SMALL_GENERATION, SMALL_TRAINING, TINY, small_quickstart

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

# The node has this machine's 2 CPUs; the chart's default stage pod (2 CPUs, 8Gi) would not fit beside
# the operator's pods.
POD = {"cpu": "1", "memory": "3Gi"}
METRICS_JOB = 'job="cai-operator-metrics"'


def quickstart() -> list[dict]:
    return small_quickstart(POD)


def stage_pods(api, job: str) -> list[dict]:
    code, body = api.kube.request("GET", f"/api/v1/namespaces/{api.ns}/pods?labelSelector=job-name%3D{job}")
    assert code == 200, body
    return sorted(body["items"], key=lambda p: p["metadata"]["name"])


def why(api) -> str:
    """For assertion messages: the namespace's pods, their events and log tails, and the operator's log."""
    kubectl = lambda *a: api.kube.kubectl(*a, check=False).stdout
    parts = [kubectl("get", "pods,jobs", "-n", api.ns, "-o", "wide")]
    code, body = api.kube.request("GET", f"/api/v1/namespaces/{api.ns}/pods")
    for pod in (body or {}).get("items", []) if code == 200 else []:
        parts.append(f"--- {pod['metadata']['name']} ---\n" + kubectl("logs", "-n", api.ns, pod["metadata"]["name"],
                                                                      "--tail=25"))
    parts.append("--- operator ---\n" + kubectl("logs", "-n", "cai-system", "-l", "app.kubernetes.io/name=cai-operator",
                                                "--tail=40", "--prefix"))
    return "\n".join(parts)


def test_quickstart_runs_through_the_operator(api, s3_server, prometheus, project_images, real_node):
    ns = api.ns
    root = f"s3://{s3_server.bucket}/runs/{ns}"  # the chart's default storage (the install block's bucket)
    api.create("Constitution", "harmless", constitution_spec())
    runs = {r["kind"]: r for r in quickstart()}
    for kind in ("RLAIFRun", "PreferenceModel", "CritiqueRun"):  # dependents first: they wait
        api.create(kind, runs[kind]["metadata"]["name"], runs[kind]["spec"])
    name, pm_name, rl_name = (runs[k]["metadata"]["name"] for k in ("CritiqueRun", "PreferenceModel", "RLAIFRun"))

    api.wait_condition("CritiqueRun", name, "Succeeded", "True", timeout=600, log=lambda: why(api))
    api.wait_condition("PreferenceModel", pm_name, "Ready", "True", timeout=600, log=lambda: why(api))
    api.wait_condition("RLAIFRun", rl_name, "Succeeded", "True", timeout=600, log=lambda: why(api))

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
    # Every stage ran in the trainer image on the real node, with credentials from the Secret only.
    jobs = api.jobs()
    assert len(jobs) == 7, [j["metadata"]["name"] for j in jobs]
    for job in jobs:
        (container,) = job["spec"]["template"]["spec"]["containers"]
        assert container["image"] == project_images["trainer"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        env = {e["name"]: e for e in container["env"]}
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert env[key] == {"name": key, "valueFrom": {"secretKeyRef": {"name": "cai-storage", "key": key}}}
        for pod in stage_pods(api, job["metadata"]["name"]):
            assert pod["spec"]["nodeName"] == real_node.name and pod["status"]["phase"] == "Succeeded"
    reasons = [e["reason"] for e in api.events(rl_name)]
    assert reasons.index("WaitingForDependency") < reasons.index("JobCreated") < reasons.index("Succeeded")

    # A stage pod, inspected as on any cluster.
    (pod,) = stage_pods(api, f"{name}-finetune")
    pod_name = pod["metadata"]["name"]
    log = api.kube.kubectl("logs", "-n", ns, pod_name).stdout
    assert "[finetune]" in log and f"wrote {root}/" in log, log[-3000:]
    described = api.kube.kubectl("describe", "pod", "-n", ns, pod_name).stdout
    for want in (rf"Node:\s+{real_node.name}/{real_node.net.node_ip}", r"Status:\s+Succeeded",
                 rf"Image:\s+{re.escape(project_images['trainer'])}", r"kubelet\s+Started container stage",
                 r"Reason:\s+Completed"):
        assert re.search(want, described), described

    # Prometheus scraped the operator's pods: run counts by state and stage durations.
    for kind, cond in (("CritiqueRun", "Succeeded"), ("PreferenceModel", "Ready"), ("RLAIFRun", "Succeeded")):
        prometheus.wait_for(f'cai_runs{{{METRICS_JOB},namespace="{ns}",kind="{kind}",condition="{cond}"}} == 1',
                            timeout=60)
    stages = prometheus.wait_for(f'sum by (stage) (cai_stage_duration_seconds_count{{{METRICS_JOB}}})', timeout=60,
                                 predicate=lambda r: len(r) >= 7)
    assert {r["metric"]["stage"] for r in stages} == {
        "generate-revisions", "finetune", "sample-pairs", "label-preferences", "train-preference-model",
        "train-policy", "evaluate"}
    assert prometheus.query(f'cai_tokens_generated_total{{{METRICS_JOB},stage="generate-revisions"}} > 0')
    assert prometheus.query(f'cai_preference_model_accuracy{{{METRICS_JOB},namespace="{ns}",name="{pm_name}"}}')
    assert prometheus.query(f'cai_policy_reward{{{METRICS_JOB},namespace="{ns}",name="{rl_name}"}}')


def test_failing_stage_exhausts_retries_and_fails_dependents(api, s3_server, prometheus):
    failures = f'sum(cai_stage_failures_total{{{METRICS_JOB},kind="CritiqueRun",stage="generate-revisions",' \
               'reason="BackoffLimitExceeded"})'
    before = float((prometheus.query(failures) or [{"value": [0, "0"]}])[0]["value"][1])
    api.create("Constitution", "harmless", constitution_spec())
    missing = f"s3://{s3_server.bucket}/runs/{api.ns}/no-such-prompts.jsonl"
    api.create("CritiqueRun", "broken", {
        "constitutionRef": {"name": "harmless"}, "model": TINY, "prompts": {"source": missing, "limit": 2},
        "generation": SMALL_GENERATION, "resources": {**POD, "backoffLimit": 1}})
    api.create("PreferenceModel", "after-broken", {
        "constitutionRef": {"name": "harmless"}, "policy": {"critiqueRunRef": {"name": "broken"}}, "resources": POD})

    failed = api.wait_condition("CritiqueRun", "broken", "Succeeded", "False", "BackoffLimitExceeded", timeout=400,
                                log=lambda: why(api))
    # The message carries what the stage wrote to its termination log in the pod.
    assert "no-such-prompts.jsonl" in failed["message"], failed["message"]
    stage = api.condition("CritiqueRun", "broken", "CritiquesGenerated")
    assert (stage["status"], stage["reason"]) == ("False", "BackoffLimitExceeded")
    status = api.get("CritiqueRun", "broken")["status"]
    assert status["stages"][0]["attempts"] == 2  # backoffLimit 1: the first pod and one retry
    assert [j["metadata"]["name"] for j in api.jobs()] == ["broken-generate-revisions"]  # finetune never started
    pods = stage_pods(api, "broken-generate-revisions")
    assert len(pods) == 2 and all(p["status"]["phase"] == "Failed" for p in pods), why(api)
    terminated = pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] != 0 and "no-such-prompts.jsonl" in terminated["message"], terminated
    warnings = [e for e in api.events("broken") if e["type"] == "Warning"]
    assert any(e["reason"] == "BackoffLimitExceeded" and "no-such-prompts" in e["message"] for e in warnings)
    dep = api.wait_condition("PreferenceModel", "after-broken", "Ready", "False", "DependencyFailed", timeout=60)
    assert "CritiqueRun/broken" in dep["message"]
    prometheus.wait_for(f"{failures} >= {before + 1}", timeout=60)
    prometheus.wait_for(f'cai_runs{{{METRICS_JOB},namespace="{api.ns}",kind="PreferenceModel",condition="Failed"}} == 1',
                        timeout=60)


def test_suspend_stops_the_stage_pod_and_resume_finishes(api):
    api.create("Constitution", "harmless", constitution_spec())
    api.create("CritiqueRun", "pausable", {
        "constitutionRef": {"name": "harmless"}, "model": TINY, "prompts": {"source": "builtin:red-team", "limit": 4},
        "revisions": 1, "generation": SMALL_GENERATION, "finetune": SMALL_TRAINING, "resources": POD})
    job = "pausable-generate-revisions"
    pod = until("the first stage pod to run", lambda: next(
        (p for p in stage_pods(api, job) if p["status"].get("phase") == "Running"), None), 180, 0.2,
        on_timeout=lambda: why(api))
    api.patch("CritiqueRun", "pausable", {"spec": {"suspend": True}})
    api.wait_condition("CritiqueRun", "pausable", "Succeeded", "Unknown", "Suspended", timeout=60, log=lambda: why(api))
    assert api.job(job)["spec"]["suspend"] is True
    # The Job controller deleted the pod; the kubelet stopped its container and confirmed the deletion.
    until(f"pod {pod['metadata']['name']} to be gone", lambda: not stage_pods(api, job), 90,
          on_timeout=lambda: why(api))
    assert api.get("CritiqueRun", "pausable")["status"]["conditions"]

    api.patch("CritiqueRun", "pausable", {"spec": {"suspend": False}})
    api.wait_condition("CritiqueRun", "pausable", "Succeeded", "True", timeout=600, log=lambda: why(api))
    (after,) = stage_pods(api, job)
    assert after["metadata"]["uid"] != pod["metadata"]["uid"] and after["status"]["phase"] == "Succeeded"


def _kept_checkpoints(s3_server, run: str) -> list[int]:
    """Steps of the finetune checkpoints of `run` kept complete in MinIO (<output>.work/, docs/operator.md)."""
    listed = s3_server.filesystem().find(s3_server.bucket)
    return sorted(int(m.group(1)) for key in listed if f"/{run}/" in key
                  and (m := re.search(r"/finetune\.work/dirs/checkpoints/checkpoint-(\d+)/\.kept-0$", key)))


def test_a_suspended_finetune_resumes_from_its_kept_checkpoint(api, s3_server):
    api.create("Constitution", "harmless", constitution_spec())
    every = 25  # optimizer steps between checkpoints; ~8 rows x 100 epochs = ~800 steps in all
    api.create("CritiqueRun", "resumable", {
        "constitutionRef": {"name": "harmless"}, "model": TINY, "prompts": {"source": "builtin:red-team", "limit": 4},
        "revisions": 1, "generation": SMALL_GENERATION, "finetune": {"epochs": 100, "batchSize": 1, "maxLength": 128},
        "resources": {**POD, "podTemplate": {"spec": {"containers": [
            {"name": "stage", "env": [{"name": "CAI_CHECKPOINT_STEPS", "value": str(every)}]}]}}}})
    job = "resumable-finetune"
    until("a finetune checkpoint kept in MinIO", lambda: _kept_checkpoints(s3_server, "resumable"), 420, 0.2,
          on_timeout=lambda: why(api))
    (first,) = stage_pods(api, job)
    api.patch("CritiqueRun", "resumable", {"spec": {"suspend": True}})
    until(f"pod {first['metadata']['name']} to be gone", lambda: not stage_pods(api, job), 120,
          on_timeout=lambda: why(api))
    kept = _kept_checkpoints(s3_server, "resumable")
    assert kept and kept[-1] % every == 0, kept

    api.patch("CritiqueRun", "resumable", {"spec": {"suspend": False}})
    api.wait_condition("CritiqueRun", "resumable", "Succeeded", "True", timeout=600, log=lambda: why(api))
    (after,) = stage_pods(api, job)
    assert after["metadata"]["uid"] != first["metadata"]["uid"]
    log = api.kube.kubectl("logs", "-n", api.ns, after["metadata"]["name"]).stdout
    assert "[finetune] restored earlier work from s3://" in log, log[-3000:]
    assert re.search(rf"\[finetune\] resuming from \S+/checkpoint-{kept[-1]}\b", log), log[-3000:]
    assert not _kept_checkpoints(s3_server, "resumable"), "the kept work is removed once the model is published"


def test_two_node_finetune_trains_with_torchrun_and_deepspeed(api, s3_server, real_node):
    api.create("Constitution", "harmless", constitution_spec())
    api.create("CritiqueRun", "two-nodes", {
        "constitutionRef": {"name": "harmless"}, "model": TINY, "prompts": {"source": "builtin:red-team", "limit": 4},
        "revisions": 1, "generation": SMALL_GENERATION,
        "finetune": {**SMALL_TRAINING, "batchSize": 2, "deepspeed": "zero2"},
        # two pods side by side on a 2-CPU node, next to the operator's
        "resources": {"cpu": "800m", "memory": "3Gi", "nodes": 2, "backoffLimit": 0}})
    api.wait_condition("CritiqueRun", "two-nodes", "Succeeded", "True", timeout=600, log=lambda: why(api))
    job = api.job("two-nodes-finetune")
    assert job["spec"]["completionMode"] == "Indexed" and job["status"]["succeeded"] == 2
    pods = {p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]: p
            for p in stage_pods(api, "two-nodes-finetune")}
    assert sorted(pods) == ["0", "1"], list(pods)
    assert {p["spec"]["nodeName"] for p in pods.values()} == {real_node.name}
    assert pods["0"]["status"]["podIP"] != pods["1"]["status"]["podIP"]  # two pods, two network namespaces
    logs = {i: api.kube.kubectl("logs", "-n", api.ns, p["metadata"]["name"]).stdout for i, p in pods.items()}
    assert "rank 1 done" in logs["1"] and "wrote s3://" not in logs["1"]  # rank 1 trains, rank 0 publishes
    assert "[finetune] wrote s3://" in logs["0"]
    for log in logs.values():
        assert "deepspeed_shm_comm_op" in log, log[-3000:]  # DeepSpeed's CPU comm op, on both ranks
    # Rank 1 found rank 0's rendezvous by its name, <job>-0.<headless service>, through cluster DNS.
    env = {e["name"]: e.get("value") for e in pods["1"]["spec"]["containers"][0]["env"]}
    assert env["MASTER_ADDR"] == "two-nodes-finetune-0.two-nodes-finetune"
    queried = (api.kube.logs_dir / "coredns.log").read_text()
    assert f"two-nodes-finetune-0.two-nodes-finetune.{api.ns}.svc.cluster.local." in queried
    status = api.get("CritiqueRun", "two-nodes")["status"]
    model = status["outputs"]["model"]
    manifest = json.loads(s3_server.filesystem().cat(f"{model.removeprefix('s3://')}/manifest.json"))
    assert any(f["path"].endswith(".safetensors") for f in manifest["files"])
    assert status["metrics"]["trainSteps"] >= 1


def test_four_data_parallel_workers_write_what_one_pod_writes(api, s3_server, real_node):
    api.create("Constitution", "harmless", constitution_spec())
    # 200 prompts: four chunks of 64 prompts (the last one short), one per worker.
    spec = {"constitutionRef": {"name": "harmless"}, "model": TINY, "prompts": {"source": "builtin:red-team", "limit": 200},
            "revisions": 1, "fewShotExamples": 1, "generation": {"maxNewTokens": 8, "batchSize": 16},
            "finetune": {"enabled": False}}
    api.create("CritiqueRun", "one-worker", {**spec, "resources": POD})
    api.create("CritiqueRun", "four-workers", {**spec, "resources": {"cpu": "500m", "memory": "2Gi", "workers": 4}})
    for name in ("one-worker", "four-workers"):
        api.wait_condition("CritiqueRun", name, "Succeeded", "True", timeout=600, log=lambda: why(api))
    job = api.job("four-workers-generate-revisions")
    assert job["spec"]["completionMode"] == "Indexed" and job["status"]["succeeded"] == 4
    pods = stage_pods(api, "four-workers-generate-revisions")
    assert sorted(p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] for p in pods) == \
        ["0", "1", "2", "3"]
    assert {p["spec"]["nodeName"] for p in pods} == {real_node.name}
    logs = [api.kube.kubectl("logs", "-n", api.ns, p["metadata"]["name"]).stdout for p in pods]
    merged = [log for log in logs if "merging" in log]
    assert len(merged) >= 1 and all("wrote s3://" in log for log in merged), logs  # the last one merges
    fs = s3_server.filesystem()
    outputs = {name: api.get("CritiqueRun", name)["status"] for name in ("one-worker", "four-workers")}
    for file in ("revisions.jsonl", "sft.jsonl"):
        one, four = (fs.cat(f"{outputs[n]['outputs']['dataset'].removeprefix('s3://')}/{file}")
                     for n in ("one-worker", "four-workers"))
        assert one == four and one.count(b"\n") >= 200, file
    assert outputs["four-workers"]["metrics"]["workers"] == 4
    assert outputs["four-workers"]["metrics"]["tokensGenerated"] == outputs["one-worker"]["metrics"]["tokensGenerated"]
