"""The report answers its question first (issue 16): one sentence saying whether RL-CAI made the model
more harmless, with the judge, n and the interval; too few prompts are called that, not "no effect"."""

from __future__ import annotations

import pytest

from cai.feedback.verdict import MIN_PROMPTS, verdict


def summary(rate: float, low: float, high: float, n: int, independent: bool = True) -> dict:
    wr = {"n": n, "winRate": rate, "ciLow": low, "ciHigh": high, "hardWinRate": rate, "hardCiLow": low,
          "hardCiHigh": high}
    return {"winRates": {"harmless": {"rl_vs_start": wr, "rl_vs_sl": {**wr, "n": 99}}},
            "judge": {"model": "builtin:qwen2.5-coder-1.5b-instruct", "independent": independent}}


FIGURES = "(RL-CAI vs start {:.3f}, 95% CI [{:.3f}, {:.3f}], n = {}, judged by builtin:qwen2.5-coder-1.5b-instruct)"


@pytest.mark.parametrize(("rate", "low", "high", "start"), [
    (0.66, 0.58, 0.73, "RL-CAI is more harmless than the start model"),
    (0.40, 0.31, 0.47, "RL-CAI is less harmless than the start model"),
    (0.498, 0.489, 0.508, "No measurable change in harmlessness"),
])
def test_verdict_states_the_effect_with_judge_n_and_interval(rate, low, high, start):
    n = MIN_PROMPTS + 10
    assert verdict(summary(rate, low, high, n)) == f"{start} {FIGURES.format(rate, low, high, n)}."


def test_too_few_prompts_is_said_even_when_the_interval_excludes_one_half():
    for low, high in ((0.489, 0.508), (0.55, 0.6)):
        text = verdict(summary(0.57, low, high, 10))
        assert text.startswith("Too few prompts to show an effect on harmlessness (")
        assert "n = 10" in text and f"at least {MIN_PROMPTS} red-team prompts" in text
        assert "redTeamPrompts.limit" in text


def test_verdict_names_a_judge_that_is_not_independent_and_missing_comparisons():
    assert "judged by builtin:qwen2.5-coder-1.5b-instruct, not independent)" in verdict(
        summary(0.5, 0.45, 0.55, 40, independent=False))
    assert verdict({"winRates": {}}).startswith("No verdict on harmlessness")
    # Without a start comparison (SL-CAI is the start), RL-CAI vs SL-CAI answers the question.
    only_sl = {"winRates": {"harmless": {"rl_vs_sl": {"n": 40, "winRate": 0.7, "ciLow": 0.6, "ciHigh": 0.8}}}}
    assert verdict(only_sl).startswith("RL-CAI is more harmless than the start model (RL-CAI vs SL-CAI 0.700")


def _write(out, s, rl_log=(), rl_metrics=None):
    pytest.importorskip("matplotlib")
    from cai.stages.report_html import write_report

    out.mkdir(parents=True, exist_ok=True)
    return write_report(
        out, name="rl", refs={"start": "a", "sl": "b", "rl": "c"}, feedback="f", reward="r",
        algorithm="rloo", kl_coef=0.05, win_rates=s["winRates"], pm_scores={}, generations=[], judgements=[],
        heldout=[], pm_metrics={}, rl_log=list(rl_log), rl_metrics=rl_metrics or {},
        judge={**s["judge"], "notIndependentBecause": None},
    )


def test_report_html_opens_with_the_verdict(tmp_path):
    s = summary(0.498, 0.489, 0.508, 10)
    written = _write(tmp_path, s)
    assert written["verdict"] == verdict(s)
    page = (tmp_path / "report.html").read_text()
    assert page.index("Too few prompts to show an effect") < page.index("<h2>")


def test_reward_first_and_last_are_quarter_means_everywhere(tmp_path):
    """One definition: status.metrics (train-policy's manifest), summary.json, report.html and `cai report`
    all compare the mean of the first quarter of RL steps with the mean of the last quarter."""
    from cai.feedback.statistics import quarter_mean

    log = [{"step": i, "reward": 0.1 * i, "kl": 0.01 * i} for i in range(1, 9)]  # quarters: 2 steps
    written = _write(tmp_path / "a", summary(0.5, 0.4, 0.6, 40), rl_log=log)["rl"]
    assert written["rewardFirst"] == pytest.approx(0.15) == quarter_mean([e["reward"] for e in log], head=True)
    assert written["rewardMean"] == pytest.approx(0.75) and written["kl"] == pytest.approx(0.075)
    # The manifest's figures win where the policy's manifest has them (they are what status shows).
    manifest = {"rewardFirst": 0.2, "rewardMean": 0.7, "kl": 0.05}
    assert _write(tmp_path / "b", summary(0.5, 0.4, 0.6, 40), rl_log=log, rl_metrics=manifest)["rl"] == {
        **written, **manifest}
    assert "reward, first quarter → last quarter (means)" in (tmp_path / "a" / "report.html").read_text()


def test_report_html_explains_sigma_of_the_reward_difference(tmp_path):
    _write(tmp_path, summary(0.5, 0.4, 0.6, 40))
    page = (tmp_path / "report.html").read_text()
    assert "σ(rA − rB), the logistic function of the difference of two responses' rewards" in page


def test_degenerate_responses_are_counted_and_reported(tmp_path):
    from cai.feedback.verdict import degenerate_counts, is_degenerate

    assert is_degenerate("1. 1. 1. 1. 1. 1. 1. 1. 1. 1.") and is_degenerate("  ")
    assert not is_degenerate("I can't help with that, but here is a safer way to think about it.")
    assert not is_degenerate("No.")  # short is not degenerate
    generations = [
        {"set": "harmless", "id": "1", "prompt": "p", "start": "A fine answer to the question asked here.",
         "sl": "1. 1. 1. 1. 1. 1. 1. 1.", "rl": "1. 1. 1. 1. 1. 1. 1. 1. 1."},
        {"set": "helpful", "id": "2", "prompt": "q", "start": "Another fine answer, with some detail in it.",
         "sl": "Sure, here it is, explained step by step.", "rl": ""},
    ]
    assert degenerate_counts(generations) == {"start": {"degenerate": 0, "responses": 2},
                                              "sl": {"degenerate": 1, "responses": 2},
                                              "rl": {"degenerate": 2, "responses": 2}}
    pytest.importorskip("matplotlib")
    from cai.stages.report_html import write_report

    s = summary(0.5, 0.4, 0.6, 40)
    write_report(tmp_path, name="rl", refs={"start": "a", "sl": "b", "rl": "c"}, feedback="f", reward="r",
                 algorithm="rloo", kl_coef=0.05, win_rates=s["winRates"], pm_scores={}, generations=generations,
                 judgements=[], heldout=[], pm_metrics={}, rl_log=[], rl_metrics={},
                 judge={**s["judge"], "notIndependentBecause": None})
    page = (tmp_path / "report.html").read_text()
    note = page.index("Degenerate responses")
    assert note < page.index("<h2>") and "1 of 2 SL-CAI, 2 of 2 RL-CAI" in page
