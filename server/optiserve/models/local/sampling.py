"""Next-token selection: greedy, temperature, top-k and top-p, with per-request seeds."""

from __future__ import annotations

import torch

from optiserve.domain.types import SamplingParams


def make_generator(params: SamplingParams, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator seeded from the request (random when it gives no seed)."""
    generator = torch.Generator(device=device)
    if params.seed is not None:
        generator.manual_seed(params.seed & 0xFFFF_FFFF_FFFF_FFFF)
    else:
        generator.seed()
    return generator


def select_token(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> int:
    """Pick the next token from one row of logits (shape ``[vocab]``)."""
    if params.greedy:
        return int(torch.argmax(logits).item())
    scores = logits.float() / params.temperature
    if params.top_k > 0 and params.top_k < scores.shape[-1]:
        kth = torch.topk(scores, params.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True)
        cumulative = torch.softmax(sorted_scores, dim=-1).cumsum(dim=-1)
        # Drop tokens once the mass before them already reaches top_p (keep at least one).
        drop = (cumulative - torch.softmax(sorted_scores, dim=-1)) >= params.top_p
        scores = scores.scatter(0, order, sorted_scores.masked_fill(drop, float("-inf")))
    probs = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator).item())
