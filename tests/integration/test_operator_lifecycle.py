"""The operator on the real control plane, kwok completing the stage pods: each kind's lifecycle, Job
specs, dependencies, suspend/Kueue, constitution edits, invalid specs and garbage collection.

Where it sits: `cai operator` runs as a subprocess under a ServiceAccount with exactly the RBAC of
docs/rbac.md (tests/integration/operator_support.py). Nothing is mocked: Jobs, pods, events and status
are the apiserver's; kwok plays the kubelet of `kwok-node-0`.
"""
from __future__ import annotations

import json

import pytest

from tests.integration.operator_support import KWOK, constitution_spec, until

pytestmark = pytest.mark.cluster

TINY = "builtin:tiny-random"


def crun_spec(**extra) -> dict:
    """A small CritiqueRun whose pods the kwok node completes (its tolerations added to the test's own)."""
    resources = extra.pop("resources", {})
    resources = {**KWOK, **resources, "tolerations": KWOK["tolerations"] + resources.get("tolerations", [])}
    return {"constitutionRef": {"name": "harmless"}, "model": TINY, "prompts": {"source": "builtin:red-team", "limit": 2},
            "resources": resources, **extra}


def event_reasons(api, name: str) -> list[str]:
    return [e["reason"] for e in api.events(name)]


def test_critique_run_lifecycle(api, start_operator, kube_namespace):
    op = start_operator()
    api.create("Constitution", "harmless", constitution_spec())
    api.create("CritiqueRun", "sl", crun_spec(resources={"gpusPerNode": 1, "priorityClassName": "",
                                                         "tolerations": [{"key": "gpu", "operator": "Exists"}]}))
    done = api.wait_condition("CritiqueRun", "sl", "Succeeded", "True", "Succeeded", log=op.log_tail)
    assert done["observedGeneration"] == 1
    run = api.get("CritiqueRun", "sl")
    status = run["status"]
    const = api.get("Constitution", "harmless")
    assert const["status"]["digest"] == status["constitutionDigest"]
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Succeeded": "True", "CritiquesGenerated": "True", "ModelFineTuned": "True"}
    assert status["observedGeneration"] == run["metadata"]["generation"]
    uid = run["metadata"]["uid"]
    root = f"s3://cai-test/{kube_namespace}/{kube_namespace}/critiqueruns/sl/{uid}"
    assert status["outputs"] == {"dataset": f"{root}/generate-revisions", "model": f"{root}/finetune"}
    assert [s["name"] for s in status["stages"]] == ["generate-revisions", "finetune"]
    assert all(s["completionTime"] and s["attempts"] == 1 for s in status["stages"])

    jobs = {j["metadata"]["name"]: j for j in api.jobs()}
    assert set(jobs) == {"sl-generate-revisions", "sl-finetune"}
    first, second = jobs["sl-generate-revisions"], jobs["sl-finetune"]
    # In order: the second stage's Job was created only after the first completed.
    assert second["metadata"]["creationTimestamp"] >= first["status"]["completionTime"]
    for job in (first, second):
        meta = job["metadata"]
        assert meta["labels"]["cai.dev/run"] == "sl" and meta["labels"]["cai.dev/kind"] == "CritiqueRun"
        assert meta["ownerReferences"] == [{"apiVersion": "cai.dev/v1alpha1", "kind": "CritiqueRun", "name": "sl",
                                            "uid": uid, "controller": True, "blockOwnerDeletion": True}]
        pod = job["spec"]["template"]["spec"]
        c = pod["containers"][0]
        assert c["image"] == "cai-trainer-gpu:test"
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
        env = {e["name"]: e for e in c["env"]}
        assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "cai-s3", "key": "AWS_SECRET_ACCESS_KEY"}
        assert "value" not in env["AWS_ACCESS_KEY_ID"]
        assert c["command"][:3] == ["cai", "stage", meta["labels"]["cai.dev/stage"]]
        assert {"key": "gpu", "operator": "Exists"} in pod["tolerations"]
        assert job["spec"]["ttlSecondsAfterFinished"] == 3600
    assert first["metadata"]["labels"]["cai.dev/stage"] == "generate-revisions"

    cm = api.core("configmaps", "sl-crun-spec")
    spec = json.loads(cm["data"]["finetune.json"])
    assert spec["inputs"] == {"dataset": status["outputs"]["dataset"]} and spec["output"] == status["outputs"]["model"]
    assert spec["constitutionDigest"] == status["constitutionDigest"]

    reasons = event_reasons(api, "sl")
    for expected in ("JobCreated", "StageSucceeded", "Succeeded"):
        assert expected in reasons, reasons
    assert reasons.count("JobCreated") == 2 and reasons.count("StageSucceeded") == 2
    assert "Created Job sl-generate-revisions" in [e["message"] for e in api.events("sl")]
    assert op.metric("cai_runs", kind="CritiqueRun", namespace=kube_namespace, condition="Succeeded") == 1
    assert op.metric("cai_stage_duration_seconds_count", kind="CritiqueRun", stage="finetune") >= 1
    assert op.metric("cai_reconcile_total", kind="CritiqueRun", result="ok") >= 3

    # Deleting the run garbage-collects its Jobs and ConfigMap through ownerReferences.
    api.delete("CritiqueRun", "sl")
    until("Jobs and ConfigMap garbage-collected", lambda: not api.jobs() and api.core("configmaps", "sl-crun-spec") is None,
          timeout=120)  # the garbage collector learns new CRDs on its discovery resync (30 s)


