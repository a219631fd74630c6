"""Stage `label-preferences` (RL-CAI, DESIGN §1 items 7-9): AI feedback on the response pairs.

Each pair becomes a comparison labelled by the feedback model through `labeller.Labeller`: a
multiple-choice prompt per (drawn principle, option order), few-shot examples from the
Constitution prepended, the option tokens' log-probabilities after "The answer is: (" read in one
forward pass per prompt (batched), softmax over the options = soft label; both orders averaged,
several principles averaged, chain-of-thought probabilities clamped.

Fails before heavy work when the option letters are not single tokens of the feedback model, when
it has no chat template, or when the clamp is unusable. Labels are validated (finite, in [0, 1])
before anything is written. Output `comparisons.jsonl` rows (DESIGN §4):
`{id, promptId, prompt, responseA, responseB, principles, pA, orderScores, scores, cot?}`.
Chunks are checkpointed in the work dir for resume.
"""

from __future__ import annotations

import time
from typing import Any

from ..constitution import feedback as fb
from ..models.backends import OptionTokenError, load_backend
from .labeller import Labeller, LabelSettings, validate_labels
from .runtime import StageContext, StageError, StageResult
from .sample_pairs import _read_jsonl, write_jsonl

CHUNK = 32


def load_pairs(path) -> list[dict[str, Any]]:
    rows = _read_jsonl(path)
    for n, r in enumerate(rows):
        missing = [k for k in ("id", "prompt", "responseA", "responseB") if not isinstance(r.get(k), str)]
        if missing:
            raise StageError(f"{path.name} line {n + 1}: missing {', '.join(missing)}")
    if not rows:
        raise StageError(f"{path.name} has no response pairs")
    return rows


def open_labeller(kind: str, model: str, endpoint: str | None, batch_size: int, const, settings: LabelSettings,
                  first: dict[str, Any], principles=None) -> Labeller:
    """Load the feedback backend and score one real prompt, turning every way it can be unusable
    into a StageError that names the model (before any bulk work)."""
    try:
        backend = load_backend(kind, model, endpoint=endpoint, batch_size=batch_size)
    except ValueError as e:
        raise StageError(f"feedback model {model}: {e}") from None
    try:
        labeller = Labeller(backend, const, settings, principles=principles)
        labeller.check(first)
    except OptionTokenError as e:
        backend.close()
        raise StageError(f"feedback model {model} cannot be used as a labeller: {e}. The labeller reads the "
                         f"log-probabilities of the option letters {' and '.join(fb.OPTIONS)}, which must each be "
                         "one token of its tokenizer.") from None
    except ValueError as e:  # no chat template, prompt longer than the model's context, bad clamp
        backend.close()
        raise StageError(f"feedback model {model} cannot label: {e}") from None
    return labeller


def run(ctx: StageContext) -> StageResult:
    spec = ctx.run_spec
    lab = spec.labeling
    problem = fb.check_clamp(lab.clamp)
    if problem:
        raise StageError(f"spec.labeling.clamp: {problem}")
    const = ctx.constitution()
    pairs = load_pairs(ctx.input_dir("pairs") / "pairs.jsonl")
    settings = LabelSettings.from_spec(lab, spec.seed)
    feedback = ctx.model("feedback")
    ctx.log(f"{len(pairs)} comparisons, feedback model {feedback}: {settings.principles_per_comparison} principle(s), "
            f"{'both orders' if settings.both_orders else 'one order'}"
            + (f", chain of thought × {settings.cot_samples}, clamp {list(settings.clamp)}" if settings.chain_of_thought else ""))
    labeller = open_labeller(lab.backend, feedback, lab.endpoint, lab.batch_size, const, settings, pairs[0])
    chunk_dir = ctx.work_dir / "chunks"
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        with ctx.progress("scored prompts", len(pairs) * settings.prompts_per_comparison, "prompts") as progress:
            for i in range(0, len(pairs), CHUNK):
                chunk = pairs[i:i + CHUNK]
                path = chunk_dir / f"labels-{i // CHUNK:05d}.jsonl"
                if path.exists():
                    rows += _read_jsonl(path)
                    progress.advance(len(chunk) * settings.prompts_per_comparison)
                    continue
                labelled = labeller.label(chunk, progress=progress.advance)
                try:
                    validate_labels(labelled, f"feedback model {feedback}")
                except ValueError as e:
                    raise StageError(str(e)) from None
                write_jsonl(path, labelled)
                rows += labelled
    finally:
        labeller.backend.close()
    elapsed = time.monotonic() - started
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
        "meanPA": round(fb.mean(p), 6),
        # How far labels are from a coin flip, and how often they pick A: a sanity check on the labeller.
        "meanConfidence": round(fb.mean([abs(x - 0.5) * 2 for x in p]), 6),
        "fractionPreferA": round(sum(x > 0.5 for x in p) / len(p), 6),
        # Mean probability of the option shown first minus 0.5: the position bias both orders cancel.
        "positionBias": round(fb.mean(firsts) - 0.5, 6),
        "labelingSeconds": round(elapsed, 2),
        "comparisonsPerSecond": round(len(rows) / elapsed, 4) if elapsed > 0 else 0.0,
    }
    if settings.both_orders:
        # Agreement of the two orders' verdicts: low agreement means position bias or noise.
        agree = [(r["orderScores"]["AB"] > 0.5) == (r["orderScores"]["BA"] > 0.5) for r in rows]
        metrics["orderAgreement"] = round(sum(agree) / len(agree), 6)
    return StageResult(kind="dataset", metrics=metrics)
