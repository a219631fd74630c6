"""Fixtures for stage tests: real (tiny) models from the model cache, never mocks.

`tiny_model_dir` is builtin:tiny-random (2 layers, SmolLM2's tokenizer), prepared once into
$CAI_CACHE_DIR (`make models` does it ahead of time; otherwise the first test pays a few seconds).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

TINY_MODEL = "builtin:tiny-random"
EMBEDDED_MODEL = "builtin:smollm2-135m-instruct"


@pytest.fixture(scope="session")
def tiny_model_ref() -> str:
    return TINY_MODEL


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    from cai.models.resolve import resolve_model

    return resolve_model(TINY_MODEL)


@pytest.fixture(scope="session")
def tiny_backend(tiny_model_dir: Path) -> Iterator[object]:
    """A transformers backend on tiny-random with a small batch size, so a handful of prompts
    already spans several batches (padding and re-ordering are exercised). float32 throughout: tests
    compare its greedy texts across batchings and backends exactly."""
    from cai.models.backends import load_backend

    backend = load_backend("transformers", TINY_MODEL, batch_size=3, dtype="float32")
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    from cai.models.resolve import resolve_model

    return resolve_model(EMBEDDED_MODEL)
