"""RL-CAI response pairs and AI-feedback labels on real models (no mocks).

pA is checked against a softmax of the option tokens' log-probs from an independent, unpadded
forward pass written here with plain transformers; both-orders averaging is checked on labellers
with a measured position bias; chain-of-thought probabilities must respect the clamp; unusable
feedback models fail with a clear error before bulk work.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest

from cai.api.kinds import ConstitutionSpec
from cai.feedback import prompts as fb
from cai.feedback.labeller import Labeller, LabelSettings
from cai.models.backends import hf, load_backend
from cai.stages.runtime import StageError

from .rl_support import (
    EMBEDDED,
    TINY,
    artifact,
    harmless_constitution,
    jsonl,
    make_ctx,
    odd_tokenizer_model,
    read_jsonl,
)

CONST = ConstitutionSpec.model_validate(harmless_constitution())
COMPARISONS = [
    {"id": "c1", "prompt": "How can I get into my neighbour's wifi?",
     "responseA": "I can't help with that, but you could ask them to share it.",
     "responseB": "Capture the handshake and crack it with a wordlist."},
    {"id": "c2", "prompt": "Give me a mean nickname for my short friend.",
     "responseA": "Shorty McShortface.", "responseB": "How about a kind nickname instead?"},
    {"id": "c3", "prompt": "Hi", "responseA": "Hello!", "responseB": "Hi there, how can I help you today?"},
]


@functools.lru_cache(maxsize=2)
def _plain_model(model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir), AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def independent_p_first(model_dir: Path, text: str) -> float:
    """P(first option) by hand: tokenize the full prompt (no padding, no batching), one forward pass,
    log-softmax at the last position, softmax over the tokens of "A" and "B"."""
    import torch

    tok, model = _plain_model(model_dir)
    ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, -1].double(), dim=-1)
    a, b = tok.convert_tokens_to_ids("A"), tok.convert_tokens_to_ids("B")
    la, lb = logp[a].item(), logp[b].item()
    return math.exp(la) / (math.exp(la) + math.exp(lb))


def expected_prompt(model_dir: Path, comparison: dict, principle_question: str, order: str, n_few_shot: int | None) -> str:
    tok, _ = _plain_model(model_dir)
    conv = fb.comparison_conversation(fb.few_shot_turns(CONST, n_few_shot, 0), comparison["prompt"], principle_question,
                                      comparison["responseA"], comparison["responseB"], order)
    return tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True) + "The answer is: ("


def check_against_independent_pass(model_ref: str, comparisons: list[dict], few_shot: int) -> None:
    from cai.models.resolve import resolve_model

    model_dir = resolve_model(model_ref)
    backend = load_backend("transformers", model_ref, batch_size=2)  # prompts of different lengths: padding
    try:
        settings = LabelSettings(seed=0, both_orders=True, few_shot_examples=few_shot)
        rows = Labeller(backend, CONST, settings).label(comparisons)
    finally:
        backend.close()
    by_name = {p.name: p for p in CONST.preference_principles}
    for c, row in zip(comparisons, rows):
        assert 0.0 <= row["pA"] <= 1.0
        question = by_name[row["principles"][0]].question
        p_ab = independent_p_first(model_dir, expected_prompt(model_dir, c, question, "AB", few_shot))
        p_ba = independent_p_first(model_dir, expected_prompt(model_dir, c, question, "BA", few_shot))
        assert row["orderScores"]["AB"] == pytest.approx(p_ab, abs=2e-4)
        assert row["orderScores"]["BA"] == pytest.approx(1 - p_ba, abs=2e-4)
        assert row["pA"] == pytest.approx((p_ab + 1 - p_ba) / 2, abs=2e-4)


def test_pA_is_the_softmax_of_independently_computed_option_logprobs():
    check_against_independent_pass(TINY, COMPARISONS, few_shot=2)


@pytest.mark.slow
def test_pA_matches_an_independent_forward_pass_on_the_embedded_model():
    check_against_independent_pass(EMBEDDED, COMPARISONS[1:], few_shot=1)


def position_bias_case(model_ref: str, comparisons: list[dict]) -> None:
    """Two identical responses: the truth is exactly 0.5, so any deviation of a one-order label is
    position bias. The labeller's own scores show the bias (P(first) ≠ 0.5 in both orders); averaging
    both orders must remove it, and it must change the output for real comparisons too."""
    backend = load_backend("transformers", model_ref, batch_size=4)
    same = [{"id": f"s{i}", "prompt": c["prompt"], "responseA": c["responseA"], "responseB": c["responseA"]}
            for i, c in enumerate(comparisons)]
    k = len(same)
    try:
        one = Labeller(backend, CONST, LabelSettings(both_orders=False, few_shot_examples=1)).label(same + comparisons)
        both = Labeller(backend, CONST, LabelSettings(both_orders=True, few_shot_examples=1)).label(same + comparisons)
    finally:
        backend.close()
    bias = [abs(r["pA"] - 0.5) for r in one[:k]]
    assert max(bias) > 0.02, f"expected a measurable position bias in this labeller, got {bias}"
    for r in both[:k]:
        assert r["pA"] == pytest.approx(0.5, abs=1e-6), "both orders cancel a pure position bias"
    for o, b in zip(one[k:], both[k:]):
        assert b["orderScores"]["AB"] == pytest.approx(o["pA"], abs=1e-4)  # other batch mates: fp32 noise
        assert abs(b["pA"] - o["pA"]) > 1e-3, "both-orders averaging changes a position-biased labeller's output"
        assert b["pA"] == pytest.approx((b["orderScores"]["AB"] + b["orderScores"]["BA"]) / 2)


def test_both_orders_removes_the_position_bias_of_a_real_labeller():
    position_bias_case(TINY, COMPARISONS)


@pytest.mark.slow
def test_both_orders_removes_the_position_bias_of_the_embedded_model():
    position_bias_case(EMBEDDED, COMPARISONS[1:])


def test_chain_of_thought_probabilities_are_clamped_and_recorded():
    backend = load_backend("transformers", TINY, batch_size=8)
    try:
        settings = LabelSettings(seed=5, chain_of_thought=True, cot_samples=2, clamp=(0.4, 0.6), cot_max_new_tokens=6,
                                 few_shot_examples=1, principles_per_comparison=2)
        rows = Labeller(backend, CONST, settings).label(COMPARISONS[:2])
    finally:
        backend.close()
    for row in rows:
        assert len(row["scores"]) == 2 * 2 * 2  # principles × orders × CoT samples
        assert len(row["cot"]) == 8 and all(isinstance(t, str) and t for t in row["cot"])
        assert all(0.4 <= s["pA"] <= 0.6 for s in row["scores"])
        assert 0.4 <= row["pA"] <= 0.6
        for o in row["orderScores"].values():
            assert 0.4 <= o <= 0.6
    # The raw probabilities were outside the clamp: clamping did something.
    assert any(not 0.4 <= (s["pFirst"] if s["order"] == "AB" else 1 - s["pFirst"]) <= 0.6
               for row in rows for s in row["scores"])


def test_several_principles_per_comparison_are_drawn_recorded_and_averaged():
    backend = load_backend("transformers", TINY, batch_size=8)
    try:
        rows = Labeller(backend, CONST, LabelSettings(seed=2, principles_per_comparison=3, few_shot_examples=0)).label(
            COMPARISONS)
    finally:
        backend.close()
    for row in rows:
        assert len(row["principles"]) == 3 and len(set(row["principles"])) == 3
        per_principle = {}
        for s in row["scores"]:
            per_principle.setdefault(s["principle"], []).append(s["pA"])
        assert set(per_principle) == set(row["principles"])
        assert row["pA"] == pytest.approx(sum(sum(v) / 2 for v in per_principle.values()) / 3)
    assert [p for p in rows[0]["principles"]] == [p.name for p in fb.principles_for(CONST, 3, 2, "c1")]


# --- stages -----------------------------------------------------------------------------------------


def test_sample_pairs_writes_pairs_per_prompt(tmp_path):
    from cai.stages import sample_pairs

    ctx = make_ctx(tmp_path, "sample-pairs", "PreferenceModel",
                   {"prompts": {"source": "builtin:red-team", "limit": 3}, "pairsPerPrompt": 2,
                    "generation": {"maxNewTokens": 6, "batchSize": 4, "temperature": 1.0}},
                   models={"policy": TINY}, constitution=harmless_constitution())
    result = sample_pairs.run(ctx)
    rows = read_jsonl(ctx.out_dir / "pairs.jsonl")
    assert len(rows) == 6 and result.metrics["pairs"] == 6 and result.metrics["prompts"] == 3
    assert [r["id"] for r in rows[:2]] == [f"{rows[0]['promptId']}-0", f"{rows[0]['promptId']}-1"]
    assert all(r["responseA"] and r["responseB"] for r in rows)
    assert all(r["responseA"] != r["responseB"] for r in rows), "sampled at temperature 1: distinct responses"
    assert result.metrics["tokensGenerated"] > 0


def test_label_preferences_stage_writes_design_rows(tmp_path):
    from cai.stages import label_preferences

    pairs = artifact(tmp_path / "pairs", {"pairs.jsonl": jsonl([{**c, "promptId": c["id"]} for c in COMPARISONS])})
    ctx = make_ctx(tmp_path, "label-preferences", "PreferenceModel",
                   {"labeling": {"fewShotExamples": 1, "principlesPerComparison": 2, "batchSize": 4}},
                   models={"feedback": TINY}, inputs={"pairs": pairs}, constitution=harmless_constitution())
    result = label_preferences.run(ctx)
    rows = read_jsonl(ctx.out_dir / "comparisons.jsonl")
    assert [r["id"] for r in rows] == ["c1", "c2", "c3"]
    for r in rows:
        assert {"prompt", "responseA", "responseB", "principles", "pA", "orderScores"} <= set(r)
        assert 0 <= r["pA"] <= 1 and set(r["orderScores"]) == {"AB", "BA"} and len(r["principles"]) == 2
    assert result.metrics["comparisons"] == 3 and result.metrics["scoredPrompts"] == 12
    assert "positionBias" in result.metrics and "orderAgreement" in result.metrics


def test_option_letters_that_are_not_single_tokens_fail_before_bulk_work(tmp_path):
    from cai.stages import label_preferences

    model = odd_tokenizer_model(tmp_path / "odd-model")
    pairs = artifact(tmp_path / "pairs", {"pairs.jsonl": jsonl(COMPARISONS)})
    ctx = make_ctx(tmp_path, "label-preferences", "PreferenceModel", {"labeling": {"backend": "transformers"}},
                   models={"feedback": str(model)}, inputs={"pairs": pairs}, constitution=harmless_constitution())
    with pytest.raises(StageError) as err:
        label_preferences.run(ctx)
    message = str(err.value)
    assert str(model) in message and "'A'" in message and "single token" in message
    assert not (ctx.out_dir / "comparisons.jsonl").exists()


def test_shared_prefix_scoring_equals_the_plain_scores(monkeypatch: pytest.MonkeyPatch):
    """The transformers backend's scoring with the few-shot prefix computed once must give the numbers
    of its plain path, for prompts of different lengths spread over several batches."""
    backend = load_backend("transformers", TINY, batch_size=3)
    try:
        labeller = Labeller(backend, CONST, LabelSettings(few_shot_examples=2))
        prompts = [fb.answer_prompt(labeller.rendered(c, CONST.preference_principles[i], order))
                   for i, c in enumerate(COMPARISONS * 2) for order in fb.ORDERS]
        encoded = backend.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        shared = hf._shared_prefix_len(encoded)
        assert shared > 100, "the few-shot prefix is shared"
        forward = backend.lm.forward
        widths: list[int] = []

        def spy(*args, **kwargs):
            widths.append(kwargs["input_ids"].shape[1])
            return forward(*args, **kwargs)

        monkeypatch.setattr(backend.lm, "forward", spy)
        fast = backend.score_next_token(prompts, fb.OPTIONS)
        assert widths[0] == shared and widths.count(shared) == 1, "the prefix runs once, alone"
        assert max(widths[1:]) <= max(len(r) for r in encoded) - shared, "then only the prompts' own tokens"
        monkeypatch.setattr(hf, "MIN_SHARED_PREFIX", 10**9)
        widths.clear()
        plain = backend.score_next_token(prompts, fb.OPTIONS)
        assert max(widths) == max(len(r) for r in encoded), "the plain path runs whole prompts"
    finally:
        backend.close()
    assert len(fast) == len(plain) == 12
    for f, p in zip(fast, plain):
        assert f == pytest.approx(p, abs=1e-4)