def test_preference_model_and_rlaif_wait_for_their_dependencies(api, start_operator):
    op = start_operator()
    # Dependents first: they must wait, with a message naming what they wait for.
    api.create("RLAIFRun", "rl", {"policy": {"critiqueRunRef": {"name": "sl"}}, "rewardModelRef": {"name": "pm"},
                                  "steps": 2, "resources": KWOK})
    api.create("PreferenceModel", "pm", {"constitutionRef": {"name": "harmless"}, "policy": {"critiqueRunRef": {"name": "sl"}},
                                         "resources": KWOK})
    api.create("CritiqueRun", "sl", crun_spec())
    waiting = api.wait_condition("PreferenceModel", "pm", "Ready", "Unknown", "WaitingForDependency", log=op.log_tail)
    assert "Constitution/harmless" in waiting["message"]
    waiting = api.wait_condition("RLAIFRun", "rl", "Succeeded", "Unknown", "WaitingForDependency", log=op.log_tail)
    assert "PreferenceModel/pm" in waiting["message"]
    assert api.jobs() == []

    api.create("Constitution", "harmless", constitution_spec())
    api.wait_condition("RLAIFRun", "rl", "Succeeded", "True", timeout=120, log=op.log_tail)
    sl, pm, rl = (api.get(k, n)["status"] for k, n in (("CritiqueRun", "sl"), ("PreferenceModel", "pm"), ("RLAIFRun", "rl")))
    assert {c["type"]: c["status"] for c in pm["conditions"]} == {
        "Ready": "True", "PairsSampled": "True", "PreferencesLabeled": "True", "ModelTrained": "True"}
    assert set(pm["outputs"]) == {"pairs", "comparisons", "model"}
    # Dependents read their dependencies' status.outputs.
    pm_specs = api.core("configmaps", "pm-pm-spec")["data"]
    assert json.loads(pm_specs["sample-pairs.json"])["models"]["policy"] == sl["outputs"]["model"]
    rl_specs = api.core("configmaps", "rl-rlaif-spec")["data"]
    train = json.loads(rl_specs["train-policy.json"])
    assert train["models"]["reward"] == pm["outputs"]["model"] and train["models"]["policy"] == sl["outputs"]["model"]
    assert rl["constitutionDigest"] == pm["constitutionDigest"] == sl["constitutionDigest"]
    names = {j["metadata"]["name"] for j in api.jobs()}
    assert names == {"sl-generate-revisions", "sl-finetune", "pm-sample-pairs", "pm-label-preferences",
                     "pm-train-preference-model", "rl-train-policy", "rl-evaluate"}


