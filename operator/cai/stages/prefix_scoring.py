"""Shared-prefix option scoring for the transformers backend: the labeller's fast path.

Every labelling prompt of a run starts with the same tokens — the chat template's system turn, the
Constitution's few-shot examples and the opening of the multiple-choice frame — often two thirds of
the prompt. vLLM and OpenAI-compatible servers reuse that prefix automatically (prefix caching);
this module gives the in-process transformers backend the same: the common token prefix is run
ONCE, its key/value cache is repeated across the batch, and each prompt then runs only its own
suffix. The result is the same one-forward-pass-per-prompt quantity `Backend.score_next_token`
defines (log-softmax over the vocabulary at the next position, at each option's token), equal to it
up to float rounding; tests compare the two.

It reads the backend's loaded model and tokenizer (`lm`, `tokenizer`, `option_token_ids`), so it
applies only to `cai.models.backends.hf.TransformersBackend`; `score_options` falls back to the
backend's own `score_next_token` for any other backend or when the prompts share too little.
torch is imported inside functions (this package's modules import it only when a stage runs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

# Below this many shared tokens the cache bookkeeping is not worth it.
MIN_SHARED_TOKENS = 32


def common_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    if not rows:
        return 0
    first = rows[0]
    n = min(len(r) for r in rows)
    for row in rows[1:]:
        k = 0
        while k < n and row[k] == first[k]:
            k += 1
        n = k
    return n


def _usable(backend: Any) -> bool:
    return getattr(backend, "name", None) == "transformers" and all(
        hasattr(backend, a) for a in ("lm", "tokenizer", "option_token_ids", "batch_size"))


def score_options(backend: Any, prompts: Sequence[str], options: Sequence[str],
                  progress: Callable[[int], None] | None = None) -> list[list[float]]:
    """Option log-probs after each prompt: shared-prefix path on transformers, else the backend's own."""
    if not _usable(backend) or len(prompts) < 2:
        return backend.score_next_token(prompts, options, progress=progress)
    encoded = backend.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    shared = common_prefix_length(encoded)
    # Every prompt keeps at least one token of its own: its last position produces the scores.
    shared = min(shared, min(len(r) for r in encoded) - 1)
    if shared < MIN_SHARED_TOKENS:
        return backend.score_next_token(prompts, options, progress=progress)
    max_positions = getattr(backend, "max_positions", None)
    if max_positions and max(len(r) for r in encoded) >= max_positions:
        return backend.score_next_token(prompts, options, progress=progress)  # it raises the clear error
    return _score_shared(backend, encoded, shared, backend.option_token_ids(options), progress)


def _score_shared(backend: Any, encoded: list[list[int]], shared: int, option_ids: list[int],
                  progress: Callable[[int], None] | None) -> list[list[float]]:
    import copy

    import torch

    lm, device = backend.lm, backend.device
    pad = backend.tokenizer.pad_token_id
    scores: list[list[float]] = [[] for _ in encoded]
    ids = torch.tensor(option_ids, device=device)
    with torch.inference_mode():
        prefix = torch.tensor([encoded[0][:shared]], device=device)
        prefix_cache = lm(input_ids=prefix, use_cache=True, logits_to_keep=1).past_key_values
        # Longest suffixes first, in batches of the backend's size (little padding per batch).
        order = sorted(range(len(encoded)), key=lambda k: (-len(encoded[k]), k))
        for start in range(0, len(order), backend.batch_size):
            batch = order[start:start + backend.batch_size]
            suffixes = [encoded[k][shared:] for k in batch]
            width = max(len(s) for s in suffixes)
            # Right padding: the pads come after every real token, so causal attention never lets a
            # real token see them, and positions continue from the prefix without a shift.
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long, device=device)
            mask = torch.zeros((len(batch), shared + width), dtype=torch.long, device=device)
            mask[:, :shared] = 1
            for row, s in enumerate(suffixes):
                input_ids[row, :len(s)] = torch.tensor(s, device=device)
                mask[row, shared:shared + len(s)] = 1
            positions = (torch.arange(width, device=device) + shared).expand(len(batch), width)
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(len(batch))
            last = torch.tensor([len(s) - 1 for s in suffixes], device=device)
            keep = torch.unique(last)  # logits only at the positions some row ends on
            logits = lm(input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                        use_cache=True, logits_to_keep=keep).logits
            column = torch.searchsorted(keep, last)
            rows = logits[torch.arange(len(batch), device=device), column].float()
            logprobs = torch.log_softmax(rows, dim=-1)[:, ids].tolist()
            for k, row in zip(batch, logprobs):
                scores[k] = row
            if progress:
                progress(len(batch))
    return scores
