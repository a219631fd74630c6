"""Stage `generate-revisions` (SL-CAI data, docs/design.md#stages).

For each red-team prompt: an initial answer, then `revisions` rounds of critique → revision, each
with a principle drawn at random (seeded per prompt and round, recorded), few-shot examples
prepended. Every round's revision is kept as training data. Helpfulness prompts get
`samplesPerPrompt` sampled answers, mixed into the SFT data.

Outputs: `revisions.jsonl` (full chains), `helpful.jsonl` (helpful samples) and `sft.jsonl` (chat
messages ready for SFTTrainer). Work proceeds in chunks saved to the work dir, so an interrupted
stage resumes at the first unfinished chunk.
"""

from __future__ import annotations

import time
from typing import Any

from ..api.kinds import CritiqueRunSpec
from ..constitution.critique import (
    critique_conversation,
    few_shot_turns,
    revision_conversation,
    round_principle,
)
from ..constitution.sampling import stable_seed
from ..data.prompts import PromptSourceError, load_prompts
from ..models.backends import SamplingParams, load_backend
from ..store import checkpointed, write_jsonl
from .runtime import OnFirstUse, StageContext, StageError, StageResult

CHUNK = 64


class _Counter:
    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def add(self, batches) -> list[list[str]]:
        texts = []
        for completions in batches:
            for c in completions:
                self.prompt_tokens += c.prompt_tokens
                self.completion_tokens += c.completion_tokens
            texts.append([c.text.strip() for c in completions])
        return texts


def _load(source, what: str) -> list[dict[str, Any]]:
    try:
        return load_prompts(source.source, source.limit, source.split)
    except PromptSourceError as e:
        raise StageError(f"spec.{what}.source: {e}") from None


def _critique_chain(
    backend, const, spec, chunk: list[dict[str, Any]], chunk_index: int, counter: _Counter, progress
) -> list[dict[str, Any]]:
    gen = spec.generation
    def params(step: str) -> SamplingParams:
        # A distinct, reproducible seed per chunk and step.
        return SamplingParams(max_new_tokens=gen.max_new_tokens, temperature=gen.temperature, top_p=gen.top_p,
                              seed=stable_seed(spec.seed, chunk_index, step))

    prefix = few_shot_turns(const, spec.few_shot_examples, spec.seed)
    initial = counter.add(
        backend.chat(
            [[{"role": "user", "content": p["prompt"]}] for p in chunk],
            params("initial"),
            progress=progress.advance,
        )
    )
    rows = [
        {"id": p["id"], "prompt": p["prompt"], "initialResponse": a[0], "rounds": []}
        for p, a in zip(chunk, initial)
    ]
    current = [r["initialResponse"] for r in rows]
    for rnd in range(1, spec.revisions + 1):
        principles = [round_principle(const, spec.seed, r["id"], rnd) for r in rows]
        crit_convs = [
            critique_conversation(prefix, r["prompt"], resp, pr)
            for r, resp, pr in zip(rows, current, principles)
        ]
        critiques = counter.add(
            backend.chat(crit_convs, params(f"critique-{rnd}"), progress=progress.advance)
        )
        rev_convs = [
            revision_conversation(cc, c[0], pr) for cc, c, pr in zip(crit_convs, critiques, principles)
        ]
        revisions = counter.add(backend.chat(rev_convs, params(f"revision-{rnd}"), progress=progress.advance))
        for row, pr, c, r in zip(rows, principles, critiques, revisions):
            row["rounds"].append({
                "round": rnd, "principle": pr.name, "critiqueRequest": pr.critique, "critique": c[0],
                "revisionRequest": pr.revision, "revision": r[0],
            })
        # The next round critiques the latest revision; keep the previous answer if a revision is empty.
        current = [r[0] or prev for r, prev in zip(revisions, current)]
    return rows


