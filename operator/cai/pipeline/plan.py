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
from typing import Any

from ..api import references as api_references
from ..api.common import PolicySpec
from ..api.kinds import (
    KINDS,
    ConstitutionSpec,
    ConstitutionStatus,
    CritiqueRunSpec,
    CritiqueRunStatus,
    PreferenceModelSpec,
    PreferenceModelStatus,
    RLAIFRunSpec,
    StageInfo,
)
from ..api.manifest import Resource, S
from ..store.layout import artifact_uri
from .conditions import is_false, is_true
from .stagespec import StageSpec

Lookup = Callable[[str, str], Resource | None]
# Bytes of one run's stage specs (each embeds the constitution): the operator keeps them in one ConfigMap,
# which holds at most 1 MiB. `cai validate` checks the same bound.
PLAN_SPECS_LIMIT = 900_000


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


def published_output(stage: StageInfo, output: str) -> str:
    """What status.outputs shows for a stage's artifact `output` (e.g. the report.html inside it)."""
    return f"{output.rstrip('/')}/{stage.output_file}" if stage.output_file else output


def _require(lookup: Lookup, kind: type[S], name: str, who: str) -> Resource[S, Any] | Blocked:
    """The dependency `name` of kind `KINDS[...]` whose spec type is `kind`, once its summary condition
    (Ready or Succeeded) is True; else why not."""
    info = next(i for i in KINDS.values() if i.spec is kind)
    dep = lookup(info.kind, name)
    where, ready = f"{info.kind}/{name} ({who})", info.summary_condition
    if dep is None:
        return Blocked("WaitingForDependency", f"{where} does not exist yet")
    if is_false(dep.status, ready):
        return Blocked("DependencyFailed", f"{where} failed; fix it and recreate this resource", failed=True)
    if not is_true(dep.status, ready):
        return Blocked("WaitingForDependency", f"waiting for {where} to become {ready}")
    return dep.typed(kind, info.status)


def _policy(lookup: Lookup, policy: PolicySpec) -> tuple[str, str] | Blocked:
    """(policy model ref, its base model ref) for a PolicySpec."""
    if policy.model is not None:
        return policy.model, policy.model
    assert policy.critique_run_ref is not None  # the spec's rule: exactly one of the two
    dep = _require(lookup, CritiqueRunSpec, policy.critique_run_ref.name, "spec.policy.critiqueRunRef")
    if isinstance(dep, Blocked):
        return dep
    assert isinstance(dep.status, CritiqueRunStatus)
    model = dep.status.outputs.model
    if not model:
        return Blocked(
            "DependencyFailed",
            f"CritiqueRun/{dep.name} succeeded without a model (finetune disabled?)",
            failed=True,
        )
    return model, dep.spec.model


@dataclass
class _Wiring:
    """What a kind's planner decides: per stage its models and inputs, and the Constitution in force."""

    stages: dict[str, dict[str, dict[str, str]]]  # stage -> {"models": {role: ref}, "inputs": {role: uri}}
    constitution: ConstitutionSpec | None
    digest: str | None


def _constitution(lookup: Lookup, name: str) -> ConstitutionSpec | Blocked:
    const = _require(lookup, ConstitutionSpec, name, "spec.constitutionRef")
    return const if isinstance(const, Blocked) else const.spec


def _critique_run(spec: CritiqueRunSpec, lookup: Lookup, out: dict[str, str]) -> _Wiring | Blocked:
    const = _constitution(lookup, spec.constitution_ref.name)
    if isinstance(const, Blocked):
        return const
    return _Wiring({
        "generate-revisions": {"models": {"policy": spec.model}},
        "finetune": {"models": {"base": spec.model}, "inputs": {"dataset": out["generate-revisions"]}},
    }, const, constitution_digest(const))


