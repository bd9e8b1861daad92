"""Next-token selection: greedy, temperature, top-k and top-p, with per-request seeds.

Sampling is numerically safe for every value validation accepts (temperature >= 0 and
finite, top_p in (0, 1], top_k >= 0) and for any finite or infinite logits:

* temperatures below :data:`GREEDY_BELOW` decode greedily (dividing by a temperature near
  zero overflows float32 and turned whole batches into NaN);
* scores are shifted by their maximum before scaling, so the best token scores 0, every
  other one a finite or ``-inf`` negative number, and the softmax never sees NaN;
* temperatures above :data:`MAX_TEMPERATURE` are capped there (beyond it every candidate
  is equally likely in float32 anyway, and ``-inf * 0`` would be NaN);
* top-k and top-p never drop the best token, so at least one candidate always remains.

Scores that allow no token at all (NaN from the model, or every token at ``-inf``) raise
:class:`SamplingError`: a failure of that one sequence, which the batch isolates.
"""

from __future__ import annotations

import math

import torch

from optiserve.domain.types import SamplingParams

#: Temperatures below this decode greedily (argmax): at 1e-5 a logit gap of 1e-3 is
#: already a factor e^100 between two tokens.
GREEDY_BELOW = 1e-5
#: Temperatures above this are capped to it (a uniform choice among the candidates).
MAX_TEMPERATURE = 1e30


class SamplingError(ValueError):
    """The scores of one sequence leave no token to choose (NaN, or all ``-inf``)."""


def is_greedy(params: SamplingParams) -> bool:
    """True when ``params`` decode by argmax: temperature 0 or below :data:`GREEDY_BELOW`."""
    return params.temperature < GREEDY_BELOW


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
    """Pick the next token from one row of logits (shape ``[vocab]``, any float dtype).

    Raises :class:`SamplingError` when no token can be chosen.
    """
    scores = logits.float()
    best = float(scores.max())
    if math.isnan(best):
        raise SamplingError("the model's scores for this sequence are NaN")
    if best == -math.inf:
        raise SamplingError("every token's score is -inf: no token can be chosen")
    if is_greedy(params):
        return int(torch.argmax(scores).item())
    if best == math.inf:  # only the tokens scored +inf are candidates, equally likely
        scores = torch.where(scores == math.inf, 0.0, -math.inf)
    else:
        # Shifted by the maximum: the best token scores 0, the others <= 0 (or -inf).
        scale = 1.0 / min(params.temperature, MAX_TEMPERATURE)
        scores = (scores - best).mul_(scale)
    vocab = scores.shape[-1]
    if 0 < params.top_k < vocab:
        kth = torch.topk(scores, params.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, -math.inf)
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True)
        probs = torch.softmax(sorted_scores, dim=-1)
        # Drop tokens once the mass before them already reaches top_p; the first token's
        # mass before it is exactly 0 < top_p, so the best token always stays.
        drop = (probs.cumsum(dim=-1) - probs) >= params.top_p
        scores = scores.scatter(0, order, sorted_scores.masked_fill(drop, -math.inf))
    probs = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator).item())


__all__ = [
    "GREEDY_BELOW",
    "MAX_TEMPERATURE",
    "SamplingError",
    "is_greedy",
    "make_generator",
    "select_token",
]