def test_invalid_resources_are_rejected_or_marked(api, start_operator, kube_cluster, kube_namespace, tmp_path):
    op = start_operator()
    # Schema: the apiserver refuses, naming the field.
    bad = {"apiVersion": "cai.dev/v1alpha1", "kind": "CritiqueRun", "metadata": {"name": "bad", "namespace": kube_namespace},
           "spec": {**crun_spec(), "revisions": 99}}
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(bad))
    out = kube_cluster.kubectl("apply", "-f", str(path), check=False)
    assert out.returncode != 0 and "spec.revisions" in out.stderr, out.stderr
    # CEL: exactly one of policy.critiqueRunRef / policy.model.
    code, body = api.create_raw({"apiVersion": "cai.dev/v1alpha1", "kind": "PreferenceModel", "metadata": {"name": "bad"},
                                 "spec": {"constitutionRef": {"name": "harmless"},
                                          "policy": {"model": TINY, "critiqueRunRef": {"name": "sl"}}}})
    assert code == 422 and "spec.policy" in body["message"] and "exactly one" in body["message"], body

    # Valid for the apiserver, wrong for the operator: InvalidSpec names the field; nothing is created.
    api.create("Constitution", "harmless", constitution_spec())
    api.create("CritiqueRun", "wrong-source", crun_spec(prompts={"source": "builtin:nope"}))
    invalid = api.wait_condition("CritiqueRun", "wrong-source", "Succeeded", "False", "InvalidSpec", log=op.log_tail)
    assert "spec.prompts.source" in invalid["message"] and "builtin:red-team" in invalid["message"]
    # A podTemplate that makes an invalid pod: the apiserver's refusal of the Job becomes InvalidSpec.
    api.create("CritiqueRun", "bad-template", crun_spec(resources={"podTemplate": {"spec": {"containers": [
        {"name": "stage", "imagePullPolicy": "Sometimes"}]}}}))
    refused = api.wait_condition("CritiqueRun", "bad-template", "Succeeded", "False", "InvalidSpec", log=op.log_tail)
    assert "imagePullPolicy" in refused["message"] and "bad-template-generate-revisions" in refused["message"]
    # A missing Constitution: waits, saying which; proceeds once it exists.
    api.create("CritiqueRun", "later", crun_spec(constitutionRef={"name": "not-yet"}))
    waiting = api.wait_condition("CritiqueRun", "later", "Succeeded", "Unknown", "WaitingForDependency", log=op.log_tail)
    assert "Constitution/not-yet" in waiting["message"] and "does not exist" in waiting["message"]
    assert [e["type"] for e in api.events("wrong-source") if e["reason"] == "InvalidSpec"] == ["Warning"]
    spec = constitution_spec()
    api.create("Constitution", "not-yet", spec)
    api.wait_condition("CritiqueRun", "later", "Succeeded", "True", log=op.log_tail)
    assert not any(j["metadata"]["labels"]["cai.dev/run"] in ("wrong-source", "bad-template") for j in api.jobs())
    # Runs are immutable once created (CEL transition rule), except spec.suspend.
    code, body = kube_cluster.request("PATCH", api.path("CritiqueRun", "later"), {"spec": {"revisions": 2}},
                                      content_type="application/merge-patch+json")
    assert code == 422, body
    api.patch("CritiqueRun", "later", {"spec": {"suspend": True}})


