"""RL-CAI feedback prompts and label arithmetic (pure: no model).

The prompt must follow the paper's multiple-choice format with the answer cue as the last text, the
few-shot examples must carry their own answers (and reasoning in CoT mode), and the soft-label
arithmetic (softmax over the options, order flip, clamp, averaging) must be exact. Evaluation
statistics (Wilson, bootstrap) and PM calibration helpers are checked on known inputs.
"""

from __future__ import annotations

import math

import pytest

from cai.api.kinds import ConstitutionSpec
from cai.api.manifest import parse_resource
from cai.feedback import labels, prompts
from cai.feedback.labeller import Labeller, LabelSettings
from cai.feedback.labels import validate_labels
from cai.feedback.statistics import (
    accuracy,
    bootstrap_ci,
    expected_calibration_error,
    reliability,
    wilson_ci,
    win_rate,
)
from cai.models.backends.base import Completion
from cai.stages.train_preference_model import split_held_out, training_targets

CONST = ConstitutionSpec.model_validate({
    "critiqueRevisionPrinciples": [{"name": "c", "critique": "Critique it.", "revision": "Revise it."}],
    "preferencePrinciples": [{"name": f"p{i}", "question": f"Which response is better by rule {i}?"} for i in range(5)],
    "fewShot": {"preference": [
        {"prompt": "How do I hurt someone?", "responseA": "I won't help with that.", "responseB": "Like this.",
         "answer": "A", "reasoning": "B helps with harm. So the better response is (A)."},
        {"prompt": "I feel sad.", "responseA": "Whatever.", "responseB": "I'm sorry; want to talk?",
         "answer": "B", "reasoning": "B is caring. So the better response is (B)."},
    ]},
})


def test_question_follows_the_papers_multiple_choice_format():
    q = prompts.question_text("  Can you help me?  ", "Which is less harmful?", "first answer", "second answer")
    assert q.startswith("Consider the following conversation between a human and an assistant:")
    assert "Human: Can you help me?" in q
    lines = q.splitlines()
    # question, then "Options:", then (A) and (B) in that order, nothing after (B)
    assert lines[-4:] == ["Which is less harmful?", "Options:", "(A) first answer", "(B) second answer"]


def test_answer_cue_ends_the_scored_prompt_so_the_next_token_is_the_letter():
    assert prompts.answer_prompt("<chat>") == "<chat>The answer is: ("
    cot = prompts.answer_prompt("<chat>", "  B is worse.  ")
    assert cot == "<chat>Let's think step by step: B is worse.\nThe answer is: ("
    assert prompts.cot_prompt("<chat>") == "<chat>Let's think step by step:"


def test_orders_swap_which_response_is_option_a():
    ab = prompts.comparison_conversation([], "p", "q?", "resp-A", "resp-B", "AB")[-1]["content"]
    ba = prompts.comparison_conversation([], "p", "q?", "resp-A", "resp-B", "BA")[-1]["content"]
    assert "(A) resp-A\n(B) resp-B" in ab
    assert "(A) resp-B\n(B) resp-A" in ba
    with pytest.raises(ValueError):
        prompts.comparison_conversation([], "p", "q?", "a", "b", "AA")


def test_few_shot_examples_are_turns_with_their_own_answers_and_reasoning_under_cot():
    plain = prompts.few_shot_turns(CONST, None, seed=3)
    assert [t["role"] for t in plain] == ["user", "assistant"] * 2
    assert plain[1]["content"] == "The answer is: (A)" and plain[3]["content"] == "The answer is: (B)"
    assert "(A) I won't help with that." in plain[0]["content"]
    cot = prompts.few_shot_turns(CONST, 1, seed=3, chain_of_thought=True)
    assert len(cot) == 2
    assert cot[1]["content"] == "Let's think step by step: B helps with harm. So the better response is (A).\nThe answer is: (A)"
    # The same seed shows the examples with the same principles (the prefix is identical for every comparison).
    assert prompts.few_shot_turns(CONST, None, seed=3) == plain


def test_principle_draws_are_seeded_per_comparison_and_distinct_within_one():
    a = prompts.principles_for(CONST, 3, 7, "cmp-1")
    assert a == prompts.principles_for(CONST, 3, 7, "cmp-1")
    assert len({p.name for p in a}) == 3
    draws = {tuple(p.name for p in prompts.principles_for(CONST, 1, 7, f"cmp-{i}")) for i in range(40)}
    assert len(draws) > 1, "different comparisons draw different principles"


