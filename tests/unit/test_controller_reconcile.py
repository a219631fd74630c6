"""The operator's pure reconcile: (run, observed Jobs) → children to create, status, events, metric samples.

Drives a run through its whole lifecycle by feeding reconcile the Jobs a cluster would show, and checks
the level-triggered properties: replaying a decision changes nothing, a restart adopts existing Jobs, a
Constitution edited mid-run does not change the run, dependencies gate and fail dependents.
"""

from __future__ import annotations

import hashlib
import json
import time

import pytest

from cai.api.manifest import parse_resource
from cai.controller.config import OperatorConfig
from cai.controller.observed import MISSING, ArtifactObs, FrozenPlan, JobObs, Need, Observed, Outcome, Storage
from cai.controller.reconcile import (
    CREATE_GRACE_SECONDS,
    Context,
    reconcile_constitution,
    reconcile_run,
    spec_problems,
)
from cai.controller.storage import Refused, resolve_storage
from cai.pipeline.conditions import get_condition
from cai.pipeline.plan import Plan, plan_resource
from cai.pipeline.runstate import constitution_status, state_word
from cai.pipeline.stagespec import StageSpec

CONST = {"critiqueRevisionPrinciples": [{"name": "p", "critique": "c", "revision": "r"}],
         "preferencePrinciples": [{"name": "q", "question": "Which is less harmful?"}]}
CONFIG = OperatorConfig(stage_image="img:cpu", stage_image_gpu="img:gpu", storage_uri="s3://bucket/root",
                        s3_endpoint="http://minio:9000", storage_secret="s3-creds")


def res(kind, name, spec, uid="uid-1", status=None):
    doc = {"apiVersion": "cai.dev/v1alpha1", "kind": kind, "metadata": {"name": name, "namespace": "ns", "uid": uid},
           "spec": spec}
    r, problems = parse_resource(doc)
    assert not problems, problems
    r.status = status if status is not None else r.info.status()
    return r


def constitution(spec=CONST, name="h"):
    c = res("Constitution", name, spec, uid="c-uid")
    c.status = constitution_status(c)
    return c


def ctx(*resources):
    table = {(r.kind, r.name): r for r in resources}
    return Context(config=CONFIG, lookup=lambda kind, name: table.get((kind, name)))


def job(run, stage, **kw):
    from cai.controller.builders import job_name

    defaults = {"name": job_name(run.name, stage), "namespace": "ns", "uid": f"job-{stage}", "owner_uid": run.uid, "stage": stage,
                    "output": f"s3://bucket/root/ns/{run.info.plural}/{run.name}/{run.uid}/{stage}"}
    return JobObs(**{**defaults, **kw})


METRICS = {"tokensGenerated": 1234, "sftRows": 10, "durationSeconds": 3.5}


def published(plan: FrozenPlan, metrics=METRICS) -> dict[str, ArtifactObs]:
    """The manifests a plan's stages write when they succeed, as the store would hand them over."""
    store: dict[str, ArtifactObs] = {}
    for stage in plan.stages:
        spec = StageSpec.model_validate_json(plan.specs[stage])
        inputs = {role: store[uri].digest if uri in store else None for role, uri in spec.inputs.items()}
        # Written by another version than the operator's: the check uses the writer's version.
        manifest = {"inputsDigest": spec.digest(inputs, "9.9"), "metrics": metrics,
                    "producer": {"kind": spec.kind, "name": spec.name, "stage": stage, "version": "9.9"}}
        raw = json.dumps(manifest).encode()
        store[spec.output] = ArtifactObs(manifest, hashlib.sha256(raw).hexdigest())
    return store


def decide(run, c, jobs=(), store=None, **obs_kw) -> Outcome:
    """reconcile until it stops asking: answer storage/plan/manifests/pod messages like the controller would.
    Manifests come from `store` (uri -> ArtifactObs), else from what the plan's stages would have written."""
    obs = Observed(now=obs_kw.pop("now", time.time()), jobs={j.stage: j for j in jobs}, **obs_kw)
    for _ in range(6):
        out = reconcile_run(run, obs, c)
        if not isinstance(out, Need):
            return out
        if out.storage_configmap:
            obs.storage_configmap = obs_kw.get("storage_configmap", MISSING)
        if out.plan:
            obs.plan = obs_kw.get("plan", MISSING)
        answers = store if store is not None else published(obs.plan) if isinstance(obs.plan, FrozenPlan) else {}
        for uri in out.manifests:
            obs.manifests[uri] = answers.get(uri, ArtifactObs({"metrics": METRICS}, "d") if store is None else
                                             ArtifactObs(None))
        for name in out.pod_messages:
            obs.pod_messages[name] = f"{name}-abc: stage finetune: CUDA out of memory"
        for name in out.pods_pending:
            obs.pods_pending[name] = f"{name}-abc: Unschedulable: 0/1 nodes are available"
    raise AssertionError("reconcile kept asking")