def test_suspend_pauses_and_resumes(api, start_operator):
    op = start_operator()
    api.create("Constitution", "harmless", constitution_spec())
    # Suspended before the first stage: nothing is created.
    api.create("CritiqueRun", "paused", crun_spec(suspend=True))
    api.wait_condition("CritiqueRun", "paused", "Succeeded", "Unknown", "Suspended", log=op.log_tail)
    # A run whose pod can never be scheduled keeps its first Job running: suspending suspends that Job.
    api.create("CritiqueRun", "stuck", crun_spec(resources={"nodeSelector": {"cai.dev/nowhere": "true"}}))
    api.wait_condition("CritiqueRun", "stuck", "Succeeded", "Unknown", "JobRunning", log=op.log_tail)
    until("stuck's Job has an active pod", lambda: (api.job("stuck-generate-revisions") or {}).get("status", {}).get("active"))
    assert api.jobs() and all(j["metadata"]["labels"]["cai.dev/run"] == "stuck" for j in api.jobs())
    api.patch("CritiqueRun", "stuck", {"spec": {"suspend": True}})
    api.wait_condition("CritiqueRun", "stuck", "Succeeded", "Unknown", "Suspended", log=op.log_tail)
    until("Job suspended", lambda: api.job("stuck-generate-revisions")["spec"]["suspend"] is True)
    api.patch("CritiqueRun", "stuck", {"spec": {"suspend": False}})
    api.wait_condition("CritiqueRun", "stuck", "Succeeded", "Unknown", "JobRunning", log=op.log_tail)
    until("Job resumed", lambda: api.job("stuck-generate-revisions")["spec"]["suspend"] is False)
    # Resuming the paused run lets it run to the end.
    api.patch("CritiqueRun", "paused", {"spec": {"suspend": False}})
    api.wait_condition("CritiqueRun", "paused", "Succeeded", "True", log=op.log_tail)


def test_kueue_queue_and_constitution_edited_mid_run(api, start_operator):
    """queueName: Jobs carry Kueue's label and start suspended; this test plays Kueue by unsuspending them.
    Meanwhile the Constitution is edited: the run keeps the version it started with and says so."""
    op = start_operator()
    api.create("Constitution", "harmless", constitution_spec())
    api.create("CritiqueRun", "queued", crun_spec(resources={"queueName": "team-a"}))
    api.wait_condition("CritiqueRun", "queued", "Succeeded", "Unknown", "JobQueued", log=op.log_tail)
    job = until("first Job", lambda: api.job("queued-generate-revisions"))
    assert job["spec"]["suspend"] is True and job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    started_with = api.get("CritiqueRun", "queued")["status"]["constitutionDigest"]
    spec_before = api.core("configmaps", "queued-crun-spec")["data"]

    edited = constitution_spec()
    edited["description"] = "edited while a run was in flight"
    api.patch("Constitution", "harmless", {"spec": {"description": edited["description"]}})
    changed = api.wait_condition("CritiqueRun", "queued", "ConstitutionChanged", "True", "ConstitutionEdited", log=op.log_tail)
    assert "keeps the version it started with" in changed["message"]
    assert "ConstitutionEdited" in event_reasons(api, "queued")

    for stage in ("generate-revisions", "finetune"):  # admit each stage's Job as Kueue would
        name = f"queued-{stage}"
        until(f"Job {name}", lambda name=name: api.job(name))
        code, body = api.kube.request("PATCH", f"/apis/batch/v1/namespaces/{api.ns}/jobs/{name}", {"spec": {"suspend": False}},
                                      content_type="application/merge-patch+json")
        assert code == 200, body
    api.wait_condition("CritiqueRun", "queued", "Succeeded", "True", log=op.log_tail)
    status = api.get("CritiqueRun", "queued")["status"]
    assert status["constitutionDigest"] == started_with != api.get("Constitution", "harmless")["status"]["digest"]
    assert api.core("configmaps", "queued-crun-spec")["data"] == spec_before  # both stages ran the original text
    assert "edited while" not in spec_before["finetune.json"]

    # A finished run does not change when its Constitution changes again. The Constitution's reconcile
    # pokes the run (then counts itself); the run's own reconcile counts after it has written nothing.
    before = api.get("CritiqueRun", "queued")["status"]
    runs, constitutions = (op.metric("cai_reconcile_total", kind=k) for k in ("CritiqueRun", "Constitution"))
    api.patch("Constitution", "harmless", {"spec": {"description": "edited again"}})
    until("Constitution digest updated", lambda: api.get("Constitution", "harmless")["status"]["digest"] != started_with)
    until("the run reconciled after the Constitution's change",
          lambda: op.metric("cai_reconcile_total", kind="Constitution") > constitutions
          and op.metric("cai_reconcile_total", kind="CritiqueRun") > runs)
    assert api.get("CritiqueRun", "queued")["status"] == before