def _preference_model(spec: PreferenceModelSpec, lookup: Lookup, out: dict[str, str]) -> _Wiring | Blocked:
    const = _constitution(lookup, spec.constitution_ref.name)
    if isinstance(const, Blocked):
        return const
    policy = _policy(lookup, spec.policy)
    if isinstance(policy, Blocked):
        return policy
    policy_model, base_model = policy
    return _Wiring(
        {
            "sample-pairs": {"models": {"policy": policy_model}},
            "label-preferences": {
                "models": {"feedback": spec.feedback_model or base_model},
                "inputs": {"pairs": out["sample-pairs"]},
            },
            "train-preference-model": {
                "models": {"base": spec.training.base_model or policy_model, "policy": policy_model},
                "inputs": {"comparisons": out["label-preferences"]},
            },
        },
        const,
        constitution_digest(const),
    )


def _rlaif_run(spec: RLAIFRunSpec, lookup: Lookup, out: dict[str, str]) -> _Wiring | Blocked:
    pm = _require(lookup, PreferenceModelSpec, spec.reward_model_ref.name, "spec.rewardModelRef")
    if isinstance(pm, Blocked):
        return pm
    assert isinstance(pm.status, PreferenceModelStatus)
    policy = _policy(lookup, spec.policy)
    if isinstance(policy, Blocked):
        return policy
    policy_model, base_model = policy
    found = lookup("Constitution", pm.spec.constitution_ref.name)
    const = found.typed(ConstitutionSpec, ConstitutionStatus).spec if found is not None else None
    pm_outputs = pm.status.outputs
    trained = out["train-policy"]
    feedback = pm.spec.feedback_model or _feedback_default(lookup, pm)
    judge = spec.evaluation.judge.model if spec.evaluation.judge else feedback
    return _Wiring({
        "train-policy": {"models": {"policy": policy_model, "reward": pm_outputs.model or ""}},
        "evaluate": {
            "models": {"start": base_model, "sl": policy_model, "rl": trained,
                       "feedback": feedback, "judge": judge, "reward": pm_outputs.model or ""},
            "inputs": {"policy": trained, "comparisons": pm_outputs.comparisons or "",
                       "rewardModel": pm_outputs.model or ""},
        },
    }, const, pm.status.constitution_digest)


_PLANNERS: dict[str, Callable[[Any, Lookup, dict[str, str]], _Wiring | Blocked]] = {
    "CritiqueRun": _critique_run,
    "PreferenceModel": _preference_model,
    "RLAIFRun": _rlaif_run,
}


def plan_resource(res: Resource, lookup: Lookup, storage_root: str) -> Plan | Blocked:
    planner = _PLANNERS.get(res.kind)
    if planner is None:
        raise TypeError(f"{res.kind} has no stages")
    info = res.info
    out = {
        s.name: artifact_uri(storage_root, res.namespace, info.plural, res.name, res.uid, s.name)
        for s in info.stages
    }
    wiring = planner(res.spec, lookup, out)
    if isinstance(wiring, Blocked):
        return wiring
    constitution = wiring.constitution.to_wire() if wiring.constitution is not None else None
    enabled = info.stages_for(res.spec)
    stages = [StageSpec(stage=s.name, kind=res.kind, name=res.name, namespace=res.namespace, uid=res.uid,
                        spec=res.spec.to_wire(), output=out[s.name], constitution=constitution,
                        constitution_digest=wiring.digest, **wiring.stages[s.name])
              for s in enabled]
    return Plan(stages=stages, outputs={s.output: published_output(s, out[s.name]) for s in enabled},
                constitution_digest=wiring.digest)


def _feedback_default(lookup: Lookup, pm: Resource[PreferenceModelSpec, Any]) -> str:
    policy = _policy(lookup, pm.spec.policy)
    return policy[1] if not isinstance(policy, Blocked) else (pm.spec.policy.model or "")


def references(res: Resource) -> list[tuple[str, str, str]]:
    """(kind, name, field path) of every resource `res` refers to."""
    return api_references.references(res.info.spec, res.spec)


def model_refs(res: Resource) -> list[tuple[str, str]]:
    """(field path, model reference) of every model the resource names directly."""
    return api_references.model_refs(res.info.spec, res.spec)


def prompt_sources(res: Resource) -> list[tuple[str, str]]:
    """(field path, source) of every prompt source the resource reads."""
    return api_references.prompt_sources(res.info.spec, res.spec)


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