def advance(run, out: Outcome):
    """Write the outcome's status back (what a successful status patch does)."""
    run.status = out.status
    return out


def kinds(out: Outcome) -> list[str]:
    return [f"{o['kind']}/{o['metadata']['name']}" for o in out.creates]


def test_critique_run_lifecycle_creates_jobs_in_order_and_finishes():
    const = constitution()
    run = res("CritiqueRun", "sl", {"constitutionRef": {"name": "h"}, "model": "builtin:tiny-random"})
    c = ctx(const)

    out = advance(run, decide(run, c))
    assert kinds(out) == ["ConfigMap/sl-crun-spec", "Job/sl-generate-revisions"]
    cm = out.creates[0]
    plan = FrozenPlan.from_configmap_data(cm["data"])
    assert plan.stages == ("generate-revisions", "finetune")
    assert json.loads(cm["data"]["generate-revisions.json"])["constitution"]["critiqueRevisionPrinciples"][0]["name"] == "p"
    assert plan.storage.uri == "s3://bucket/root" and plan.storage.secret_name == "s3-creds"
    assert run.status.constitution_digest == const.status.digest
    summary = get_condition(run.status, "Succeeded")
    assert (summary.status, summary.reason) == ("Unknown", "JobRunning")
    assert run.status.stages[0].job_name == "sl-generate-revisions" and run.status.stages[0].attempts == 1
    assert [e.reason for e in out.events] == ["JobRunning"]

    # The Job is not in the watch cache yet: no second create within the grace period.
    out = advance(run, decide(run, c))
    assert out.creates == [] and out.requeue_after is not None and out.requeue_after <= CREATE_GRACE_SECONDS
    assert out.events == []

    running = job(run, "generate-revisions", active=1, start_time="2030-01-01T00:00:00Z")
    out = advance(run, decide(run, c, [running]))
    assert out.creates == [] and out.events == [] and out.job_patches == []

    done = job(run, "generate-revisions", succeeded=1, complete=True, start_time="2030-01-01T00:00:00Z",
               completion_time="2030-01-01T00:01:40Z")
    out = advance(run, decide(run, c, [done], plan=plan))
    assert kinds(out) == ["Job/sl-finetune"]
    assert get_condition(run.status, "CritiquesGenerated").status == "True"
    assert run.status.outputs.dataset == done.output
    assert run.status.metrics["sftRows"] == 10 and run.status.metrics["generateRevisionsSeconds"] == 3.5
    assert {(o.metric, o.value) for o in out.observations} == {("stage_duration", 100.0), ("tokens", 1234.0)}
    assert [e.reason for e in out.events] == ["StageSucceeded", "JobRunning"]

    ft_done = job(run, "finetune", succeeded=1, complete=True, start_time="2030-01-01T00:02:00Z",
                  completion_time="2030-01-01T00:03:00Z")
    out = advance(run, decide(run, c, [done, ft_done], plan=plan))
    summary = get_condition(run.status, "Succeeded")
    assert (summary.status, summary.reason) == ("True", "Succeeded")
    assert run.status.outputs.model == ft_done.output
    assert out.poke_dependents and out.terminal and out.requeue_after is None
    assert [e.reason for e in out.events] == ["StageSucceeded", "Succeeded"]
    assert [s.completion_time for s in run.status.stages] == ["2030-01-01T00:01:40Z", "2030-01-01T00:03:00Z"]

    # Replaying the final decision is a no-op (nothing to create, same status, no events).
    again = decide(run, c, [done, ft_done])
    assert again.creates == [] and again.events == [] and again.status.to_wire() == run.status.to_wire()


def started(run, c) -> FrozenPlan:
    out = advance(run, decide(run, c))
    return FrozenPlan.from_configmap_data(out.creates[0]["data"])


