"""Statistics of preference judgements: preference-model accuracy and calibration, win rates with
confidence intervals. Pure Python (no torch), shared by the stages that compute the figures
(`train-preference-model`, `evaluate`) and the report that shows them.
"""

from __future__ import annotations

import math
import random
from typing import Any

ECE_BINS = 10
BOOTSTRAP = 2000
Z95 = 1.959964


def quarter_mean(values: list[float], head: bool = False) -> float | None:
    """Mean of the last (or, with `head`, the first) quarter of a training curve, at least one value:
    the one definition of rewardFirst/rewardMean/kl in status, report and metrics (less noisy than a step)."""
    if not values:
        return None
    n = max(1, len(values) // 4)
    part = values[:n] if head else values[-n:]
    return sum(part) / len(part)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def accuracy(predictions: list[dict[str, float]]) -> float | None:
    """Agreement of sign(rA − rB) with the label's side (pA > 0.5); comparisons labelled exactly 0.5
    have no side and are left out."""
    decided = [p for p in predictions if p["pA"] != 0.5]
    if not decided:
        return None
    return sum((p["rA"] > p["rB"]) == (p["pA"] > 0.5) for p in decided) / len(decided)


def reliability(predictions: list[dict[str, float]], bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Reliability-diagram bins of q = σ(rA − rB) against y = 1[pA > 0.5]: per bin the count, mean q,
    observed frequency of y and mean soft label pA."""
    out = []
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        members = [p for p in predictions if lo <= p["q"] < hi or (b == bins - 1 and p["q"] == 1.0)]
        if members:
            out.append({
                "lo": lo, "hi": hi, "count": len(members),
                "confidence": sum(p["q"] for p in members) / len(members),
                "frequency": sum(p["pA"] > 0.5 for p in members) / len(members),
                "meanLabel": sum(p["pA"] for p in members) / len(members),
            })
    return out


def expected_calibration_error(predictions: list[dict[str, float]], bins: int = ECE_BINS) -> float | None:
    """ECE = Σ_bins (n_b / n) · |mean q − frequency of pA > 0.5| over 10 equal-width bins of q."""
    if not predictions:
        return None
    return sum(
        b["count"] * abs(b["confidence"] - b["frequency"]) for b in reliability(predictions, bins)
    ) / len(predictions)


def bootstrap_ci(
    values: list[float], seed: int, resamples: int = BOOTSTRAP, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean."""
    if not values:
        return (math.nan, math.nan)
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    lo_i = math.floor((1 - level) / 2 * resamples)
    hi_i = min(resamples - 1, math.ceil((1 + level) / 2 * resamples) - 1)
    return (means[lo_i], means[hi_i])


def wilson_ci(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (successes may be fractional: ties count ½)."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def win_rate(p_first_better: list[float], seed: int) -> dict[str, Any]:
    """Soft and hard win rates of the first model of a pair, with 95% CIs."""
    n = len(p_first_better)
    soft = sum(p_first_better) / n
    wins = sum(1.0 if p > 0.5 else 0.5 if p == 0.5 else 0.0 for p in p_first_better)
    lo, hi = bootstrap_ci(p_first_better, seed)
    hlo, hhi = wilson_ci(wins, n)
    return {"n": n, "winRate": soft, "ciLow": lo, "ciHigh": hi, "ci": "bootstrap-percentile-95",
            "hardWinRate": wins / n, "hardCiLow": hlo, "hardCiHigh": hhi, "hardCi": "wilson-95"}
