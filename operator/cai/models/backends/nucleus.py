"""Temperature + top-p (nucleus) sampling for the transformers backend, without sorting the vocabulary.

Used by `hf.TransformersBackend` as a logits processor under greedy `generate`: the sampled token is
left as the only finite logit, so the argmax picks it. Why not transformers' own sampling: on CPU its
top-p warper sorts the whole vocabulary at every step and `torch.multinomial` follows; for the 49k
vocabulary of the embedded model that cost ~8 ms (sort) plus 3-5 ms (multinomial) per row per step
on these machines, more than the model's forward pass at batch 32.

Same distribution as transformers' `TopPLogitsWarper` then a categorical draw: the nucleus is the
smallest set of most likely tokens whose mass reaches top_p (a token is kept when the mass ranked
above it is below top_p). It is found among the `candidates` most likely tokens (`torch.topk`,
sorted), with probabilities normalised over the full vocabulary; a row whose candidates hold less
than top_p of the mass (a flat distribution) is sorted in full instead. The draw is by inverse CDF:
one uniform number per row against the cumulative kept mass (torch.multinomial and the exponential
race both draw one random number per vocabulary entry).
"""

from __future__ import annotations

import torch


def nucleus(logits: torch.Tensor, temperature: float, top_p: float,
            candidates: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: token ids (descending probability) and their unnormalised kept probabilities.

    Returns (ids, probs), both [rows, width]; probs is 0 where a token is outside the nucleus.
    """
    logits = logits.float() / temperature
    log_z = torch.logsumexp(logits, dim=-1, keepdim=True)
    if top_p >= 1.0:
        return torch.arange(logits.shape[-1], device=logits.device).expand_as(logits), (logits - log_z).exp()
    top, ids = logits.topk(min(candidates, logits.shape[-1]), dim=-1)
    probs = (top - log_z).exp()
    flat = probs.sum(-1) < top_p
    if flat.any():
        # Rare with trained models: the nucleus may reach past the candidates, so sort those rows.
        full, full_ids = logits[flat].sort(dim=-1, descending=True)
        extra = full.shape[-1] - ids.shape[-1]
        ids = torch.nn.functional.pad(ids, (0, extra))
        probs = torch.nn.functional.pad(probs, (0, extra))
        ids[flat] = full_ids
        probs[flat] = (full - log_z[flat]).exp()
    mass_above = probs.cumsum(-1) - probs
    probs = probs.masked_fill(mass_above >= top_p, 0.0)
    return ids, probs


def sample(logits: torch.Tensor, temperature: float, top_p: float, candidates: int = 256) -> torch.Tensor:
    """One token id per row, drawn from the temperature-scaled top-p distribution (global torch RNG)."""
    ids, probs = nucleus(logits, temperature, top_p, candidates)
    cdf = probs.double().cumsum(-1)
    u = torch.rand(cdf.shape[0], 1, dtype=torch.float64, device=cdf.device) * cdf[:, -1:]
    pick = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[-1] - 1)
    return ids.gather(-1, pick).squeeze(-1)


class NucleusSampler:
    """A transformers logits processor: each row's logits become -inf except the sampled token's."""

    def __init__(self, temperature: float, top_p: float, candidates: int = 256):
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 for sampling, got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        self.temperature, self.top_p, self.candidates = temperature, top_p, candidates

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        chosen = sample(scores, self.temperature, self.top_p, self.candidates)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(-1, chosen.unsqueeze(-1), 0.0)
