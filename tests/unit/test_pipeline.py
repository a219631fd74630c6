"""Planning is pure and shared by both runners: dependencies gate stages, outputs chain into inputs,
status transitions are consistent, principle draws are reproducible."""

from __future__ import annotations

from cai.api.kinds import STAGES
from cai.api.manifest import parse_resource
from cai.constitution import draw, stable_seed
from cai.pipeline import Blocked, Plan, plan_resource
from cai.pipeline.conditions import get_condition, is_true
from cai.pipeline.plan import constitution_digest, order_by_references
from cai.pipeline.runstate import RunState, constitution_status

CONST = {"critiqueRevisionPrinciples": [{"name": f"p{i}", "critique": f"c{i}", "revision": f"r{i}"} for i in range(16)],
         "preferencePrinciples": [{"name": "q", "question": "Which is less harmful?"}]}


def res(kind, name, spec):
    r, problems = parse_resource({"apiVersion": "cai.dev/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec})
    assert not problems, problems
    return r


def lookup_of(*resources):
    table = {(r.kind, r.name): r for r in resources}
    return lambda kind, name: table.get((kind, name))


def test_critique_run_waits_for_constitution_then_plans_two_stages():
    crun = res("CritiqueRun", "sl", {"constitutionRef": {"name": "h"}, "model": "builtin:tiny-random"})
    blocked = plan_resource(crun, lookup_of(), "file:///store")
    assert isinstance(blocked, Blocked) and blocked.reason == "WaitingForDependency" and not blocked.failed
    assert "Constitution/h" in blocked.message

    const = res("Constitution", "h", CONST)
    const.status = constitution_status(const)
    plan = plan_resource(crun, lookup_of(const), "file:///store")
    assert isinstance(plan, Plan)
    assert [s.stage for s in plan.stages] == ["generate-revisions", "finetune"]
    gen, ft = plan.stages
    assert gen.output == "file:///store/default/critiqueruns/sl/local/generate-revisions"
    assert ft.inputs == {"dataset": gen.output}
    assert gen.constitution_digest == constitution_digest(const.spec) == plan.constitution_digest
    assert plan.outputs == {"dataset": gen.output, "model": ft.output}


def test_preference_model_reads_the_critique_runs_output_and_fails_with_it():
    const = res("Constitution", "h", CONST)
    const.status = constitution_status(const)
    crun = res("CritiqueRun", "sl", {"constitutionRef": {"name": "h"}, "model": "builtin:tiny-random"})
    pm = res("PreferenceModel", "pm", {"constitutionRef": {"name": "h"}, "policy": {"critiqueRunRef": {"name": "sl"}}})
    crun.status = crun.info.status()
    assert plan_resource(pm, lookup_of(const, crun), "file:///s").reason == "WaitingForDependency"

    RunState(crun.info, crun.status, 1).stage_failed(STAGES["finetune"][1], "BackoffLimitExceeded", "OOM")
    blocked = plan_resource(pm, lookup_of(const, crun), "file:///s")
    assert blocked.failed and blocked.reason == "DependencyFailed"

    crun.status = crun.info.status()
    run = RunState(crun.info, crun.status, 1)
    run.stage_succeeded(STAGES["finetune"][1], "file:///s/sl-model", {"trainLoss": 1.5})
    run.completed()
    plan = plan_resource(pm, lookup_of(const, crun), "file:///s")
    pairs, label, train = plan.stages
    assert pairs.models == {"policy": "file:///s/sl-model"}
    assert label.models == {"feedback": "builtin:tiny-random"}, "feedback defaults to the policy's base model"
    assert label.inputs == {"pairs": pairs.output} and train.inputs == {"comparisons": label.output}


def test_rlaif_run_plans_training_and_evaluation():
    const = res("Constitution", "h", CONST)
    const.status = constitution_status(const)
    pm = res("PreferenceModel", "pm", {"constitutionRef": {"name": "h"}, "policy": {"model": "builtin:tiny-random"}})
    pm.status = pm.info.status()
    run = RunState(pm.info, pm.status, 1)
    for stage, uri in (("label-preferences", "file:///s/cmp"), ("train-preference-model", "file:///s/pm")):
        run.stage_succeeded(STAGES[stage][1], uri, {})
    run.completed()
    rl = res("RLAIFRun", "rl", {"policy": {"model": "builtin:tiny-random"}, "rewardModelRef": {"name": "pm"}})
    plan = plan_resource(rl, lookup_of(const, pm), "file:///s")
    train, evaluate = plan.stages
    assert train.models == {"policy": "builtin:tiny-random", "reward": "file:///s/pm"}
    assert evaluate.models["rl"] == train.output and evaluate.inputs["comparisons"] == "file:///s/cmp"
    assert evaluate.constitution is not None


def test_order_by_references():
    const = res("Constitution", "h", CONST)
    crun = res("CritiqueRun", "sl", {"constitutionRef": {"name": "h"}})
    pm = res("PreferenceModel", "pm", {"constitutionRef": {"name": "h"}, "policy": {"critiqueRunRef": {"name": "sl"}}})
    rl = res("RLAIFRun", "rl", {"policy": {"critiqueRunRef": {"name": "sl"}}, "rewardModelRef": {"name": "pm"}})
    assert [r.name for r in order_by_references([rl, pm, crun, const])] == ["h", "sl", "pm", "rl"]


def test_status_transitions():
    crun = res("CritiqueRun", "sl", {"constitutionRef": {"name": "h"}})
    status = crun.info.status()
    run = RunState(crun.info, status, 1)
    run.blocked(Blocked("WaitingForDependency", "waiting"))
    assert get_condition(status, "Succeeded").status == "Unknown"
    stage = STAGES["generate-revisions"][1]
    run.stage_started(stage, job_name="sl-generate-revisions")
    first_transition = get_condition(status, "Succeeded").last_transition_time
    assert status.stages[0].attempts == 1 and status.stages[0].job_name == "sl-generate-revisions"
    run.stage_succeeded(stage, "file:///d", {"sftRows": 12, "durationSeconds": 3.5, "note": "x"})
    assert status.outputs.dataset == "file:///d"
    assert status.metrics == {"sftRows": 12.0, "generateRevisionsSeconds": 3.5}
    assert is_true(status, "CritiquesGenerated")
    assert get_condition(status, "Succeeded").last_transition_time == first_transition, "no status change, same time"
    run.completed()
    assert is_true(status, "Succeeded") and get_condition(status, "Succeeded").reason == "Succeeded"


def test_constitution_status_and_digest():
    const = res("Constitution", "h", CONST)
    status = constitution_status(const)
    assert status.principles.critique_revision == 16 and status.principles.preference == 1
    assert status.digest.startswith("sha256:") and is_true(status, "Ready")
    changed = res("Constitution", "h", {**CONST, "description": "edited"})
    assert constitution_digest(changed.spec) != status.digest


def test_principle_draws_are_reproducible_and_cover_the_list():
    items = list(range(16))
    a = [draw(items, 7, "critique", f"id{i}", 1) for i in range(400)]
    b = [draw(items, 7, "critique", f"id{i}", 1) for i in reversed(range(400))][::-1]
    assert a == b, "a draw depends on the key only, not on order"
    assert set(a) == set(items), "uniform draws over 400 rows reach every principle"
    assert a != [draw(items, 8, "critique", f"id{i}", 1) for i in range(400)]
    assert stable_seed(1, "x") == stable_seed(1, "x") != stable_seed(1, "y")


def test_every_stage_module_is_registered_once_and_every_registered_module_exists():
    """The stage registry (KINDS) is the one list of stages: a stage module on disk that it does not
    name would never run, and a name without a module would fail only in a pod."""
    import importlib.util
    from pathlib import Path

    import cai.stages

    support = {"__init__", "runtime", "engines", "training", "report_html"}
    on_disk = {f"cai.stages.{p.stem}" for p in Path(cai.stages.__file__).parent.glob("*.py") if p.stem not in support}
    registered = [info.module for _, info in STAGES.values()]
    assert sorted(registered) == sorted(on_disk)
    assert all(importlib.util.find_spec(m) is not None for m in registered)


def test_reference_fields_are_found_in_typed_and_raw_specs_alike():
    from cai.api.references import model_refs, prompt_sources, references

    pm = res("PreferenceModel", "pm", {"constitutionRef": {"name": "h"}, "policy": {"critiqueRunRef": {"name": "sl"}},
                                       "feedbackModel": "builtin:tiny-random",
                                       "training": {"baseModel": "builtin:smollm2-135m-instruct"}})
    want = [("Constitution", "h", "spec.constitutionRef.name"), ("CritiqueRun", "sl", "spec.policy.critiqueRunRef.name")]
    assert references(pm.info.spec, pm.spec) == want
    assert references(pm.info.spec, pm.spec.to_wire()) == want
    assert model_refs(pm.info.spec, pm.spec) == [("spec.feedbackModel", "builtin:tiny-random"),
                                                 ("spec.training.baseModel", "builtin:smollm2-135m-instruct")]
    rl = res("RLAIFRun", "rl", {"policy": {"model": "builtin:tiny-random"}, "rewardModelRef": {"name": "pm"},
                                "evaluation": {"enabled": False}})
    assert references(rl.info.spec, rl.spec) == [("PreferenceModel", "pm", "spec.rewardModelRef.name")]
    assert model_refs(rl.info.spec, rl.spec) == [("spec.policy.model", "builtin:tiny-random")]
    # A disabled section is not read: its prompt sets are never loaded.
    assert prompt_sources(rl.info.spec, rl.spec) == [("spec.prompts.source", "builtin:red-team")]
