"""Generation backends behind one interface (see `base.Backend`); `load_backend` chooses one.

`auto` prefers vLLM when it imports and a usable device exists, else transformers. The `openai`
backend talks to any OpenAI-compatible server and needs `endpoint`.
"""

from __future__ import annotations

from typing import get_args

from ...api.common import BackendKind
from .base import Backend, Completion, Conversation, OptionTokenError, SamplingParams

__all__ = [
    "BACKENDS", "Backend", "Completion", "Conversation", "OptionTokenError", "SamplingParams", "load_backend",
    "resolve_kind",
]

BACKENDS: tuple[str, ...] = get_args(BackendKind)  # the values `generation.backend` accepts

# kind -> module in this package exposing `create(model, *, endpoint, batch_size, dtype)`.
_MODULES = {"transformers": "hf", "vllm": "vllm_backend", "openai": "openai_backend"}


def _vllm_usable() -> bool:
    """vLLM is the `auto` choice only with a CUDA device: on CPU its engine start-up (tens of
    seconds) outweighs its speed-up for the small batches a CPU can take."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


def resolve_kind(kind: str, endpoint: str | None = None) -> str:
    """The concrete backend `load_backend` would use for `kind` (never `auto`)."""
    if kind not in BACKENDS:
        raise ValueError(f"unknown backend {kind!r}; choose one of: {', '.join(BACKENDS)}")
    if kind == "openai" and not endpoint:
        raise ValueError("the openai backend needs an endpoint (the base URL of an OpenAI-compatible server)")
    if kind == "auto":
        # `auto` never picks openai: talking to a server is an explicit choice.
        return "vllm" if _vllm_usable() else "transformers"
    return kind


def load_backend(
    kind: str,
    model: str,
    *,
    endpoint: str | None = None,
    batch_size: int = 16,
    dtype: str = "auto",
) -> Backend:
    """Create the backend `kind` (one of BACKENDS) for model reference `model`.

    The implementation module is imported only here, so importing this package costs nothing
    and a missing optional dependency (vllm, openai) fails only when that backend is asked for.
    """
    import importlib

    concrete = resolve_kind(kind, endpoint)
    module = importlib.import_module(f"{__name__}.{_MODULES[concrete]}")
    return module.create(model, endpoint=endpoint, batch_size=batch_size, dtype=dtype)
