"""Dependency resolution and stage planning for one resource (pure).

`plan_resource(resource, lookup, storage_root)` returns a `Plan` (stage specs in order, with the
outputs each will publish) or `Blocked` (waiting for a dependency, or failed because of one).
`lookup(kind, name)` returns the referenced resource with its status, or None.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field

from ..api.kinds import KINDS, ConstitutionSpec, CritiqueRunSpec, PreferenceModelSpec, RLAIFRunSpec
from ..api.manifest import Resource
from ..store.layout import artifact_uri
from .conditions import is_false, is_true
from .stagespec import StageSpec

Lookup = Callable[[str, str], Resource | None]


def constitution_digest(spec: ConstitutionSpec) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(spec.to_wire(), sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Blocked:
    """The resource cannot run now. `failed` means it never will without a change elsewhere."""

    reason: str  # WaitingForDependency | DependencyFailed
    message: str
    failed: bool = False


@dataclass
class Plan:
    stages: list[StageSpec]
    # status.outputs field -> artifact URI, filled as the stages finish
    outputs: dict[str, str] = field(default_factory=dict)
    constitution_digest: str | None = None


# status.outputs field each stage's artifact becomes
STAGE_OUTPUTS = {
    "generate-revisions": "dataset",
    "finetune": "model",
    "sample-pairs": "pairs",
    "label-preferences": "comparisons",
    "train-preference-model": "model",
    "train-policy": "model",
    "evaluate": "report",
}
# Stages whose status output names one file of the artifact rather than the directory.
STAGE_OUTPUT_FILES = {"evaluate": "report.html"}


def published_output(stage: str, output: str) -> str:
    """What status.outputs shows for a stage's artifact `output` (e.g. the report.html inside it)."""
    name = STAGE_OUTPUT_FILES.get(stage)
    return f"{output.rstrip('/')}/{name}" if name else output


def _require(lookup: Lookup, kind: str, name: str, ready: str, who: str) -> Resource | Blocked:
    dep = lookup(kind, name)
    if dep is None:
        return Blocked("WaitingForDependency", f"{kind}/{name} ({who}) does not exist yet")
    if is_false(dep.status, ready):
        return Blocked("DependencyFailed", f"{kind}/{name} ({who}) failed; fix it and recreate this resource", failed=True)
    if not is_true(dep.status, ready):
        return Blocked("WaitingForDependency", f"waiting for {kind}/{name} ({who}) to become {ready}")
    return dep


def _policy(lookup: Lookup, policy) -> tuple[str, str] | Blocked:
    """(policy model ref, its base model ref) for a PolicySpec."""
    if policy.model is not None:
        return policy.model, policy.model
    dep = _require(lookup, "CritiqueRun", policy.critique_run_ref.name, "Succeeded", "spec.policy.critiqueRunRef")
    if isinstance(dep, Blocked):
        return dep
    model = dep.status.outputs.model
    if not model:
        return Blocked("DependencyFailed", f"CritiqueRun/{dep.name} succeeded without a model (finetune disabled?)", failed=True)
    return model, dep.spec.model


