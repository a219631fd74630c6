"""The transformers backend encodes a prefix shared by every row of a batch once (few-shot prompts)
and the outputs stay exactly what they are without the cache."""

from __future__ import annotations

from cai.models.backends import SamplingParams, hf

SHARED = [{"role": "user", "content": "Here is a long worked example. " * 12},
          {"role": "assistant", "content": "And here is its careful answer. " * 10}]
QUESTIONS = ["How do I boil an egg?", "Why is the sky blue today, and what changes it?", "Name a prime.", "Hi"]


def test_shared_prefix_is_encoded_once_and_changes_nothing(tiny_backend, monkeypatch):
    convs = [[*SHARED, {"role": "user", "content": q}] for q in QUESTIONS]
    rows = tiny_backend._encode([tiny_backend.render_chat(c) for c in convs])
    shared = hf._shared_prefix_len(rows)
    assert shared >= hf.MIN_SHARED_PREFIX and all(len(r) > shared for r in rows)

    shapes: list[tuple[int, ...]] = []
    forward = tiny_backend.lm.forward

    def spy(*args, **kwargs):
        shapes.append(tuple(kwargs["input_ids"].shape))
        return forward(*args, **kwargs)

    monkeypatch.setattr(tiny_backend.lm, "forward", spy)
    params = SamplingParams(max_new_tokens=8, temperature=0.0)
    cached = tiny_backend.chat(convs, params)
    assert (1, shared) in shapes, "the shared prefix is encoded once, for a single row"
    assert max(s[1] for s in shapes if s[0] > 1) < max(len(r) for r in rows) - shared + 1, "rows start after the prefix"

    monkeypatch.setattr(hf, "MIN_SHARED_PREFIX", 10**9)
    plain = tiny_backend.chat(convs, params)
    assert [c[0].text for c in cached] == [c[0].text for c in plain]
    assert [c[0].completion_tokens for c in cached] == [c[0].completion_tokens for c in plain]


def test_shared_prefix_length_leaves_every_row_a_token():
    assert hf._shared_prefix_len([[1, 2, 3], [1, 2, 3]]) == 2
    assert hf._shared_prefix_len([[1, 2, 3, 4], [1, 2, 9]]) == 2
    assert hf._shared_prefix_len([[5, 6]]) == 0
