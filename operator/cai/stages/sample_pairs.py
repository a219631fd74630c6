"""Stage `sample-pairs` (RL-CAI, DESIGN §1 item 6): response pairs from the policy.

For each prompt, `pairsPerPrompt` pairs = 2·pairsPerPrompt independent samples at the spec's
temperature (paper: 2 responses per prompt from the SL-CAI model), generated in batches through the
generation backend. Output `pairs.jsonl`: `{id, promptId, prompt, responseA, responseB}`, the
input of `label-preferences`. Chunks are checkpointed in the work dir, so an interrupted stage
resumes at the first unfinished chunk.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..constitution.sampling import stable_seed
from ..data.prompts import PromptSourceError, load_prompts
from ..models.backends import SamplingParams, load_backend
from .runtime import StageContext, StageError, StageResult

CHUNK = 64


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write atomically (tmp + rename): a chunk file either is complete or does not exist."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    tmp.replace(path)


def pair_rows(chunk: list[dict[str, Any]], samples: list[list[str]], pairs_per_prompt: int) -> list[dict[str, Any]]:
    """Consecutive samples of a prompt become its pairs: (s0, s1), (s2, s3), ..."""
    rows = []
    for p, texts in zip(chunk, samples):
        for j in range(pairs_per_prompt):
            rows.append({"id": f"{p['id']}-{j}", "promptId": p["id"], "prompt": p["prompt"],
                         "responseA": texts[2 * j], "responseB": texts[2 * j + 1]})
    return rows


def run(ctx: StageContext) -> StageResult:
    spec = ctx.run_spec
    gen = spec.generation
    try:
        prompts = load_prompts(spec.prompts.source, spec.prompts.limit, spec.prompts.split)
    except PromptSourceError as e:
        raise StageError(f"spec.prompts.source: {e}") from None
    n = 2 * spec.pairs_per_prompt
    policy = ctx.model("policy")
    ctx.log(f"{len(prompts)} prompts × {spec.pairs_per_prompt} pair(s) from {policy} at T={gen.temperature}")
    backend = load_backend(gen.backend, policy, endpoint=gen.endpoint, batch_size=gen.batch_size)
    chunk_dir = ctx.work_dir / "chunks"
    rows: list[dict[str, Any]] = []
    tokens = 0
    started = time.monotonic()
    try:
        with ctx.progress("pairs", len(prompts), "prompts") as progress:
            for i in range(0, len(prompts), CHUNK):
                chunk = prompts[i:i + CHUNK]
                path = chunk_dir / f"pairs-{i // CHUNK:05d}.jsonl"
                if path.exists():
                    rows += _read_jsonl(path)
                    progress.advance(len(chunk))
                    continue
                params = SamplingParams(max_new_tokens=gen.max_new_tokens, temperature=gen.temperature,
                                        top_p=gen.top_p, seed=stable_seed(spec.seed, "pairs", i // CHUNK))
                out = backend.chat([[{"role": "user", "content": p["prompt"]}] for p in chunk], params, n=n,
                                   progress=progress.advance)
                tokens += sum(c.completion_tokens for cs in out for c in cs)
                chunk_rows = pair_rows(chunk, [[c.text.strip() for c in cs] for cs in out], spec.pairs_per_prompt)
                write_jsonl(path, chunk_rows)
                rows += chunk_rows
    finally:
        backend.close()
    elapsed = time.monotonic() - started
    if not rows:
        raise StageError("no response pairs were sampled")
    write_jsonl(ctx.out_dir / "pairs.jsonl", rows)
    return StageResult(kind="dataset", metrics={
        "prompts": len(prompts),
        "pairs": len(rows),
        # Identical or empty responses carry no preference; the labeller gives them ~0.5 with both orders.
        "identicalPairs": sum(r["responseA"] == r["responseB"] for r in rows),
        "emptyResponses": sum((not r["responseA"]) + (not r["responseB"]) for r in rows),
        "tokensGenerated": tokens,
        "tokensPerSecond": round(tokens / elapsed, 2) if elapsed > 0 else 0.0,
        "generationSeconds": round(elapsed, 2),
    })