def test_a_completed_job_without_its_artifact_fails_the_run_naming_it():
    const = constitution()
    run = res("CritiqueRun", "sl", {"constitutionRef": {"name": "h"}})
    c = ctx(const)
    plan = started(run, c)
    done = job(run, "generate-revisions", succeeded=1, complete=True)
    out = advance(run, decide(run, c, [done], plan=plan, store={}))
    summary = get_condition(run.status, "Succeeded")
    assert (summary.status, summary.reason) == ("False", "ArtifactMissing") and out.terminal
    assert f"{done.output}/manifest.json does not exist" in summary.message
    assert get_condition(run.status, "CritiquesGenerated").reason == "ArtifactMissing"
    assert out.creates == [] and run.status.outputs.dataset is None
    assert [o.labels for o in out.observations] == [(("kind", "CritiqueRun"), ("stage", "generate-revisions"),
                                                     ("reason", "ArtifactMissing"))]


def test_an_artifact_written_for_other_inputs_fails_the_stage():
    const = constitution()
    run = res("CritiqueRun", "sl", {"constitutionRef": {"name": "h"}})
    c = ctx(const)
    plan = started(run, c)
    store = published(plan)
    dataset, model = (plan.outputs[s] for s in plan.stages)
    done = job(run, "generate-revisions", succeeded=1, complete=True)
    advance(run, decide(run, c, [done], plan=plan, store=store))
    assert get_condition(run.status, "CritiquesGenerated").status == "True"
    # The dataset was replaced after finetune started: the model's manifest names the old one.
    changed = {**store, dataset: ArtifactObs(store[dataset].manifest, "0" * 64)}
    ft_done = job(run, "finetune", succeeded=1, complete=True)
    advance(run, decide(run, c, [done, ft_done], plan=plan, store=changed))
    summary = get_condition(run.status, "Succeeded")
    assert (summary.status, summary.reason) == ("False", "ArtifactMissing")
    assert f"artifact {model} was not written for this run's plan" in summary.message


def test_an_unreadable_store_is_reported_and_checked_again():
    const = constitution()
    run = res("CritiqueRun", "sl", {"constitutionRef": {"name": "h"}})
    c = ctx(const)
    plan = started(run, c)
    done = job(run, "generate-revisions", succeeded=1, complete=True)
    denied = {plan.outputs["generate-revisions"]: ArtifactObs(None, error="ClientError: AccessDenied")}
    out = advance(run, decide(run, c, [done], plan=plan, store=denied))
    summary = get_condition(run.status, "Succeeded")
    assert (summary.status, summary.reason) == ("Unknown", "ArtifactUnreadable") and not out.terminal
    assert "AccessDenied" in summary.message and out.requeue_after
    advance(run, decide(run, c, [done], plan=plan))  # readable again
    assert get_condition(run.status, "CritiquesGenerated").status == "True"


def test_a_refused_job_is_a_condition_with_the_apiservers_message_and_is_tried_again():
    const = constitution()
    run = res("CritiqueRun", "sl", {"constitutionRef": {"name": "h"}})
    c = ctx(const)
    quota = 'jobs.batch "sl-generate-revisions" is forbidden: exceeded quota: jobs, used: count/jobs.batch=1'
    out = advance(run, decide(run, c, refused={"sl-generate-revisions": quota}))
    assert kinds(out) == ["ConfigMap/sl-crun-spec"] and not out.terminal and out.requeue_after == 30.0
    summary = get_condition(run.status, "Succeeded")
    assert (summary.status, summary.reason) == ("Unknown", "FailedCreate") and quota in summary.message
    stage = get_condition(run.status, "CritiquesGenerated")
    assert (stage.status, stage.reason) == ("Unknown", "FailedCreate") and run.status.stages == []
    assert [(e.type, e.reason) for e in out.events] == [("Warning", "FailedCreate")]
    assert state_word(run.info, ("Unknown", "FailedCreate")) == "Waiting"
    # The same refusal again changes nothing; once the quota allows it, the Job is created.
    plan = FrozenPlan.from_configmap_data(out.creates[0]["data"])
    again = decide(run, c, plan=plan, refused={"sl-generate-revisions": quota})
    assert again.creates == [] and again.events == []
    out = advance(run, decide(run, c, plan=plan))
    assert kinds(out) == ["Job/sl-generate-revisions"] and get_condition(run.status, "Succeeded").reason == "JobRunning"
    # Refused before the first stage (the ConfigMap): the run says so too.
    other = res("CritiqueRun", "other", {"constitutionRef": {"name": "h"}})
    out = decide(other, c, refused={"other-crun-spec": "configmaps is forbidden: exceeded quota"})
    assert out.creates == [] and get_condition(out.status, "Succeeded").reason == "FailedCreate"


