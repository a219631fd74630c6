"""Which single token stands for an option label ("A", "B") when a backend scores the next token.

Shared by the vLLM and OpenAI-compatible backends (`vllm_backend`, `openai_backend`) so every
backend scores the same token for the same label; the rule is the one
`hf.TransformersBackend.option_token_ids` applies, and `tests/stages/test_vllm_backend.py`
checks that the two agree. Needs only a Hugging Face tokenizer object (no torch).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cai.models.backends.base import OptionTokenError


def single_token_id(tokenizer: Any, option: str, model: str) -> int:
    """The token id for `option`: its own text if that is one token, else the spaced form " A".

    The bare label wins because few-shot answers and "The answer is: (A)" style prompts put the
    letter right after punctuation; the spaced form covers tokenizers where a bare capital letter
    splits. A round trip through `decode` guards against normalising tokenizers that would map the
    form to a token meaning something else.
    """
    if not option:
        raise OptionTokenError("an option is the empty string")
    forms = [option] if option.startswith(" ") else [option, " " + option]
    for form in forms:
        ids = tokenizer.encode(form, add_special_tokens=False)
        if len(ids) == 1 and tokenizer.decode(ids) == form:
            return int(ids[0])
    tried = " or ".join(repr(f) for f in forms)
    raise OptionTokenError(f"option {option!r} is not a single token of {model}'s tokenizer (tried {tried})")


def option_token_ids(tokenizer: Any, options: Sequence[str], model: str,
                     cache: dict[str, int] | None = None) -> list[int]:
    """One token id per option, in order; `OptionTokenError` for a multi-token option or when two
    different options map to the same token (their scores would be indistinguishable)."""
    ids: list[int] = []
    for option in options:
        if cache is not None and option in cache:
            ids.append(cache[option])
            continue
        tid = single_token_id(tokenizer, option, model)
        if cache is not None:
            cache[option] = tid
        ids.append(tid)
    seen: dict[int, str] = {}
    for option, tid in zip(options, ids):
        if tid in seen and seen[tid] != option:
            raise OptionTokenError(f"options {seen[tid]!r} and {option!r} are the same token ({tid})")
        seen[tid] = option
    return ids
