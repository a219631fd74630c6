"""Stage `sample-pairs` (RL-CAI, docs/design.md#stages): response pairs from the policy.

For each prompt, `pairsPerPrompt` pairs = 2·pairsPerPrompt independent samples at the spec's
temperature (paper: 2 responses per prompt from the SL-CAI model), generated in batches through the
generation backend. Output `pairs.jsonl`: `{id, promptId, prompt, responseA, responseB}`, the
input of `label-preferences`. Chunks are checkpointed in the work dir, so an interrupted stage
resumes at the first unfinished chunk.
"""

from __future__ import annotations

import time
from typing import Any

from ..api.kinds import PreferenceModelSpec
from ..constitution.sampling import stable_seed
from ..data.prompts import PromptSourceError, load_prompts
from ..models.backends import SamplingParams, load_backend
from ..store import checkpointed, write_jsonl
from .runtime import OnFirstUse, StageContext, StageError, StageResult

CHUNK = 64


def pair_rows(
    chunk: list[dict[str, Any]], samples: list[list[str]], pairs_per_prompt: int
) -> list[dict[str, Any]]:
    """Consecutive samples of a prompt become its pairs: (s0, s1), (s2, s3), ..."""
    rows = []
    for p, texts in zip(chunk, samples):
        for j in range(pairs_per_prompt):
            rows.append({"id": f"{p['id']}-{j}", "promptId": p["id"], "prompt": p["prompt"],
                         "responseA": texts[2 * j], "responseB": texts[2 * j + 1]})
    return rows


def run(ctx: StageContext[PreferenceModelSpec]) -> StageResult:
    spec = ctx.spec
    gen = spec.generation
    try:
        prompts = load_prompts(spec.prompts.source, spec.prompts.limit, spec.prompts.split)
    except PromptSourceError as e:
        raise StageError(f"spec.prompts.source: {e}") from None
    n = 2 * spec.pairs_per_prompt
    policy = ctx.model("policy")
    ctx.log(f"{len(prompts)} prompts × {spec.pairs_per_prompt} pair(s) from {policy} at T={gen.temperature}")
    backend = OnFirstUse(
        lambda: load_backend(gen.backend, policy, endpoint=gen.endpoint, batch_size=gen.batch_size),
        lambda b: b.close(),
    )
    tokens = 0

    def sample(chunk: list[dict[str, Any]], index: int) -> list[dict[str, Any]]:
        nonlocal tokens
        params = SamplingParams(max_new_tokens=gen.max_new_tokens, temperature=gen.temperature,
                                top_p=gen.top_p, seed=stable_seed(spec.seed, "pairs", index))
        out = backend.get().chat([[{"role": "user", "content": p["prompt"]}] for p in chunk], params, n=n,
                           progress=progress.advance)
        tokens += sum(c.completion_tokens for cs in out for c in cs)
        return pair_rows(chunk, [[c.text.strip() for c in cs] for cs in out], spec.pairs_per_prompt)

    started = time.monotonic()
    try:
        with ctx.progress("pairs", len(prompts), "prompts") as progress:
            rows = checkpointed(prompts, CHUNK, ctx.work_dir / "chunks", "pairs", sample,
                                skipped=lambda chunk: progress.advance(len(chunk)), saved=ctx.keep,
                                shard=ctx.shard)
    finally:
        backend.close()
    elapsed = time.monotonic() - started
    generated = {"tokensGenerated": tokens,
                 "tokensPerSecond": round(tokens / elapsed, 2) if elapsed > 0 else 0.0,
                 "generationSeconds": round(elapsed, 2)}
    if ctx.shard is not None:
        return ctx.shard_result(**generated)
    if not rows:
        raise StageError("no response pairs were sampled")
    write_jsonl(ctx.out_dir / "pairs.jsonl", rows)
    return StageResult(kind="dataset", metrics={
        "prompts": len(prompts),
        "pairs": len(rows),
        # Identical or empty responses carry no preference; the labeller gives them ~0.5 with both orders.
        "identicalPairs": sum(r["responseA"] == r["responseB"] for r in rows),
        "emptyResponses": sum((not r["responseA"]) + (not r["responseB"]) for r in rows),
        **generated,
    })