def _helpful_samples(
    backend, spec, chunk, chunk_index: int, counter: _Counter, progress
) -> list[dict[str, Any]]:
    gen, hp = spec.generation, spec.helpful_prompts
    params = SamplingParams(max_new_tokens=gen.max_new_tokens, temperature=gen.temperature, top_p=gen.top_p,
                            seed=stable_seed(spec.seed, chunk_index, "helpful"))
    answers = counter.add(backend.chat([[{"role": "user", "content": p["prompt"]}] for p in chunk], params,
                                       n=hp.samples_per_prompt, progress=progress.advance))
    return [{"id": p["id"], "prompt": p["prompt"], "responses": a} for p, a in zip(chunk, answers)]


def sft_rows(chains: list[dict[str, Any]], helpful: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """(prompt, revision) for every round, plus (prompt, sample) for helpful samples, as chat messages."""
    rows = []
    for chain in chains:
        for rnd in chain["rounds"]:
            if rnd["revision"]:
                rows.append(
                    {
                        "messages": [
                            {"role": "user", "content": chain["prompt"]},
                            {"role": "assistant", "content": rnd["revision"]},
                        ],
                        "source": "revision",
                        "id": chain["id"],
                        "round": rnd["round"],
                        "principle": rnd["principle"],
                    }
                )
    for item in helpful:
        for i, resp in enumerate(item["responses"]):
            if resp:
                rows.append({"messages": [{"role": "user", "content": item["prompt"]},
                                          {"role": "assistant", "content": resp}],
                             "source": "helpful", "id": item["id"], "sample": i})
    return rows


def run(ctx: StageContext[CritiqueRunSpec]) -> StageResult:
    spec = ctx.spec
    const = ctx.constitution()
    prompts = _load(spec.prompts, "prompts")
    helpful_prompts = _load(spec.helpful_prompts, "helpfulPrompts") if spec.helpful_prompts else []
    samples = spec.helpful_prompts.samples_per_prompt if spec.helpful_prompts else 0
    gen = spec.generation
    ctx.log(
        f"{len(prompts)} red-team prompts × {spec.revisions} rounds, "
        f"{len(helpful_prompts)} helpful prompts × {samples}"
    )
    policy = ctx.model("policy")
    backend = OnFirstUse(
        lambda: load_backend(gen.backend, policy, endpoint=gen.endpoint, batch_size=gen.batch_size),
        lambda b: b.close(),
    )
    counter = _Counter()
    chunk_dir = ctx.work_dir / "chunks"
    rounds = 1 + 2 * spec.revisions  # generations per red-team prompt
    total = len(prompts) * rounds + len(helpful_prompts)
    started = time.monotonic()
    try:
        with ctx.progress("generations", total, "generations") as progress:
            chains = checkpointed(
                prompts, CHUNK, chunk_dir, "red",
                lambda chunk, i: _critique_chain(backend.get(), const, spec, chunk, i, counter, progress),
                skipped=lambda chunk: progress.advance(len(chunk) * rounds), saved=ctx.keep, shard=ctx.shard)
            helpful = checkpointed(
                helpful_prompts, CHUNK, chunk_dir, "helpful",
                lambda chunk, i: _helpful_samples(backend.get(), spec, chunk, i, counter, progress),
                skipped=lambda chunk: progress.advance(len(chunk)), saved=ctx.keep, shard=ctx.shard)
    finally:
        backend.close()
    elapsed = time.monotonic() - started
    generated = {"tokensGenerated": counter.completion_tokens, "promptTokens": counter.prompt_tokens,
                 "tokensPerSecond": round(counter.completion_tokens / elapsed, 2) if elapsed > 0 else 0.0,
                 "generationSeconds": round(elapsed, 2)}
    if ctx.shard is not None:
        return ctx.shard_result(**generated)
    sft = sft_rows(chains, helpful)
    if not sft:
        raise StageError("every generated revision and helpful sample was empty: nothing to fine-tune on "
                         "(check generation.maxNewTokens and the model)")
    write_jsonl(ctx.out_dir / "revisions.jsonl", chains)
    write_jsonl(ctx.out_dir / "helpful.jsonl", helpful)
    write_jsonl(ctx.out_dir / "sft.jsonl", sft)
    return StageResult(kind="dataset", metrics={
        "prompts": len(prompts),
        "helpfulPrompts": len(helpful_prompts),
        "revisionRounds": spec.revisions,
        "chains": len(chains),
        "sftRows": len(sft),
        **generated,
    })
