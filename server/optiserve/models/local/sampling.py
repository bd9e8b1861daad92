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

Seeds are 64-bit (the proto's ``uint64``) and every bit counts: a request's generator is
numpy's PCG64 seeded with the whole seed (through ``SeedSequence``; torch's CPU generator
keeps only 32 bits of a seed), and a token is drawn by inverse CDF with one uniform
number from it. So the same seed, prompt and parameters give the same text on the same
model and hardware, on any device (the numbers never depend on the device's generator),
and seeds that differ anywhere give different streams. No seed: OS entropy.
"""

from __future__ import annotations

import math

import numpy as np
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


def make_generator(params: SamplingParams) -> np.random.Generator:
    """The request's random stream: PCG64 seeded with all 64 bits of its seed (a seed
    outside [0, 2^64) is taken modulo 2^64), or from OS entropy when it gives none."""
    if params.seed is None:
        return np.random.Generator(np.random.PCG64())
    return np.random.Generator(np.random.PCG64(params.seed & 0xFFFF_FFFF_FFFF_FFFF))


def select_token(
    logits: torch.Tensor, params: SamplingParams, generator: np.random.Generator | None
) -> int:
    """Pick the next token from one row of logits (shape ``[vocab]``, any float dtype).

    Sampling draws one number from ``generator`` per token (None: a fresh random one).
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
    # Candidates best first: the top k (one partial selection), or every token sorted
    # when only top-p needs an order; ``order`` maps a candidate back to its token id.
    order: torch.Tensor | None = None
    if 0 < params.top_k < scores.shape[-1]:
        scores, order = torch.topk(scores, params.top_k)
    if params.top_p < 1.0:
        if order is None:
            scores, order = torch.sort(scores, descending=True)
        probs = torch.softmax(scores, dim=-1)
        # Drop tokens once the mass before them already reaches top_p; the first token's
        # mass before it is exactly 0 < top_p, so the best token always stays.
        scores = scores.masked_fill((probs.cumsum(dim=-1) - probs) >= params.top_p, -math.inf)
    choice = _draw(torch.softmax(scores, dim=-1), generator or np.random.default_rng())
    return choice if order is None else int(order[choice].item())


def _draw(probs: torch.Tensor, generator: np.random.Generator) -> int:
    """Inverse CDF: the first token whose cumulative probability exceeds ``u * total``.

    That token has a positive probability (its cumulative sum rose past the point); only
    when rounding puts the point at the very end is the last candidate taken instead.
    """
    cdf = probs.double().cumsum(dim=-1)
    point = cdf.new_tensor([generator.random()]) * cdf[-1]
    token = int(torch.searchsorted(cdf, point, right=True).item())
    if token >= probs.shape[-1]:
        token = int(torch.nonzero(probs).max().item())
    return token


__all__ = [
    "GREEDY_BELOW",
    "MAX_TEMPERATURE",
    "SamplingError",
    "is_greedy",
    "make_generator",
    "select_token",
]