def test_pods_that_never_start_get_a_condition_after_the_timeout():
    const = constitution()
    run = res("CritiqueRun", "sl", {"constitutionRef": {"name": "h"}})
    config = OperatorConfig(storage_uri="s3://bucket/root", pod_start_timeout_seconds=600, resync_seconds=1000)
    c = Context(config=config, lookup=ctx(const).lookup)
    advance(run, decide(run, c))
    now = time.time()
    start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 100))
    pending = job(run, "generate-revisions", active=1, start_time=start)
    out = advance(run, decide(run, c, [pending], now=now))
    assert get_condition(run.status, "Succeeded").reason == "JobRunning"
    assert 499 <= out.requeue_after <= 502  # looked at again right after the timeout
    out = advance(run, decide(run, c, [pending], now=now + 600))
    summary = get_condition(run.status, "Succeeded")
    assert (summary.status, summary.reason) == ("Unknown", "PodsNotStarted") and not out.terminal
    assert "600s" in summary.message and "Unschedulable: 0/1 nodes are available" in summary.message
    assert [(e.type, e.reason) for e in out.events] == [("Warning", "PodsNotStarted")]
    # Once a pod runs, the run is simply running again; queued (suspended) Jobs are never "not started".
    out = advance(run, decide(run, c, [job(run, "generate-revisions", active=1, ready=1, start_time=start)],
                              now=now + 700))
    assert get_condition(run.status, "Succeeded").reason == "JobRunning"
    queued = job(run, "generate-revisions", suspended=True, queued=True)
    assert get_condition(decide(run, c, [queued], now=now + 900).status, "Succeeded").reason == "JobQueued"


def test_restart_adopts_existing_jobs_without_creating_again():
    const = constitution()
    run = res("CritiqueRun", "sl", {"constitutionRef": {"name": "h"}})
    # Status was never written (operator died right after creating the Job).
    running = job(run, "generate-revisions", active=1, start_time="2030-01-01T00:00:00Z")
    out = decide(run, ctx(const), [running])
    assert out.creates == []
    assert out.status.stages[0].job_name == running.name
    assert out.status.stages[0].start_time == "2030-01-01T00:00:00Z"
    assert get_condition(out.status, "Succeeded").reason == "JobRunning"


def test_missing_job_after_grace_is_created_again():
    const = constitution()
    run = res("CritiqueRun", "sl", {"constitutionRef": {"name": "h"}})
    c = ctx(const)
    out = advance(run, decide(run, c))
    plan = FrozenPlan.from_configmap_data(out.creates[0]["data"])
    later = time.time() + CREATE_GRACE_SECONDS + 1
    out = decide(run, c, now=later, plan=plan)
    assert kinds(out) == ["Job/sl-generate-revisions"]
    assert out.status.stages[0].attempts == 1  # same Job name, not a new stage attempt


def test_failed_job_fails_run_with_reason_and_pod_message():
    const = constitution()
    run = res("CritiqueRun", "sl", {"constitutionRef": {"name": "h"}})
    c = ctx(const)
    advance(run, decide(run, c))
    failed = job(run, "generate-revisions", failed=3, failed_reason="BackoffLimitExceeded",
                 failed_message="Job has reached the specified backoff limit")
    out = advance(run, decide(run, c, [failed]))
    summary = get_condition(run.status, "Succeeded")
    assert (summary.status, summary.reason) == ("False", "BackoffLimitExceeded")
    assert "CUDA out of memory" in summary.message and "backoff limit" in summary.message
    stage = get_condition(run.status, "CritiquesGenerated")
    assert (stage.status, stage.reason) == ("False", "BackoffLimitExceeded")
    assert run.status.stages[0].attempts == 3
    assert [o.metric for o in out.observations] == ["stage_failure"]
    assert {e.type for e in out.events} == {"Warning"} and out.poke_dependents and out.terminal


