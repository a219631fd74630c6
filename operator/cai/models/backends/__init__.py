"""Generation backends behind one interface (see `base.Backend`); `load_backend` chooses one.

`auto` prefers vLLM when it imports and a usable device exists, else transformers. The `openai`
backend talks to any OpenAI-compatible server and needs `endpoint`.
"""

from __future__ import annotations

from .base import Backend, Completion, Conversation, OptionTokenError, SamplingParams

__all__ = ["Backend", "Completion", "Conversation", "OptionTokenError", "SamplingParams", "load_backend"]

BACKENDS = ("auto", "transformers", "vllm", "openai")
