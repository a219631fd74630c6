"""Label arithmetic: option log-probabilities -> soft label P(responseA is better), and the checks on
labels and on the chain-of-thought clamp (the one place a clamp is validated; docs/design.md).

Pure arithmetic, so it is tested exactly without a model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def softmax_first(logp_first: float, logp_second: float) -> float:
    """P(first option) = softmax over the two option log-probs (the soft label of one scored prompt).

    Renormalising over the options is what makes it a label: the rest of the vocabulary's mass
    (tokens other than A/B) drops out. Computed stably for very negative log-probs.
    """
    if not (math.isfinite(logp_first) and math.isfinite(logp_second)):
        # -inf for both would be 0/0; a single -inf is a legitimate certainty.
        if logp_first == logp_second:
            return math.nan
        return 1.0 if logp_first > logp_second else 0.0
    d = logp_second - logp_first
    if d > 0:
        e = math.exp(-d)
        return e / (1.0 + e)
    return 1.0 / (1.0 + math.exp(d))


def p_response_a(p_first: float, order: str) -> float:
    """P(responseA is better) from the probability of the option shown first."""
    return p_first if order == "AB" else 1.0 - p_first


def clamp(p: float, bounds: Sequence[float]) -> float:
    """Chain-of-thought probabilities are near 0/1; the paper clamps them to [0.4, 0.6]."""
    lo, hi = float(bounds[0]), float(bounds[1])
    return min(max(p, lo), hi)


def check_clamp(bounds: Sequence[float]) -> str | None:
    """Why `bounds` is not a usable clamp (it must be [lo, hi] with 0 <= lo <= 0.5 <= hi <= 1), or None."""
    if len(bounds) != 2:
        return f"clamp must be [lo, hi], got {list(bounds)}"
    lo, hi = bounds
    if not all(isinstance(b, (int, float)) and math.isfinite(b) for b in (lo, hi)):
        return f"clamp bounds must be finite numbers, got {list(bounds)}"
    if not 0.0 <= lo <= 0.5 <= hi <= 1.0:
        return ("clamp must satisfy 0 <= lo <= 0.5 <= hi <= 1 (a neutral 0.5 must stay reachable), "
                f"got {list(bounds)}")
    return None


def mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("mean of no values")
    return sum(values) / len(values)


def label_problem(p: object) -> str | None:
    """Why `p` is not a valid soft label (finite float in [0, 1]), or None."""
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        return f"not a number ({p!r})"
    if not math.isfinite(p):
        return f"not finite ({p})"
    if not 0.0 <= p <= 1.0:
        return f"outside [0, 1] ({p})"
    return None


def validate_labels(rows: Sequence[dict[str, Any]], where: str) -> None:
    """Every row's pA (and each order score) must be a finite number in [0, 1]; ValueError naming
    the first bad row otherwise."""
    for n, row in enumerate(rows):
        problem = label_problem(row.get("pA"))
        if problem is None:
            for order, p in (row.get("orderScores") or {}).items():
                problem = label_problem(p)
                if problem:
                    problem = f"orderScores.{order} {problem}"
                    break
        else:
            problem = f"pA {problem}"
        if problem:
            raise ValueError(f"{where}: comparison {row.get('id', n)} has an invalid label: {problem}")