def test_dependents_wait_then_fail_with_dependency_failed():
    const = constitution()
    crun = res("CritiqueRun", "sl", {"constitutionRef": {"name": "h"}}, uid="crun")
    pm = res("PreferenceModel", "pm", {"constitutionRef": {"name": "h"}, "policy": {"critiqueRunRef": {"name": "sl"}}}, uid="pm")
    out = advance(pm, decide(pm, ctx(const, crun)))
    summary = get_condition(pm.status, "Ready")
    assert (summary.status, summary.reason) == ("Unknown", "WaitingForDependency") and out.creates == []
    assert "CritiqueRun/sl" in summary.message and out.requeue_after

    from cai.pipeline.conditions import set_condition

    set_condition(crun.status, "Succeeded", "False", "BackoffLimitExceeded", "stage failed", 1)
    out = advance(pm, decide(pm, ctx(const, crun)))
    summary = get_condition(pm.status, "Ready")
    assert (summary.status, summary.reason) == ("False", "DependencyFailed") and out.terminal
    assert out.events[-1].type == "Warning"


def test_rlaif_reads_outputs_of_its_preference_model():
    const = constitution()
    pm = res("PreferenceModel", "pm", {"constitutionRef": {"name": "h"}, "policy": {"model": "builtin:tiny-random"}}, uid="pm")
    pm.status.outputs.model = "s3://b/pm/model"
    pm.status.outputs.comparisons = "s3://b/pm/comparisons"
    pm.status.constitution_digest = const.status.digest
    from cai.pipeline.conditions import set_condition

    set_condition(pm.status, "Ready", "True", "Ready", "", 1)
    rl = res("RLAIFRun", "rl", {"policy": {"model": "builtin:tiny-random"}, "rewardModelRef": {"name": "pm"}}, uid="rl")
    out = decide(rl, ctx(const, pm))
    plan = FrozenPlan.from_configmap_data(out.creates[0]["data"])
    assert plan.stages == ("train-policy", "evaluate")
    spec = json.loads(plan.specs["train-policy"])
    assert spec["models"]["reward"] == "s3://b/pm/model"
    assert out.status.constitution_digest == const.status.digest


def test_constitution_edited_mid_run_keeps_the_frozen_plan_and_says_so():
    const = constitution()
    run = res("CritiqueRun", "sl", {"constitutionRef": {"name": "h"}})
    out = advance(run, decide(run, ctx(const)))
    plan = FrozenPlan.from_configmap_data(out.creates[0]["data"])
    digest = run.status.constitution_digest

    edited = constitution({**CONST, "description": "edited"})
    done = job(run, "generate-revisions", succeeded=1, complete=True)
    out = advance(run, decide(run, ctx(edited), [done], plan=plan))
    assert run.status.constitution_digest == digest
    changed = get_condition(run.status, "ConstitutionChanged")
    assert (changed.status, changed.reason) == ("True", "ConstitutionEdited")
    assert any(e.reason == "ConstitutionEdited" for e in out.events)
    # The next stage is built from the frozen plan (its ConfigMap), not from the edited Constitution.
    assert kinds(out) == ["Job/sl-finetune"]
    assert out.creates[0]["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"] == "sl-crun-spec"


def test_finished_run_does_not_change_when_constitution_changes():
    const = constitution()
    run = res("CritiqueRun", "sl", {"constitutionRef": {"name": "h"}, "finetune": {"enabled": False}})
    advance(run, decide(run, ctx(const)))
    done = job(run, "generate-revisions", succeeded=1, complete=True)
    advance(run, decide(run, ctx(const), [done]))
    assert get_condition(run.status, "Succeeded").status == "True"
    before = run.status.to_wire()
    out = decide(run, ctx(constitution({**CONST, "description": "edited"})), [done])
    assert out.status.to_wire() == before and out.events == []