def test_multi_node_training_stage_is_an_indexed_job(api, start_operator):
    op = start_operator()
    api.create("Constitution", "harmless", constitution_spec())
    api.create("CritiqueRun", "dist", crun_spec(resources={"nodes": 2}))
    api.wait_condition("CritiqueRun", "dist", "Succeeded", "True", log=op.log_tail)
    job = api.job("dist-finetune")
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == "dist-finetune" and pod["containers"][0]["command"][0] == "torchrun"
    svc = api.core("services", "dist-finetune")
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["selector"]["cai.dev/stage"] == "finetune"
    assert svc["metadata"]["ownerReferences"][0]["kind"] == "CritiqueRun"
    assert api.job("dist-generate-revisions")["spec"]["completionMode"] == "NonIndexed"  # generation: one pod


def test_data_parallel_generation_is_an_indexed_job_whose_failed_worker_is_retried_alone(
        api, start_operator, kube_cluster, kube_namespace, kwok_publisher):
    op = start_operator()
    api.create("Constitution", "harmless", constitution_spec())
    kwok_publisher.paused.set()  # the worker pods stay gated until one of them has failed
    try:
        api.create("CritiqueRun", "dp", crun_spec(resources={"workers": 3, "backoffLimit": 1},
                                                  finetune={"enabled": False}))
        index = "batch.kubernetes.io/job-completion-index"

        def pods() -> list[dict]:
            return kube_cluster.request(
                "GET", f"/api/v1/namespaces/{kube_namespace}/pods?labelSelector=cai.dev/run=dp")[1]["items"]

        until("three worker pods, one per index", lambda: sorted(p["metadata"]["annotations"][index]
                                                                 for p in pods()) == ["0", "1", "2"],
              timeout=60)
        job = api.job("dp-generate-revisions")["spec"]
        assert (job["completionMode"], job["completions"], job["parallelism"]) == ("Indexed", 3, 3)
        assert (job["backoffLimitPerIndex"], job["maxFailedIndexes"]) == (1, 0)
        assert job["template"]["spec"]["containers"][0]["command"][-2:] == ["--workers", "3"]
        # Worker 1's pod fails (a lost node, an OOM kill): the Job controller replaces that index alone.
        lost = next(p for p in pods() if p["metadata"]["annotations"][index] == "1")
        code, body = kube_cluster.request(
            "PATCH", f"/api/v1/namespaces/{kube_namespace}/pods/{lost['metadata']['name']}/status",
            {"status": {"phase": "Failed", "reason": "Evicted", "message": "test: node lost"}},
            content_type="application/merge-patch+json")
        assert code == 200, body
        until("a second pod for index 1", lambda: sorted(p["metadata"]["annotations"][index] for p in pods())
              == ["0", "1", "1", "2"], timeout=60)
    finally:
        kwok_publisher.paused.clear()
    api.wait_condition("CritiqueRun", "dp", "Succeeded", "True", log=op.log_tail)
    by_index: dict[str, list[str]] = {}
    for p in pods():
        by_index.setdefault(p["metadata"]["annotations"][index], []).append(p["status"]["phase"])
    assert {k: sorted(v) for k, v in by_index.items()} == {"0": ["Succeeded"], "1": ["Failed", "Succeeded"],
                                                           "2": ["Succeeded"]}
