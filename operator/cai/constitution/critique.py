"""SL-CAI conversations: critique requests and revision requests with few-shot examples prepended.

Each round re-renders a bounded conversation — few-shot turns, the red-team prompt, the current
response, the critique request (→ critique), then the revision request (→ revision) — instead of
growing one conversation over all rounds, so prompt length stays flat on small context windows.
"""

from __future__ import annotations

from ..api.kinds import ConstitutionSpec, CritiqueRevisionExample, CritiqueRevisionPrinciple
from .sampling import draw

Conversation = list[dict[str, str]]


def _turn(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def few_shot_turns(const: ConstitutionSpec, n: int | None, seed: int) -> Conversation:
    """Worked critique→revision examples as earlier turns of the conversation."""
    examples: list[CritiqueRevisionExample] = const.few_shot.critique_revision[: n if n is not None else None]
    turns: Conversation = []
    for i, ex in enumerate(examples):
        principle = draw(const.critique_revision_principles, seed, "few-shot", i)
        turns += [
            _turn("user", ex.prompt),
            _turn("assistant", ex.response),
            _turn("user", principle.critique),
            _turn("assistant", ex.critique),
            _turn("user", principle.revision),
            _turn("assistant", ex.revision),
        ]
    return turns


def critique_conversation(
    prefix: Conversation, prompt: str, response: str, principle: CritiqueRevisionPrinciple
) -> Conversation:
    return [*prefix, _turn("user", prompt), _turn("assistant", response), _turn("user", principle.critique)]


def revision_conversation(
    critique_conv: Conversation, critique: str, principle: CritiqueRevisionPrinciple
) -> Conversation:
    return [*critique_conv, _turn("assistant", critique), _turn("user", principle.revision)]


def round_principle(
    const: ConstitutionSpec, seed: int, prompt_id: str, round_index: int
) -> CritiqueRevisionPrinciple:
    return draw(const.critique_revision_principles, seed, "critique", prompt_id, round_index)
