"""AI-feedback prompts: the multiple-choice question a feedback model answers for one comparison,
its few-shot examples, the answer cue and the chain-of-thought cue (docs/design.md, "AI feedback").

Pure text: no model, no backend. `cai.feedback.labeller` renders these conversations through the
feedback model's chat template, appends the cue as the start of the assistant turn and reads the
option tokens' log-probabilities; `cai.feedback.labels` turns those into the soft label.

Prompt of one comparison, as in Bai et al. 2022 §4.1 (our wording of the frame is theirs; the
principle questions are the constitution's)::

    [few-shot examples: user turn = the same frame for a worked example, assistant turn = its answer]
    user:      Consider the following conversation between a human and an assistant:
               Human: <prompt>
               <principle question>
               Options:
               (A) <response shown first>
               (B) <response shown second>
    assistant: The answer is: (          <- the next token is the option letter that gets scored

With chain of thought the assistant turn starts with "Let's think step by step:", the feedback model
writes its reasoning, and the answer cue follows the reasoning.
"""

from __future__ import annotations

from ..api.kinds import ConstitutionSpec, PreferenceExample, PreferencePrinciple
from ..constitution.sampling import draw, draw_many
from ..models.backends.base import Conversation

OPTIONS: tuple[str, str] = ("A", "B")
FRAME = "Consider the following conversation between a human and an assistant:"
# The cue ends with "(" so that the very next token is the bare option letter, which is one token
# in every tokenizer we ship (the backends check this before any work).
ANSWER_CUE = "The answer is: ("
COT_CUE = "Let's think step by step:"
# Orders in which a comparison's two responses are shown: "AB" shows responseA as option (A).
ORDERS: tuple[str, str] = ("AB", "BA")


def question_text(prompt: str, question: str, first: str, second: str) -> str:
    """The user turn of one comparison: conversation, principle question, options (A) and (B)."""
    return (
        f"{FRAME}\n\n"
        f"Human: {prompt.strip()}\n\n"
        f"{question.strip()}\n"
        f"Options:\n"
        f"(A) {first.strip()}\n"
        f"(B) {second.strip()}"
    )


def answer_text(letter: str, reasoning: str | None = None) -> str:
    """A finished assistant answer (few-shot examples): optional reasoning, then the cue and the letter."""
    if reasoning is not None:
        return f"{COT_CUE} {reasoning.strip()}\n{ANSWER_CUE}{letter})"
    return f"{ANSWER_CUE}{letter})"


def few_shot_principles(const: ConstitutionSpec, n: int | None, seed: int) -> list[PreferencePrinciple]:
    """The principle each few-shot example is shown with: drawn once per example (seeded), so every
    comparison of a run sees the same examples — the examples teach the format, not one principle."""
    examples = const.few_shot.preference[: n if n is not None else None]
    return [draw(const.preference_principles, seed, "preference-few-shot", i) for i in range(len(examples))]


def few_shot_turns(
    const: ConstitutionSpec, n: int | None, seed: int, chain_of_thought: bool = False
) -> Conversation:
    """The constitution's worked comparisons as earlier chat turns, each with its own answer
    (and its reasoning when labelling with chain of thought). `n` None means all of them."""
    examples: list[PreferenceExample] = const.few_shot.preference[: n if n is not None else None]
    turns: Conversation = []
    for ex, principle in zip(examples, few_shot_principles(const, n, seed)):
        turns.append(
            {
                "role": "user",
                "content": question_text(ex.prompt, principle.question, ex.response_a, ex.response_b),
            }
        )
        # An example without reasoning still answers in CoT mode: better than dropping the example.
        reasoning = ex.reasoning if chain_of_thought and ex.reasoning.strip() else None
        turns.append({"role": "assistant", "content": answer_text(ex.answer, reasoning)})
    return turns


def comparison_conversation(
    prefix: Conversation, prompt: str, question: str, response_a: str, response_b: str, order: str
) -> Conversation:
    """Few-shot turns plus the comparison's question, with the responses shown in `order`."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    first, second = (response_a, response_b) if order == "AB" else (response_b, response_a)
    return [*prefix, {"role": "user", "content": question_text(prompt, question, first, second)}]


def answer_prompt(rendered: str, reasoning: str | None = None) -> str:
    """The scored text: the rendered chat (ending with an open assistant turn), optionally the CoT
    cue and reasoning, then the answer cue. The next token after it is the option letter."""
    if reasoning is None:
        return rendered + ANSWER_CUE
    return f"{rendered}{COT_CUE} {reasoning.strip()}\n{ANSWER_CUE}"


def cot_prompt(rendered: str) -> str:
    """Where the feedback model starts writing its reasoning."""
    return rendered + COT_CUE


def principles_for(
    const: ConstitutionSpec, k: int, seed: int, comparison_id: str
) -> list[PreferencePrinciple]:
    """The k principles a comparison is labelled with (paper: one at random per comparison)."""
    return draw_many(const.preference_principles, k, seed, "preference", comparison_id)
