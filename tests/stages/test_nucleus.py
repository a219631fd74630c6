"""The transformers backend's sampler (`cai.models.backends.nucleus`) draws from exactly the
distribution transformers' own temperature + top-p sampling draws from, without sorting the vocabulary."""

from __future__ import annotations

import pytest
import torch
from transformers import TemperatureLogitsWarper, TopPLogitsWarper

from cai.models.backends.nucleus import NucleusSampler, nucleus, sample


def reference(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """transformers' sampling distribution: temperature, then top-p, then softmax."""
    scores = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(None, scores)
    return torch.softmax(scores, dim=-1)


def dense(ids: torch.Tensor, probs: torch.Tensor, vocab: int) -> torch.Tensor:
    out = torch.zeros(ids.shape[0], vocab, dtype=torch.float64)
    out.scatter_add_(-1, ids, probs.double())
    return out / out.sum(-1, keepdim=True)


@pytest.mark.parametrize("temperature,top_p", [(0.7, 0.95), (1.0, 0.9), (1.3, 0.5), (0.7, 1.0)])
def test_the_kept_tokens_and_their_probabilities_match_transformers(temperature, top_p):
    torch.manual_seed(0)
    vocab = 5000
    peaked = torch.randn(6, vocab) * 4  # the nucleus lies within the top candidates
    flat = torch.randn(2, vocab) * 0.1  # it does not: these rows take the full-sort path
    logits = torch.cat([peaked, flat])
    ids, probs = nucleus(logits, temperature, top_p, candidates=64)
    ours = dense(ids, probs, vocab)
    expected = reference(logits, temperature, top_p).double()
    assert torch.equal(ours > 0, expected > 0), "same nucleus"
    assert torch.allclose(ours, expected, atol=1e-6)


def test_draws_follow_the_distribution():
    torch.manual_seed(1)
    logits = torch.tensor([[3.0, 2.5, 2.0, 1.0, 0.0, -1.0, -2.0, -3.0]])
    expected = reference(logits, 0.8, 0.9)[0]
    draws = sample(logits.expand(40_000, -1), 0.8, 0.9, candidates=4)
    freq = torch.bincount(draws, minlength=8).double() / draws.numel()
    assert freq[expected == 0].sum() == 0, "nothing outside the nucleus"
    assert torch.allclose(freq, expected.double(), atol=0.01), (freq, expected)


def test_the_processor_leaves_one_finite_logit_per_row_and_is_seeded():
    logits = torch.randn(3, 1000)
    torch.manual_seed(5)
    first = NucleusSampler(1.0, 0.95)(None, logits)
    assert (torch.isfinite(first).sum(-1) == 1).all()
    torch.manual_seed(5)
    assert torch.equal(first, NucleusSampler(1.0, 0.95)(None, logits))
    with pytest.raises(ValueError, match="top_p"):
        NucleusSampler(1.0, 0.0)
