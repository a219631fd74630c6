"""Stage `label-preferences` (RL-CAI): AI feedback on the response pairs.

Each pair becomes a comparison labelled by the feedback model through `cai.feedback.labeller`: a
multiple-choice prompt per (drawn principle, option order), few-shot examples from the
Constitution prepended, the option tokens' log-probabilities after "The answer is: (" read in one
forward pass per prompt (batched), softmax over the options = soft label; both orders averaged,
several principles averaged, chain-of-thought probabilities clamped.

Fails before heavy work when the option letters are not single tokens of the feedback model, when
it has no chat template, or when the clamp is unusable. Labels are validated (finite, in [0, 1])
before anything is written. Output `comparisons.jsonl` rows (docs/design.md, artifacts):
`{id, promptId, prompt, responseA, responseB, principles, pA, orderScores, scores, cot?}`.
Chunks are checkpointed in the work dir for resume.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..api.kinds import PreferenceModelSpec
from ..feedback.labeller import Labeller, LabellerError, LabelSettings, open_labeller
from ..feedback.labels import mean, validate_labels
from ..store import checkpointed, read_jsonl, write_jsonl
from .runtime import OnFirstUse, StageContext, StageError, StageResult

CHUNK = 32


def load_pairs(path: Path) -> list[dict[str, Any]]:
    rows = read_jsonl(path)
    for n, r in enumerate(rows):
        missing = [k for k in ("id", "prompt", "responseA", "responseB") if not isinstance(r.get(k), str)]
        if missing:
            raise StageError(f"{path.name} line {n + 1}: missing {', '.join(missing)}")
    if not rows:
        raise StageError(f"{path.name} has no response pairs")
    return rows


def run(ctx: StageContext[PreferenceModelSpec]) -> StageResult:
    spec = ctx.spec
    lab = spec.labeling
    try:
        settings = LabelSettings.from_spec(lab, spec.seed)
    except ValueError as e:
        raise StageError(f"spec.labeling.clamp: {e}") from None
    const = ctx.constitution()
    pairs = load_pairs(ctx.input_dir("pairs") / "pairs.jsonl")
    feedback = ctx.model("feedback")
    ctx.log(
        f"{len(pairs)} comparisons, feedback model {feedback}: "
        f"{settings.principles_per_comparison} principle(s), "
        f"{'both orders' if settings.both_orders else 'one order'}"
        + (
            f", chain of thought × {settings.cot_samples}, clamp {list(settings.clamp)}"
            if settings.chain_of_thought
            else ""
        )
    )
    def open_feedback_model() -> Labeller:
        try:
            return open_labeller(
                lab.backend, feedback, lab.endpoint, lab.batch_size, const, settings, pairs[0]
            )
        except LabellerError as e:
            raise StageError(str(e)) from None

    labeller = OnFirstUse(open_feedback_model, lambda lab: lab.backend.close())
    per_comparison = settings.prompts_per_comparison

    def label(chunk: list[dict[str, Any]], index: int) -> list[dict[str, Any]]:
        labelled = labeller.get().label(chunk, progress=progress.advance)
        try:
            validate_labels(labelled, f"feedback model {feedback}")
        except ValueError as e:
            raise StageError(str(e)) from None
        return labelled

    started = time.monotonic()
    try:
        with ctx.progress("scored prompts", len(pairs) * per_comparison, "prompts") as progress:
            rows = checkpointed(pairs, CHUNK, ctx.work_dir / "chunks", "labels", label,
                                skipped=lambda chunk: progress.advance(len(chunk) * per_comparison),
                                saved=ctx.keep, shard=ctx.shard)
    finally:
        labeller.close()
    elapsed = time.monotonic() - started
    speed = {"labelingSeconds": round(elapsed, 2),
             "comparisonsPerSecond": round(len(rows) / elapsed, 4) if elapsed > 0 else 0.0}
    if ctx.shard is not None:
        return ctx.shard_result(**speed)
    try:
        validate_labels(rows, "comparisons")
    except ValueError as e:  # a stale chunk from an older run
        raise StageError(str(e)) from None
    write_jsonl(ctx.out_dir / "comparisons.jsonl", rows)

    p = [r["pA"] for r in rows]
    firsts = [s["pFirst"] for r in rows for s in r["scores"]]
    metrics: dict[str, Any] = {
        "comparisons": len(rows),
        "scoredPrompts": len(firsts),
        "meanPA": round(mean(p), 6),
        # How far labels are from a coin flip, and how often they pick A: a sanity check on the labeller.
        "meanConfidence": round(mean([abs(x - 0.5) * 2 for x in p]), 6),
        "fractionPreferA": round(sum(x > 0.5 for x in p) / len(p), 6),
        # Mean probability of the option shown first minus 0.5: the position bias both orders cancel.
        "positionBias": round(mean(firsts) - 0.5, 6),
        **speed,
    }
    if settings.both_orders:
        # Agreement of the two orders' verdicts: low agreement means position bias or noise.
        agree = [(r["orderScores"]["AB"] > 0.5) == (r["orderScores"]["BA"] > 0.5) for r in rows]
        metrics["orderAgreement"] = round(sum(agree) / len(agree), 6)
    return StageResult(kind="dataset", metrics=metrics)
