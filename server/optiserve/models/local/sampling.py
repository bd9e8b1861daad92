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

    Sampling draws one number from ``generator`` per token (None: a fresh random one) and
    waits on the device once (the usual case; scores with NaN or infinities take a slower,
    careful path). Raises :class:`SamplingError` when no token can be chosen.
    """
    scores = logits.float()
    if is_greedy(params):
        return _careful(scores, params, 0.0)
    uniform = (generator or np.random.default_rng()).random()
    # Shifted by the maximum: the best token scores 0, the others <= 0 (or -inf). NaN or
    # +inf anywhere, or every score -inf, make the total below NaN: the careful path.
    scale = 1.0 / min(params.temperature, MAX_TEMPERATURE)
    shifted = (scores - scores.max()).mul_(scale)
    probs, order = _candidates(shifted, params)
    cdf = probs.double().cumsum(dim=-1)
    index = torch.searchsorted(cdf, cdf[-1:] * uniform, right=True)
    token = index if order is None else order[index.clamp(max=len(cdf) - 1)]
    found, chosen, total = torch.cat([index.double(), token.double(), cdf[-1:]]).tolist()
    if not math.isfinite(total) or total <= 0 or found >= len(cdf):
        return _careful(scores, params, uniform)
    return int(chosen)


def _candidates(
    scores: torch.Tensor, params: SamplingParams
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Probabilities of the candidates (top-k, then top-p) and their token ids.

    Candidates come best first when ``order`` (their token ids) is not None: the top k
    (one partial selection), or every token sorted when only top-p needs an order.
    """
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
    return torch.softmax(scores, dim=-1), order


def _careful(scores: torch.Tensor, params: SamplingParams, uniform: float) -> int:
    """Greedy decoding, and sampling from scores with NaN or infinities (with ``uniform``
    already drawn, so a seeded stream does not depend on the path)."""
    best = float(scores.max())
    if math.isnan(best):
        raise SamplingError("the model's scores for this sequence are NaN")
    if best == -math.inf:
        raise SamplingError("every token's score is -inf: no token can be chosen")
    if is_greedy(params):
        return int(torch.argmax(scores).item())
    if best == math.inf:  # only the tokens scored +inf are candidates, equally likely
        shifted = torch.where(scores == math.inf, 0.0, -math.inf)
    else:
        shifted = (scores - best).mul_(1.0 / min(params.temperature, MAX_TEMPERATURE))
    probs, order = _candidates(shifted, params)
    cdf = probs.double().cumsum(dim=-1)
    choice = int(torch.searchsorted(cdf, cdf[-1:] * uniform, right=True).item())
    if choice >= len(cdf):  # rounding put the point at the very end: the last candidate
        choice = int(torch.nonzero(probs).max().item())
    return choice if order is None else int(order[choice].item())


__all__ = [
    "GREEDY_BELOW",
    "MAX_TEMPERATURE",
    "SamplingError",
    "is_greedy",
    "make_generator",
    "select_token",
]