def test_suspend_before_start_between_stages_and_of_running_job():
    const = constitution()
    run = res("CritiqueRun", "sl", {"constitutionRef": {"name": "h"}, "suspend": True})
    out = decide(run, ctx(const))
    assert out.creates == [] and get_condition(out.status, "Succeeded").reason == "Suspended"

    run = res("CritiqueRun", "sl", {"constitutionRef": {"name": "h"}})
    advance(run, decide(run, ctx(const)))
    running = job(run, "generate-revisions", active=1)
    run.spec.suspend = True
    out = advance(run, decide(run, ctx(const), [running]))
    assert out.job_patches == [(running.name, {"spec": {"suspend": True}})]
    assert get_condition(run.status, "Succeeded").reason == "Suspended"
    run.spec.suspend = False
    suspended = job(run, "generate-revisions", suspended=True)
    out = advance(run, decide(run, ctx(const), [suspended]))
    assert out.job_patches == [(running.name, {"spec": {"suspend": False}})]
    assert get_condition(run.status, "Succeeded").reason == "JobRunning"


def test_kueue_queue_creates_suspended_jobs_and_leaves_them_to_kueue():
    const = constitution()
    run = res("CritiqueRun", "sl", {"constitutionRef": {"name": "h"}, "resources": {"queueName": "team-a"}})
    out = advance(run, decide(run, ctx(const)))
    job_obj = out.creates[1]
    assert job_obj["spec"]["suspend"] is True
    assert job_obj["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert get_condition(run.status, "Succeeded").reason == "JobQueued"
    queued = job(run, "generate-revisions", suspended=True, queued=True)
    out = decide(run, ctx(const), [queued])
    assert out.job_patches == [] and get_condition(out.status, "Succeeded").reason == "JobQueued"
    assert state_word(run.info, ("Unknown", "JobQueued")) == "Queued"


def test_invalid_spec_and_missing_storage():
    const = constitution()
    run = res("CritiqueRun", "sl", {"constitutionRef": {"name": "h"}, "prompts": {"source": "builtin:nope"},
                                    "model": "hf:"})
    problems = spec_problems(run, CONFIG)
    assert any(p.startswith("spec.prompts.source:") for p in problems)
    assert any(p.startswith("spec.model:") for p in problems)
    out = decide(run, ctx(const), problems=problems)
    summary = get_condition(out.status, "Succeeded")
    assert (summary.status, summary.reason) == ("False", "InvalidSpec") and "spec.prompts.source" in summary.message
    assert out.creates == [] and out.terminal

    run = res("CritiqueRun", "sl", {"constitutionRef": {"name": "h"}})
    no_storage = Context(config=OperatorConfig(), lookup=ctx(const).lookup)
    out = decide(run, no_storage)
    summary = get_condition(out.status, "Succeeded")
    assert (summary.status, summary.reason) == ("Unknown", "StorageNotConfigured") and "cai-storage" in summary.message


def test_storage_resolution_order():
    run = res("CritiqueRun", "sl", {"constitutionRef": {"name": "h"}})
    assert resolve_storage(run, MISSING, CONFIG).source == "operator"
    cm = resolve_storage(run, {"uri": "s3://team/x/", "secretName": "team-creds"}, CONFIG)
    assert (cm.uri, cm.secret_name, cm.endpoint, cm.source) == ("s3://team/x", "team-creds", "http://minio:9000", "configmap")
    assert "key uri" in resolve_storage(run, {"uri": "http://nope"}, CONFIG)
    own = res("CritiqueRun", "sl", {"constitutionRef": {"name": "h"},
                                    "storage": {"uri": "s3://mine/p", "secretRef": {"name": "mine"}}})
    s = resolve_storage(own, {"uri": "s3://team/x", "allowedURIs": "s3://mine", "allowedSecretNames": "mine"},
                        CONFIG)
    assert (s.uri, s.secret_name, s.source) == ("s3://mine/p", "mine", "spec")


def storage_run(**storage):
    return res("CritiqueRun", "sl", {"constitutionRef": {"name": "h"}, "storage": storage})


@pytest.mark.parametrize(("storage", "configmap", "field"), [
    # Another namespace's tree of the shared bucket, or anywhere else: not without the namespace's permit.
    ({"uri": "s3://bucket/root/other-ns"}, MISSING, "spec.storage.uri"),
    ({"uri": "s3://bucket"}, MISSING, "spec.storage.uri"),
    ({"uri": "s3://elsewhere/x"}, {"uri": "s3://team/x"}, "spec.storage.uri"),
    ({"uri": "s3://team/x2"}, {"uri": "s3://team/x", "allowedURIs": "s3://team/x"}, "spec.storage.uri"),
    ({"uri": "s3://bucket/root/ns/../other"}, MISSING, "spec.storage.uri"),
    ({"uri": "s3://bucket/root//ns"}, MISSING, "spec.storage.uri"),
    ({"uri": "s3://anything"}, None, "spec.storage.uri"),  # nothing configured: nothing permitted
    # Someone else's credentials or endpoint.
    ({"uri": "s3://bucket/root", "secretRef": {"name": "db-admin"}}, MISSING, "spec.storage.secretRef.name"),
    ({"uri": "s3://bucket/root", "endpoint": "https://evil.example"}, MISSING, "spec.storage.endpoint"),
])
def test_storage_overrides_are_confined(storage, configmap, field):
    config = CONFIG if configmap is not None else OperatorConfig()
    out = resolve_storage(storage_run(**storage), MISSING if configmap is None else configmap, config)
    assert isinstance(out, Refused) and out.message.startswith(f"{field}: "), out
    # ... and the run ends InvalidSpec naming the field, with nothing created.
    decision = decide(storage_run(**storage), Context(config=config, lookup=ctx(constitution()).lookup),
                      storage_configmap=MISSING if configmap is None else configmap)
    summary = get_condition(decision.status, "Succeeded")
    assert (summary.status, summary.reason) == ("False", "InvalidSpec") and summary.message.startswith(field)
    assert decision.creates == [] and decision.terminal


@pytest.mark.parametrize(("storage", "configmap", "uri"), [
    ({"uri": "s3://bucket/root"}, MISSING, "s3://bucket/root"),  # the namespace's own root, restated
    ({"uri": "s3://bucket/root/ns/experiments"}, MISSING, "s3://bucket/root/ns/experiments"),  # below its prefix
    ({"uri": "s3://scratch/a/b", "secretRef": {"name": "scratch"}, "endpoint": "https://s3.example"},
     {"uri": "s3://team/x", "allowedURIs": "s3://scratch/a\ns3://other", "allowedSecretNames": "scratch",
      "allowedEndpoints": "https://s3.example/"}, "s3://scratch/a/b"),
])
def test_storage_overrides_the_namespace_permits(storage, configmap, uri):
    out = resolve_storage(storage_run(**storage), configmap, CONFIG)
    assert isinstance(out, Storage) and out.uri == uri and out.source == "spec"
    # Artifacts still go below the run's own namespace of that root.
    plan = plan_resource(storage_run(**storage), ctx(constitution()).lookup, out.uri)
    assert all(s.output.startswith(f"{uri}/ns/critiqueruns/sl/") for s in plan.stages)


@pytest.mark.parametrize("spec", [
    {"constitutionRef": {"name": "h"}},
    {"constitutionRef": {"name": "h"}, "finetune": {"enabled": False}},
])
def test_stage_names_match_the_plan(spec):
    const = constitution()
    run = res("CritiqueRun", "sl", spec)
    plan = plan_resource(run, ctx(const).lookup, "file:///s")
    assert isinstance(plan, Plan) and [s.name for s in run.info.stages_for(run.spec)] == [s.stage for s in plan.stages]


def test_constitution_status_and_events():
    const = res("Constitution", "h", CONST, uid="c")
    out = reconcile_constitution(const, [])
    ready = get_condition(out.status, "Ready")
    assert ready.status == "True" and out.status.digest.startswith("sha256:")
    assert [e.reason for e in out.events] == ["Validated"] and out.poke_dependents
    const.status = out.status
    assert reconcile_constitution(const, []).events == []
    edited = res("Constitution", "h", {**CONST, "description": "x"}, uid="c", status=out.status)
    out2 = reconcile_constitution(edited, [])
    assert [e.reason for e in out2.events] == ["DigestChanged"] and out2.poke_dependents
    bad = reconcile_constitution(const, ["spec.preferencePrinciples: expected at least 1 item(s)"])
    assert get_condition(bad.status, "Ready").reason == "InvalidSpec"


def test_unmergeable_pod_template_is_an_invalid_spec():
    const = constitution()
    run = res("CritiqueRun", "sl", {"constitutionRef": {"name": "h"},
                                    "resources": {"podTemplate": {"spec": {"containers": [{"image": "no-name"}]}}}})
    out = decide(run, ctx(const))
    summary = get_condition(out.status, "Succeeded")
    assert (summary.status, summary.reason) == ("False", "InvalidSpec") and "podTemplate" in summary.message
    assert not any(o["kind"] == "Job" for o in out.creates)
