"""What a set of manifests will create, computed without running anything (`cai plan`).

Per run, in dependency order: each stage (the stage registry, `KindInfo.stages_for`), the Job the operator
creates for it (`controller.builders`: its name, whether it is an Indexed Job over several pods), GPUs per
pod, the prompts it reads and an estimate of what it costs: generated tokens for the generating stages,
optimizer steps for the trainers. Nothing is loaded but prompt files that are here (to count their rows):
no model, no cluster. The estimates are upper bounds of the stages' own arithmetic (an empty revision or a
short answer costs less); each comes with its formula on the spec's numbers.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..api.common import PromptSource, TrainingSpec
from ..api.kinds import CritiqueRunSpec, PreferenceModelSpec, RLAIFRunSpec, RunCommon, RunStatus
from ..api.manifest import Resource, RunResource
from ..controller.builders import data_parallel, distributed, job_name, service_name
from ..data.prompts import load_prompts
from ..pipeline.plan import order_by_references, references


@dataclass
class SourceCount:
    """How many prompts one prompt source yields, and how that was found (`countedFrom`):
    builtin (the shipped set), file (rows of a file here), limit (the spec's limit: the file is not
    here or is a hub dataset), unknown (no limit and nothing to count)."""

    field: str
    source: str
    prompts: int | None
    counted_from: str


@dataclass
class StagePlan:
    stage: str
    job: str
    indexed: bool  # an Indexed Job of `pods` pods: torchrun ranks (with a headless Service) or workers
    service: str | None
    pods: int
    gpus_per_pod: int
    sources: list[SourceCount] = field(default_factory=list)
    prompts: int | None = None
    comparisons: int | None = None
    generations: int | None = None
    generated_tokens: int | None = None
    workers: int = 1  # data-parallel workers: pod k takes prompt chunks k, k + workers, …; the last merges
    training_rows: int | None = None
    optimizer_steps: int | None = None
    estimate: str = ""  # the formula behind generatedTokens / optimizerSteps, on the spec's numbers


@dataclass
class ResourcePlan:
    kind: str
    name: str
    namespace: str
    file: str
    assumes: list[str]  # "Kind/name" referenced but not among the manifests: expected in the cluster
    stages: list[StagePlan]


@functools.lru_cache(maxsize=64)
def _rows(source: str, limit: int | None, split: str | None) -> int:
    """Prompts of a built-in set or a file here (read once, though several stages read the source)."""
    return len(load_prompts(source, limit, split))


def _count(path: str, src: PromptSource | None) -> SourceCount | None:
    if src is None:
        return None
    source, path_here = src.source, src.source.removeprefix("file://")
    here = not source.startswith(("builtin:", "hf:")) and "://" not in path_here and Path(path_here).is_file()
    if source.startswith("builtin:") or here:
        n = _rows(source, src.limit, src.split)
        return SourceCount(path, source, n, "builtin" if source.startswith("builtin:") else "file")
    if src.limit is not None:
        return SourceCount(path, source, src.limit, "limit")
    return SourceCount(path, source, None, "unknown")


def _mul(*factors: float | None) -> int | None:
    """The product, or None when a factor is unknown."""
    if any(f is None for f in factors):
        return None
    return round(math.prod(f for f in factors if f is not None))


def _add(*terms: int | None) -> int | None:
    return None if any(t is None for t in terms) else sum(t for t in terms if t is not None)


def _n(x: float | None) -> str:
    return "unknown" if x is None else f"{x:,}" if isinstance(x, int) else f"{x:g}"


def _steps(st: StagePlan, rows: int | None, tr: TrainingSpec, ranks: int) -> None:
    """Optimizer steps of a trainer: rows × epochs over (per-device batch × accumulation × ranks)."""
    per_step = tr.batch_size * tr.gradient_accumulation_steps * ranks
    st.generations, st.generated_tokens = 0, 0  # a trainer generates nothing
    st.training_rows = rows
    st.optimizer_steps = None if rows is None else math.ceil(rows * tr.epochs / per_step)
    st.estimate = (f"steps ≈ {_n(rows)} rows × {tr.epochs:g} epoch(s) / ({tr.batch_size} × "
                   f"{tr.gradient_accumulation_steps} × {ranks} rank(s)) = {_n(st.optimizer_steps)}")


def _generated(st: StagePlan, generations: int | None, terms: str, tokens: int) -> None:
    st.generations = generations
    st.generated_tokens = _mul(generations, tokens)
    st.estimate = f"tokens ≈ {terms} = {_n(st.generated_tokens)}"


def _generate_revisions(spec: CritiqueRunSpec, st: StagePlan, ranks: int) -> None:
    red = _count("spec.prompts", spec.prompts)
    helpful = _count("spec.helpfulPrompts", spec.helpful_prompts)
    st.sources = [s for s in (red, helpful) if s is not None]
    # Per red-team prompt: the initial answer, then a critique and a revision per round.
    rounds, tokens = 1 + 2 * spec.revisions, spec.generation.max_new_tokens
    red_n = red.prompts if red else 0
    terms = f"{_n(red_n)} × (1 + 2·{spec.revisions}) × {tokens}"
    generations = _mul(red_n, rounds)
    if helpful is not None and spec.helpful_prompts is not None:
        samples = spec.helpful_prompts.samples_per_prompt
        terms += f" + {_n(helpful.prompts)} × {samples} × {tokens}"
        generations = _add(generations, _mul(helpful.prompts, samples))
    st.prompts = _add(*(s.prompts for s in st.sources))
    _generated(st, generations, terms, tokens)


def _finetune(spec: CritiqueRunSpec, st: StagePlan, ranks: int) -> None:
    # One SFT row per revision round of each red-team prompt and per helpful sample.
    red = _count("spec.prompts", spec.prompts)
    helpful = _count("spec.helpfulPrompts", spec.helpful_prompts)
    samples = spec.helpful_prompts.samples_per_prompt if spec.helpful_prompts else 0
    rows = _add(_mul(red.prompts if red else 0, spec.revisions),
                _mul(helpful.prompts, samples) if helpful else 0)
    _steps(st, rows, spec.finetune, ranks)


def _comparisons(spec: PreferenceModelSpec) -> tuple[SourceCount, int | None]:
    src = _count("spec.prompts", spec.prompts)
    assert src is not None
    return src, _mul(src.prompts, spec.pairs_per_prompt)


def _sample_pairs(spec: PreferenceModelSpec, st: StagePlan, ranks: int) -> None:
    src, _ = _comparisons(spec)
    st.sources, st.prompts = [src], src.prompts
    tokens = spec.generation.max_new_tokens
    _generated(st, _mul(src.prompts, 2, spec.pairs_per_prompt),
               f"{_n(src.prompts)} × 2 × {spec.pairs_per_prompt} pair(s) × {tokens}", tokens)


def _label_preferences(spec: PreferenceModelSpec, st: StagePlan, ranks: int) -> None:
    src, comparisons = _comparisons(spec)
    lab = spec.labeling
    st.sources, st.prompts, st.comparisons = [src], src.prompts, comparisons
    if not lab.chain_of_thought:
        # Labels are read from one forward pass per scored prompt: nothing is generated.
        st.generations, st.generated_tokens = 0, 0
        st.estimate = "tokens = 0 (one forward pass per comparison, order and principle; no generation)"
        return
    orders = 2 if lab.both_orders else 1
    _generated(st, _mul(comparisons, lab.principles_per_comparison, orders, lab.cot_samples),
               f"{_n(comparisons)} comparisons × {lab.principles_per_comparison} principle(s) × {orders} "
               f"order(s) × {lab.cot_samples} chain(s) of thought × {lab.cot_max_new_tokens}",
               lab.cot_max_new_tokens)


def _train_preference_model(spec: PreferenceModelSpec, st: StagePlan, ranks: int) -> None:
    _, comparisons = _comparisons(spec)
    st.comparisons = comparisons
    held = _mul(comparisons, spec.training.held_out_fraction)
    _steps(st, None if comparisons is None or held is None else comparisons - held, spec.training, ranks)


def _train_policy(spec: RLAIFRunSpec, st: StagePlan, ranks: int) -> None:
    src = _count("spec.prompts", spec.prompts)
    assert src is not None
    st.sources, st.prompts, st.optimizer_steps = [src], src.prompts, spec.steps
    # Each step samples generationsPerPrompt completions of batchSize prompts on every rank.
    g, tokens = spec.generations_per_prompt, spec.max_new_tokens
    _generated(st, spec.steps * spec.batch_size * ranks * g,
               f"{spec.steps:,} steps × {spec.batch_size} prompts × {ranks} rank(s) × {g} × {tokens}", tokens)


def _evaluate(spec: RLAIFRunSpec, st: StagePlan, ranks: int) -> None:
    ev = spec.evaluation
    st.sources = [s for s in (_count("spec.evaluation.redTeamPrompts", ev.red_team_prompts),
                              _count("spec.evaluation.helpfulPrompts", ev.helpful_prompts)) if s]
    st.prompts = _add(*(s.prompts for s in st.sources))
    # Start, SL-CAI and RL-CAI models answer each prompt; a policy given as a model is start and SL at once.
    models = 2 if spec.policy.model is not None else 3
    _generated(st, _mul(st.prompts, models),
               f"{_n(st.prompts)} prompts × {models} models × {ev.max_new_tokens}", ev.max_new_tokens)


ESTIMATORS: dict[str, Callable[[Any, StagePlan, int], None]] = {
    "generate-revisions": _generate_revisions,
    "finetune": _finetune,
    "sample-pairs": _sample_pairs,
    "label-preferences": _label_preferences,
    "train-preference-model": _train_preference_model,
    "train-policy": _train_policy,
    "evaluate": _evaluate,
}


def _stage(res: RunResource, stage: str) -> StagePlan:
    job, multi, workers = job_name(res.name, stage), distributed(res, stage), data_parallel(res, stage)
    r = res.spec.resources
    st = StagePlan(stage=stage, job=job, indexed=multi or workers,
                   service=service_name(job) if multi else None,
                   pods=r.nodes if multi else r.workers if workers else 1, gpus_per_pod=r.gpus_per_node,
                   workers=r.workers if workers else 1)
    ESTIMATORS[stage](res.spec, st, st.pods)  # one torchrun rank per pod (builders.stage_command)
    return st


def plan_resources(resources: list[Resource]) -> list[ResourcePlan]:
    """The plan of every resource, in the order they can run (references first)."""
    present = {r.key for r in resources}
    out = []
    for res in order_by_references(resources):
        assumes = sorted({f"{kind}/{name}" for kind, name, _ in references(res)
                          if (kind, res.namespace, name) not in present})
        stages = ([_stage(res.typed(RunCommon, RunStatus), s.name) for s in res.info.stages_for(res.spec)]
                  if res.info.is_run else [])
        out.append(ResourcePlan(res.kind, res.name, res.namespace, res.source, assumes, stages))
    return out


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(w.capitalize() for w in rest)


def _wire(value: Any) -> Any:
    if isinstance(value, dict):
        return {_camel(k): _wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_wire(v) for v in value]
    return value


def to_json(plans: list[ResourcePlan]) -> dict[str, Any]:
    """The `cai plan -o json` document (keys are a contract: README, "Planning a run")."""
    stages = [s for p in plans for s in p.stages]
    tokens = [s.generated_tokens for s in stages]
    return {
        "resources": [_wire(asdict(p)) for p in plans],
        "totals": {
            "jobs": len(stages),
            "pods": sum(s.pods for s in stages),
            "generatedTokens": sum(t for t in tokens if t is not None),
            "stagesWithUnknownTokens": sum(t is None for t in tokens),
        },
    }
