"""Stage `generate-revisions` (SL-CAI data, DESIGN §1 items 1-4).

For each red-team prompt: an initial answer, then `revisions` rounds of critique → revision, each
with a principle drawn at random (seeded per prompt and round, recorded), few-shot examples
prepended. Every round's revision is kept as training data. Helpfulness prompts get
`samplesPerPrompt` sampled answers, mixed into the SFT data.

Outputs: `revisions.jsonl` (full chains), `helpful.jsonl` (helpful samples) and `sft.jsonl` (chat
messages ready for SFTTrainer). Work proceeds in chunks saved to the work dir, so an interrupted
stage resumes at the first unfinished chunk.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..constitution.critique import (
    critique_conversation,
    few_shot_turns,
    revision_conversation,
    round_principle,
)
from ..constitution.sampling import stable_seed
from ..data.prompts import PromptSourceError, load_prompts
from ..models.backends import SamplingParams, load_backend
from .runtime import StageContext, StageError, StageResult

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


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _cached_chunk(path: Path) -> list[dict[str, Any]] | None:
    if not path.exists():
        return None
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _save_chunk(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    tmp.replace(path)


def _critique_chain(backend, const, spec, chunk: list[dict[str, Any]], chunk_index: int, counter: _Counter, progress) -> list[dict[str, Any]]:
    gen = spec.generation
    def params(step: str) -> SamplingParams:
        # A distinct, reproducible seed per chunk and step.
        return SamplingParams(max_new_tokens=gen.max_new_tokens, temperature=gen.temperature, top_p=gen.top_p,
                              seed=stable_seed(spec.seed, chunk_index, step))

    prefix = few_shot_turns(const, spec.few_shot_examples, spec.seed)
    initial = counter.add(backend.chat([[{"role": "user", "content": p["prompt"]}] for p in chunk], params("initial"),
                                       progress=progress.advance))
    rows = [{"id": p["id"], "prompt": p["prompt"], "initialResponse": a[0], "rounds": []} for p, a in zip(chunk, initial)]
    current = [r["initialResponse"] for r in rows]
    for rnd in range(1, spec.revisions + 1):
        principles = [round_principle(const, spec.seed, r["id"], rnd) for r in rows]
        crit_convs = [critique_conversation(prefix, r["prompt"], resp, pr) for r, resp, pr in zip(rows, current, principles)]
        critiques = counter.add(backend.chat(crit_convs, params(f"critique-{rnd}"), progress=progress.advance))
        rev_convs = [revision_conversation(cc, c[0], pr) for cc, c, pr in zip(crit_convs, critiques, principles)]
        revisions = counter.add(backend.chat(rev_convs, params(f"revision-{rnd}"), progress=progress.advance))
        for row, pr, c, r in zip(rows, principles, critiques, revisions):
            row["rounds"].append({
                "round": rnd, "principle": pr.name, "critiqueRequest": pr.critique, "critique": c[0],
                "revisionRequest": pr.revision, "revision": r[0],
            })
        # The next round critiques the latest revision; keep the previous answer if a revision came back empty.
        current = [r[0] or prev for r, prev in zip(revisions, current)]
    return rows


def _helpful_samples(backend, spec, chunk, chunk_index: int, counter: _Counter, progress) -> list[dict[str, Any]]:
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
                rows.append({"messages": [{"role": "user", "content": chain["prompt"]},
                                          {"role": "assistant", "content": rnd["revision"]}],
                             "source": "revision", "id": chain["id"], "round": rnd["round"], "principle": rnd["principle"]})
    for item in helpful:
        for i, resp in enumerate(item["responses"]):
            if resp:
                rows.append({"messages": [{"role": "user", "content": item["prompt"]},
                                          {"role": "assistant", "content": resp}],
                             "source": "helpful", "id": item["id"], "sample": i})
    return rows


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def run(ctx: StageContext) -> StageResult:
    spec = ctx.run_spec
    const = ctx.constitution()
    prompts = _load(spec.prompts, "prompts")
    helpful_prompts = _load(spec.helpful_prompts, "helpfulPrompts") if spec.helpful_prompts else []
    samples = spec.helpful_prompts.samples_per_prompt if spec.helpful_prompts else 0
    gen = spec.generation
    ctx.log(f"{len(prompts)} red-team prompts × {spec.revisions} rounds, {len(helpful_prompts)} helpful prompts × {samples}")
    backend = load_backend(gen.backend, ctx.model("policy"), endpoint=gen.endpoint, batch_size=gen.batch_size)
    counter = _Counter()
    chunk_dir = ctx.work_dir / "chunks"
    total = len(prompts) * (1 + 2 * spec.revisions) + len(helpful_prompts)
    started = time.monotonic()
    chains: list[dict[str, Any]] = []
    helpful: list[dict[str, Any]] = []
    try:
        with ctx.progress("generations", total, "generations") as progress:
            for i, chunk in enumerate(_chunks(prompts, CHUNK)):
                path = chunk_dir / f"red-{i:05d}.jsonl"
                rows = _cached_chunk(path)
                if rows is None:
                    rows = _critique_chain(backend, const, spec, chunk, i, counter, progress)
                    _save_chunk(path, rows)
                else:
                    progress.advance(len(chunk) * (1 + 2 * spec.revisions))
                chains += rows
            for i, chunk in enumerate(_chunks(helpful_prompts, CHUNK)):
                path = chunk_dir / f"helpful-{i:05d}.jsonl"
                rows = _cached_chunk(path)
                if rows is None:
                    rows = _helpful_samples(backend, spec, chunk, i, counter, progress)
                    _save_chunk(path, rows)
                else:
                    progress.advance(len(chunk))
                helpful += rows
    finally:
        backend.close()
    elapsed = time.monotonic() - started
    sft = sft_rows(chains, helpful)
    if not sft:
        raise StageError("every generated revision and helpful sample was empty: nothing to fine-tune on "
                         "(check generation.maxNewTokens and the model)")
    _write_jsonl(ctx.out_dir / "revisions.jsonl", chains)
    _write_jsonl(ctx.out_dir / "helpful.jsonl", helpful)
    _write_jsonl(ctx.out_dir / "sft.jsonl", sft)
    return StageResult(kind="dataset", metrics={
        "prompts": len(prompts),
        "helpfulPrompts": len(helpful_prompts),
        "revisionRounds": spec.revisions,
        "chains": len(chains),
        "sftRows": len(sft),
        "tokensGenerated": counter.completion_tokens,
        "promptTokens": counter.prompt_tokens,
        "tokensPerSecond": round(counter.completion_tokens / elapsed, 2) if elapsed > 0 else 0.0,
        "generationSeconds": round(elapsed, 2),
    })