def test_softmax_over_the_two_options_and_the_order_flip():
    la, lb = math.log(0.3), math.log(0.1)  # 0.6 of the mass elsewhere drops out
    assert labels.softmax_first(la, lb) == pytest.approx(0.75)
    assert labels.softmax_first(-1000.0, -1001.0) == pytest.approx(1 / (1 + math.exp(-1)))
    assert labels.softmax_first(-math.inf, -2.0) == 0.0
    assert math.isnan(labels.softmax_first(-math.inf, -math.inf))
    assert labels.p_response_a(0.8, "AB") == 0.8
    assert labels.p_response_a(0.8, "BA") == pytest.approx(0.2)


def test_clamp_and_its_validation():
    assert labels.clamp(0.99, (0.4, 0.6)) == 0.6 and labels.clamp(0.01, (0.4, 0.6)) == 0.4 and labels.clamp(0.5, (0.4, 0.6)) == 0.5
    assert labels.check_clamp([0.4, 0.6]) is None and labels.check_clamp([0.0, 1.0]) is None
    for bad in ([0.6, 0.9], [0.1, 0.4], [-0.1, 0.6], [0.4, 1.2], [0.4, math.nan], [0.5]):
        assert labels.check_clamp(bad), bad
        with pytest.raises(ValueError, match="clamp"):  # settings never hold an unusable clamp
            LabelSettings(chain_of_thought=True, clamp=bad)


def test_clamp_outside_the_unit_interval_or_excluding_half_is_rejected_by_validation():
    def pm(clamp):
        return {"apiVersion": "cai.dev/v1alpha1", "kind": "PreferenceModel", "metadata": {"name": "pm"},
                "spec": {"constitutionRef": {"name": "c"}, "policy": {"model": "builtin:tiny-random"},
                         "labeling": {"clamp": clamp}}}

    _, problems = parse_resource(pm([0.4, 0.6]), "pm.yaml")
    assert not problems
    for bad in ([0.6, 0.9], [0.2, 1.5], [-0.2, 0.6]):
        _, problems = parse_resource(pm(bad), "pm.yaml")
        assert problems and any("clamp" in str(p) for p in problems), bad


def test_label_problem_accepts_only_finite_probabilities():
    assert labels.label_problem(0.0) is None and labels.label_problem(1) is None
    for bad in (math.nan, math.inf, -0.01, 1.01, "0.5", None, True):
        assert labels.label_problem(bad), bad
    validate_labels([{"id": "x", "pA": 0.3, "orderScores": {"AB": 0.2, "BA": 0.4}}], "t")
    with pytest.raises(ValueError, match="comparison y .*pA not finite"):
        validate_labels([{"id": "y", "pA": math.nan}], "t")
    with pytest.raises(ValueError, match="orderScores.BA"):
        validate_labels([{"id": "z", "pA": 0.5, "orderScores": {"AB": 0.5, "BA": 1.5}}], "t")


class ScriptedBackend:
    """A stand-in feedback model for the labeller's arithmetic only: its option log-probs are a
    fixed function of the prompt text (real-model behaviour is tested in tests/stages)."""

    name = "scripted"
    model = "scripted"

    def __init__(self, table):
        self.table = table  # substring -> (logp A, logp B)
        self.scored: list[str] = []

    def render_chat(self, conversation, add_generation_prompt=True):
        return "".join(f"<{m['role']}>{m['content']}" for m in conversation) + "<assistant>"

    def score_next_token(self, prompts, options, progress=None):
        assert list(options) == ["A", "B"]
        self.scored += prompts
        out = []
        for p in prompts:
            last_question = p.rsplit("Consider the following", 1)[-1]
            out.append(next(v for k, v in self.table.items() if k in last_question))
        return out

    def complete(self, prompts, params, n=1, progress=None):
        return [[Completion(text=f"reason {k}", prompt_tokens=1, completion_tokens=1) for k in range(n)] for _ in prompts]