def plan_resource(res: Resource, lookup: Lookup, storage_root: str) -> Plan | Blocked:
    def out(stage: str) -> str:
        return artifact_uri(storage_root, res.namespace, res.info.plural, res.name, res.uid, stage)

    def stage(name: str, **kw) -> StageSpec:
        return StageSpec(stage=name, kind=res.kind, name=res.name, namespace=res.namespace, uid=res.uid,
                         spec=res.spec.to_wire(), output=out(name), **kw)

    spec = res.spec
    if isinstance(spec, CritiqueRunSpec):
        const = _require(lookup, "Constitution", spec.constitution_ref.name, "Ready", "spec.constitutionRef")
        if isinstance(const, Blocked):
            return const
        digest = constitution_digest(const.spec)
        common = {"constitution": const.spec.to_wire(), "constitution_digest": digest}
        stages = [stage("generate-revisions", models={"policy": spec.model}, **common)]
        if spec.finetune.enabled:
            stages.append(stage("finetune", models={"base": spec.model}, inputs={"dataset": stages[0].output}, **common))
        return _plan(stages, digest)

    if isinstance(spec, PreferenceModelSpec):
        const = _require(lookup, "Constitution", spec.constitution_ref.name, "Ready", "spec.constitutionRef")
        if isinstance(const, Blocked):
            return const
        policy = _policy(lookup, spec.policy)
        if isinstance(policy, Blocked):
            return policy
        policy_model, base_model = policy
        feedback = spec.feedback_model or base_model
        digest = constitution_digest(const.spec)
        common = {"constitution": const.spec.to_wire(), "constitution_digest": digest}
        pairs = stage("sample-pairs", models={"policy": policy_model}, **common)
        label = stage("label-preferences", models={"feedback": feedback}, inputs={"pairs": pairs.output}, **common)
        train = stage("train-preference-model", models={"base": spec.training.base_model or policy_model, "policy": policy_model},
                      inputs={"comparisons": label.output}, **common)
        return _plan([pairs, label, train], digest)

    if isinstance(spec, RLAIFRunSpec):
        pm = _require(lookup, "PreferenceModel", spec.reward_model_ref.name, "Ready", "spec.rewardModelRef")
        if isinstance(pm, Blocked):
            return pm
        policy = _policy(lookup, spec.policy)
        if isinstance(policy, Blocked):
            return policy
        policy_model, base_model = policy
        const = lookup("Constitution", pm.spec.constitution_ref.name)
        const_wire = const.spec.to_wire() if const is not None else None
        digest = pm.status.constitution_digest
        pm_feedback = pm.spec.feedback_model or _feedback_default(lookup, pm)
        train = stage("train-policy", models={"policy": policy_model, "reward": pm.status.outputs.model},
                      constitution=const_wire, constitution_digest=digest)
        stages = [train]
        if spec.evaluation.enabled:
            stages.append(stage(
                "evaluate",
                models={"start": base_model, "sl": policy_model, "rl": train.output, "feedback": pm_feedback,
                        "reward": pm.status.outputs.model},
                inputs={"policy": train.output, "comparisons": pm.status.outputs.comparisons or "",
                        "rewardModel": pm.status.outputs.model or ""},
                constitution=const_wire, constitution_digest=digest,
            ))
        return _plan(stages, digest)

    raise TypeError(f"{res.kind} has no stages")


def _feedback_default(lookup: Lookup, pm: Resource) -> str:
    policy = _policy(lookup, pm.spec.policy)
    return policy[1] if not isinstance(policy, Blocked) else (pm.spec.policy.model or "")


def _plan(stages: list[StageSpec], digest: str | None) -> Plan:
    return Plan(stages=stages, outputs={STAGE_OUTPUTS[s.stage]: published_output(s.stage, s.output) for s in stages}, constitution_digest=digest)


def references(res: Resource) -> list[tuple[str, str, str]]:
    """(kind, name, field path) of every resource `res` refers to."""
    spec = res.spec
    refs: list[tuple[str, str, str]] = []
    if hasattr(spec, "constitution_ref"):
        refs.append(("Constitution", spec.constitution_ref.name, "spec.constitutionRef.name"))
    policy = getattr(spec, "policy", None)
    if policy is not None and policy.critique_run_ref is not None:
        refs.append(("CritiqueRun", policy.critique_run_ref.name, "spec.policy.critiqueRunRef.name"))
    if isinstance(spec, RLAIFRunSpec):
        refs.append(("PreferenceModel", spec.reward_model_ref.name, "spec.rewardModelRef.name"))
    return refs


def model_refs(res: Resource) -> list[tuple[str, str]]:
    """(field path, model reference) of every model the resource names directly."""
    spec = res.spec
    out: list[tuple[str, str]] = []
    if isinstance(spec, CritiqueRunSpec):
        out.append(("spec.model", spec.model))
    policy = getattr(spec, "policy", None)
    if policy is not None and policy.model:
        out.append(("spec.policy.model", policy.model))
    if isinstance(spec, PreferenceModelSpec):
        if spec.feedback_model:
            out.append(("spec.feedbackModel", spec.feedback_model))
        if spec.training.base_model:
            out.append(("spec.training.baseModel", spec.training.base_model))
    return out


def order_by_references(resources: list[Resource]) -> list[Resource]:
    """Topological order: everything a resource references (within the list) comes before it."""
    by_key = {(r.kind, r.namespace, r.name): r for r in resources}
    ordered: list[Resource] = []
    state: dict[tuple[str, str, str], int] = {}

    def visit(r: Resource) -> None:
        key = (r.kind, r.namespace, r.name)
        if state.get(key) == 2:
            return
        if state.get(key) == 1:
            raise ValueError(f"reference cycle through {r.display}")
        state[key] = 1
        for kind, name, _ in references(r):
            dep = by_key.get((kind, r.namespace, name))
            if dep is not None:
                visit(dep)
        state[key] = 2
        ordered.append(r)

    rank = {k: i for i, k in enumerate(KINDS)}
    for r in sorted(resources, key=lambda r: rank[r.kind]):
        visit(r)
    return ordered
