"""The one interface every generation backend implements (transformers, vLLM, OpenAI-compatible).

Stages talk only to `Backend`; `cai.models.backends.load_backend` picks the implementation.
Conversations are lists of chat messages ({"role": ..., "content": ...}); the backend owns the
model's chat template so prompts render the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

Message = dict[str, str]
Conversation = list[Message]
# Called with the number of finished items since the last call, for progress bars.
ProgressFn = Callable[[int], None]


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    # Strings that end a completion early (not included in the text).
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int


class OptionTokenError(ValueError):
    """An option label does not map to exactly one token of the feedback model's tokenizer."""


@runtime_checkable
class Backend(Protocol):
    name: str
    model: str  # the model reference it was loaded from

    def render_chat(self, conversation: Conversation, add_generation_prompt: bool = True) -> str:
        """The conversation as the model's chat template renders it (text, special tokens included)."""

    def chat(
        self,
        conversations: Sequence[Conversation],
        params: SamplingParams,
        n: int = 1,
        progress: ProgressFn | None = None,
    ) -> list[list[Completion]]:
        """`n` sampled assistant replies per conversation, in input order."""

    def complete(
        self,
        prompts: Sequence[str],
        params: SamplingParams,
        n: int = 1,
        progress: ProgressFn | None = None,
    ) -> list[list[Completion]]:
        """`n` raw-text continuations per already-rendered prompt (used after `render_chat`)."""

    def score_next_token(
        self,
        prompts: Sequence[str],
        options: Sequence[str],
        progress: ProgressFn | None = None,
    ) -> list[list[float]]:
        """Log-probability of each option as the next token after each rendered prompt.

        One forward pass per prompt (batched), never generation. Every option must be exactly one
        token of this tokenizer, else `OptionTokenError` naming the option (checked before any work).
        Returns unnormalized log-probs (log-softmax over the full vocabulary) in option order.
        """

    def close(self) -> None:
        """Free the engine (GPU memory, worker processes)."""