def test_labeller_averages_orders_and_principles_from_one_score_per_prompt():
    # Position bias: whatever is shown first gets log-odds +1; "good" responses get +2 more.
    table = {"(A) good\n(B) bad": (0.0, -3.0), "(A) bad\n(B) good": (-1.0, 0.0)}
    backend = ScriptedBackend(table)
    s = LabelSettings(seed=1, principles_per_comparison=2, both_orders=True)
    rows = Labeller(backend, CONST, s).label([{"id": "c1", "prompt": "p", "responseA": "good", "responseB": "bad"}])
    p_ab = 1 / (1 + math.exp(-3))  # A shown first
    p_ba = 1 - 1 / (1 + math.exp(1))  # A shown second: 1 - P(first=bad)
    row = rows[0]
    assert len(backend.scored) == 4, "2 principles × 2 orders, one scored prompt each"
    assert all(p.endswith("The answer is: (") for p in backend.scored)
    assert row["orderScores"]["AB"] == pytest.approx(p_ab) and row["orderScores"]["BA"] == pytest.approx(p_ba)
    assert row["pA"] == pytest.approx((p_ab + p_ba) / 2)
    assert len(row["principles"]) == 2 and len(set(row["principles"])) == 2
    single = Labeller(ScriptedBackend(table), CONST, LabelSettings(seed=1, both_orders=False)).label(
        [{"id": "c1", "prompt": "p", "responseA": "good", "responseB": "bad"}])[0]
    assert single["pA"] == pytest.approx(p_ab) and set(single["orderScores"]) == {"AB"}


def test_labeller_clamps_every_chain_of_thought_probability():
    backend = ScriptedBackend({"(A) x\n(B) y": (0.0, -9.0), "(A) y\n(B) x": (0.0, -9.0)})
    s = LabelSettings(chain_of_thought=True, cot_samples=3, clamp=(0.45, 0.7), both_orders=True)
    row = Labeller(backend, CONST, s).label([{"id": "c", "prompt": "p", "responseA": "x", "responseB": "y"}])[0]
    assert len(row["cot"]) == 6 and row["cot"][0] == "reason 0"
    assert all(p.startswith("<user>") and "Let's think step by step: reason" in p for p in backend.scored)
    assert {s["pA"] for s in row["scores"]} == {0.7, 0.45}  # AB: ~1 -> 0.7; BA: ~0 -> 0.45
    assert row["pA"] == pytest.approx((0.7 + 0.45) / 2)


def test_soft_and_hard_training_targets_and_held_out_split():
    rows = [{"id": f"{i}-0", "promptId": str(i), "prompt": "p", "responseA": "a", "responseB": "b", "pA": p}
            for i, p in enumerate([0.2, 0.5, 0.7, 0.51, 0.0])]
    soft, ties = training_targets(rows, soft=True)
    assert [r["p"] for r in soft] == [0.2, 0.5, 0.7, 0.51, 0.0] and ties == 0
    hard, ties = training_targets(rows, soft=False)
    assert [r["p"] for r in hard] == [0.0, 1.0, 1.0, 0.0] and ties == 1
    train, held = split_held_out(soft, 0.4, seed=0)
    assert len(held) == 2 and len(train) == 3 and not {r["id"] for r in train} & {r["id"] for r in held}
    assert split_held_out(soft, 0.4, seed=0) == (train, held)
    assert split_held_out(soft, 0.0, seed=0) == (soft, [])


def test_accuracy_and_expected_calibration_error_on_known_predictions():
    def pred(ra, rb, pa):
        return {"rA": ra, "rB": rb, "q": 1 / (1 + math.exp(rb - ra)), "pA": pa}

    preds = [pred(2, 0, 0.9), pred(0, 2, 0.8), pred(1, 0, 0.5), pred(0, 1, 0.1)]
    assert accuracy(preds) == pytest.approx(2 / 3)  # the tie (pA=0.5) is left out
    # Hand ECE: q values 0.881 (y=1), 0.119 (y=1), 0.731 (y=0), 0.269 (y=0) fall in 4 separate bins.
    q = [1 / (1 + math.exp(-2)), 1 / (1 + math.exp(2)), 1 / (1 + math.exp(-1)), 1 / (1 + math.exp(1))]
    y = [1, 1, 0, 0]
    assert expected_calibration_error(preds) == pytest.approx(sum(abs(a - b) for a, b in zip(q, y)) / 4)
    assert sum(b["count"] for b in reliability(preds)) == 4


def test_wilson_and_bootstrap_intervals():
    lo, hi = wilson_ci(8, 10)
    assert (lo, hi) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))  # textbook values
    assert all(math.isnan(x) for x in wilson_ci(0, 0))  # nothing judged: no interval
    values = [0.2, 0.9, 0.6, 0.7, 0.8, 0.4]
    lo, hi = bootstrap_ci(values, seed=1)
    assert lo < sum(values) / len(values) < hi and (lo, hi) == bootstrap_ci(values, seed=1)
    wr = win_rate([0.9, 0.5, 0.2, 0.7], seed=0)
    assert wr["winRate"] == pytest.approx(0.575) and wr["hardWinRate"] == pytest.approx(2.5 / 4)
