"""The AI-feedback labeller: comparisons in, soft labels out (docs/design.md, "AI feedback").

Shared by stage `label-preferences` (labels for the preference model), stage `evaluate` (pairwise
win rates of start / SL-CAI / RL-CAI models) and `bench/labeling.py`. It talks only to the
`Backend` protocol, so the same code runs on transformers, vLLM (prompt logprobs) and any
OpenAI-compatible server (completions with logprobs); no torch import here.

For each comparison: k principles are drawn (seeded by the comparison id, recorded), each is asked
in one or both option orders, and each resulting prompt is scored with ONE forward pass that reads
the log-probabilities of the option tokens "A" and "B" right after the answer cue. The soft label
of a prompt is the softmax over those two log-probs; the order flip turns it into P(responseA is
better); CoT probabilities are clamped; everything is averaged into `pA`. Text is never generated
and parsed to get a label (only the CoT reasoning itself is generated). The prompts' shared prefix
(system turn, few-shot examples) is computed once per call by every backend (prefix caching).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..api.kinds import ConstitutionSpec, LabelingSpec, PreferencePrinciple
from ..constitution.sampling import draw_many, stable_seed
from ..models.backends import OptionTokenError, load_backend
from ..models.backends.base import Backend, ProgressFn, SamplingParams
from . import labels
from . import prompts as fb

# Where a chain of thought ends: the model starting its own answer line (we append ours).
COT_STOP = ("The answer is",)


@dataclass(frozen=True)
class LabelSettings:
    """How comparisons are labelled (the run-independent part of `LabelingSpec`, plus the seed)."""

    seed: int = 0
    principles_per_comparison: int = 1
    both_orders: bool = True
    chain_of_thought: bool = False
    cot_samples: int = 1
    clamp: tuple[float, float] = (0.4, 0.6)
    few_shot_examples: int | None = None
    cot_max_new_tokens: int = 128
    cot_temperature: float = 1.0

    def __post_init__(self) -> None:
        problem = labels.check_clamp(self.clamp)
        if problem:
            raise ValueError(problem)

    @classmethod
    def from_spec(cls, labeling: LabelingSpec, seed: int) -> LabelSettings:
        return cls(
            seed=seed,
            principles_per_comparison=labeling.principles_per_comparison,
            both_orders=labeling.both_orders,
            chain_of_thought=labeling.chain_of_thought,
            cot_samples=labeling.cot_samples if labeling.chain_of_thought else 1,
            clamp=(float(labeling.clamp[0]), float(labeling.clamp[1])),
            few_shot_examples=labeling.few_shot_examples,
            cot_max_new_tokens=labeling.cot_max_new_tokens,
            cot_temperature=labeling.cot_temperature,
        )

    @property
    def orders(self) -> tuple[str, ...]:
        return fb.ORDERS if self.both_orders else fb.ORDERS[:1]

    @property
    def prompts_per_comparison(self) -> int:
        """Scored prompts (forward passes) per comparison."""
        return self.principles_per_comparison * len(self.orders) * self.cot_samples


@dataclass(frozen=True)
class _Job:
    """One scored prompt: comparison index, principle slot, order, CoT sample."""

    index: int
    slot: int
    order: str
    sample: int
    prompt: str  # rendered chat ending with an open assistant turn (no cue yet)


class LabellerError(ValueError):
    """The feedback model cannot label (the message names it and says why; stages show it as is)."""


class Labeller:
    """Labels comparisons `{"id", "prompt", "responseA", "responseB", ...}` with a feedback backend.

    `principles` overrides the constitution's preference principles (evaluation asks a
    helpfulness question with the same machinery).
    """

    def __init__(self, backend: Backend, const: ConstitutionSpec, settings: LabelSettings,
                 principles: Sequence[PreferencePrinciple] | None = None) -> None:
        self.backend = backend
        self.const = const
        self.settings = settings
        self.principles = list(principles) if principles is not None else list(const.preference_principles)
        if not self.principles:
            raise ValueError("no preference principles to label with")
        self.prefix = fb.few_shot_turns(
            const, settings.few_shot_examples, settings.seed, settings.chain_of_thought
        )

    # ------------------------------------------------------------------ prompts

    def principles_for(self, comparison_id: str) -> list[PreferencePrinciple]:
        return draw_many(self.principles, self.settings.principles_per_comparison, self.settings.seed,
                            "preference", comparison_id)

    def rendered(self, comparison: dict[str, Any], principle: PreferencePrinciple, order: str) -> str:
        conv = fb.comparison_conversation(self.prefix, comparison["prompt"], principle.question,
                                          comparison["responseA"], comparison["responseB"], order)
        return self.backend.render_chat(conv, add_generation_prompt=True)

    def check(self, comparison: dict[str, Any]) -> None:
        """Score one real prompt: fails fast (OptionTokenError, missing chat template, too long for
        the model) before any bulk work."""
        principle = self.principles_for(str(comparison["id"]))[0]
        prompt = fb.answer_prompt(self.rendered(comparison, principle, "AB"),
                                  "" if self.settings.chain_of_thought else None)
        self.backend.score_next_token([prompt], fb.OPTIONS)

    # ------------------------------------------------------------------ labelling

    def label(
        self, comparisons: Sequence[dict[str, Any]], progress: ProgressFn | None = None
    ) -> list[dict[str, Any]]:
        """One output row per comparison, in order: the input fields plus `principles`, `pA`,
        `orderScores` (P(responseA better) as read in each order), `scores` (every scored prompt)
        and, with chain of thought, `cot` (the reasoning texts)."""
        s = self.settings
        if not comparisons:
            return []
        drawn = [self.principles_for(str(c["id"])) for c in comparisons]
        jobs: list[_Job] = []
        for i, (c, principles) in enumerate(zip(comparisons, drawn)):
            for slot, principle in enumerate(principles):
                for order in s.orders:
                    rendered = self.rendered(c, principle, order)
                    for sample in range(s.cot_samples):
                        jobs.append(_Job(i, slot, order, sample, rendered))

        reasoning: list[str | None] = [None] * len(jobs)
        if s.chain_of_thought:
            reasoning = self._reasonings(jobs, comparisons, progress)
        prompts = [fb.answer_prompt(j.prompt, r) for j, r in zip(jobs, reasoning)]
        logps = self.backend.score_next_token(prompts, fb.OPTIONS, progress=progress)

        rows: list[dict[str, Any]] = []
        per_comparison: list[list[tuple[_Job, float, float, str | None]]] = [[] for _ in comparisons]
        for job, (lp_a, lp_b), text in zip(jobs, logps, reasoning):
            p_first = labels.softmax_first(lp_a, lp_b)
            p_a = labels.p_response_a(p_first, job.order)
            if s.chain_of_thought:
                p_a = labels.clamp(p_a, s.clamp)
            per_comparison[job.index].append((job, p_first, p_a, text))
        for c, principles, scored in zip(comparisons, drawn, per_comparison):
            order_scores = {o: labels.mean([p for j, _, p, _ in scored if j.order == o]) for o in s.orders}
            # Averaging per order first, then over orders, weighs both orders equally.
            row = {
                **c,
                "principles": [p.name for p in principles],
                "pA": labels.mean(list(order_scores.values())),
                "orderScores": order_scores,
                "scores": [
                    {"principle": principles[j.slot].name, "order": j.order, "sample": j.sample,
                     "pFirst": p_first, "pA": p_a}
                    for j, p_first, p_a, _ in scored
                ],
            }
            if s.chain_of_thought:
                row["cot"] = [t or "" for _, _, _, t in scored]
            rows.append(row)
        return rows

    def _reasonings(self, jobs: list[_Job], comparisons: Sequence[dict[str, Any]],
                    progress: ProgressFn | None) -> list[str | None]:
        """Sample the chains of thought: `cot_samples` per (comparison, principle, order) prompt,
        seeded by the batch's first comparison id so a resumed chunk samples the same texts."""
        s = self.settings
        # Samples of one prompt are generated together with n=cot_samples.
        heads = [j for j in jobs if j.sample == 0]
        params = SamplingParams(
            max_new_tokens=s.cot_max_new_tokens, temperature=s.cot_temperature, top_p=1.0,
            seed=stable_seed(s.seed, "cot", comparisons[0]["id"], len(comparisons)), stop=COT_STOP,
        )
        outs = self.backend.complete([fb.cot_prompt(j.prompt) for j in heads], params, n=s.cot_samples)
        texts: dict[tuple[int, int, str, int], str] = {}
        for head, samples in zip(heads, outs):
            for k, completion in enumerate(samples):
                texts[(head.index, head.slot, head.order, k)] = completion.text.strip()
        return [texts[(j.index, j.slot, j.order, j.sample)] for j in jobs]


def open_labeller(kind: str, model: str, endpoint: str | None, batch_size: int, const: ConstitutionSpec,
                  settings: LabelSettings, first: dict[str, Any],
                  principles: Sequence[PreferencePrinciple] | None = None) -> Labeller:
    """Load the feedback backend and score one real prompt, turning every way it can be unusable
    into a `LabellerError` that names the model (before any bulk work)."""
    try:
        backend = load_backend(kind, model, endpoint=endpoint, batch_size=batch_size)
    except ValueError as e:
        raise LabellerError(f"feedback model {model}: {e}") from None
    try:
        labeller = Labeller(backend, const, settings, principles=principles)
        labeller.check(first)
    except OptionTokenError as e:
        backend.close()
        raise LabellerError(
            f"feedback model {model} cannot be used as a labeller: {e}. The labeller reads the "
            f"log-probabilities of the option letters {' and '.join(fb.OPTIONS)}, which must each be "
            "one token of its tokenizer."
        ) from None
    except ValueError as e:  # no chat template, prompt longer than the model's context, bad clamp
        backend.close()
        raise LabellerError(f"feedback model {model} cannot label: {e}") from None
    return labeller
