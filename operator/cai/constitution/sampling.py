"""Reproducible principle draws keyed by (seed, row id, round/slot)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def _rng(seed: object, *key: object) -> random.Random:
    # str seeds go through sha512 in Python's random: stable across processes and versions.
    return random.Random(":".join(map(str, (seed, *key))))


def draw(items: Sequence[T], seed: int, *key: object) -> T:
    """One item drawn uniformly at random, determined by seed and key."""
    if not items:
        raise ValueError("cannot draw from an empty list of principles")
    return items[_rng(seed, *key).randrange(len(items))]


def draw_many(items: Sequence[T], k: int, seed: int, *key: object) -> list[T]:
    """k items without replacement while possible (then with), determined by seed and key."""
    rng = _rng(seed, *key)
    if k <= len(items):
        return rng.sample(list(items), k)
    return [items[rng.randrange(len(items))] for _ in range(k)]


def stable_seed(*key: object) -> int:
    """A 31-bit seed from any key; unlike hash(), identical in every process."""
    return _rng(*key).getrandbits(31) if key else 0
