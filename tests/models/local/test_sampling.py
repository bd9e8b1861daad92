"""select_token: safe for every value validation accepts, and for hostile logits."""

from __future__ import annotations

import math

import pytest
import torch

from optiserve.domain.types import SamplingParams
from optiserve.models.local.sampling import make_generator, select_token

VOCAB = 512

#: Every temperature validation accepts is finite and >= 0; these span float32's and
#: float64's extremes (subnormals, the largest finite values).
TEMPERATURES = [1e-45, 1e-38, 1e-30, 1e-8, 1e-5, 0.5, 1.0, 7.0, 1e6, 3.0e38, 1e300, 1.7e308]
TOP_PS = [1e-45, 1e-12, 0.3, 0.999999, 1.0]
TOP_KS = [0, 1, 2, VOCAB - 1, VOCAB, VOCAB + 1, 2**31 - 1]


def _logit_rows() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    plain = torch.randn(VOCAB, generator=gen) * 3
    wide = torch.randn(VOCAB, generator=gen) * 1e4
    masked = plain.clone()
    masked[::3] = -math.inf  # what min_new_tokens masking does to end ids
    huge = torch.randn(VOCAB, generator=gen) * 1e37
    tied = torch.zeros(VOCAB)
    one = torch.full((VOCAB,), -math.inf)
    one[17] = 0.0
    posinf = plain.clone()
    posinf[[5, 9]] = math.inf
    return {
        "plain": plain,
        "wide": wide,
        "masked": masked,
        "huge": huge,
        "tied": tied,
        "one-candidate": one,
        "plus-inf": posinf,
        "half": plain.half(),
        "bfloat16": wide.bfloat16(),
    }


@pytest.mark.parametrize("name", list(_logit_rows()))
def test_every_accepted_value_picks_a_real_token(name: str) -> None:
    logits = _logit_rows()[name]
    scores = logits.float()
    for temperature in TEMPERATURES:
        for top_p in TOP_PS:
            for top_k in TOP_KS:
                params = SamplingParams(
                    max_new_tokens=1, temperature=temperature, top_p=top_p, top_k=top_k, seed=1
                )
                token = select_token(logits, params, make_generator(params))
                assert 0 <= token < VOCAB
                assert scores[token] > -math.inf, (name, temperature, top_p, top_k)
                if name == "plus-inf":
                    assert token in (5, 9)
                if name == "one-candidate":
                    assert token == 17


def test_temperatures_below_the_threshold_are_greedy() -> None:
    logits = _logit_rows()["plain"]
    best = int(logits.argmax())
    for temperature in (1e-45, 1e-38, 1e-20, 9.9e-6):
        params = SamplingParams(max_new_tokens=1, temperature=temperature, seed=3)
        assert select_token(logits, params, make_generator(params)) == best


def test_top_k_one_and_tiny_top_p_are_greedy() -> None:
    logits = _logit_rows()["plain"]
    best = int(logits.argmax())
    for seed in range(20):
        for params in (
            SamplingParams(max_new_tokens=1, temperature=1.5, top_k=1, seed=seed),
            SamplingParams(max_new_tokens=1, temperature=1.5, top_p=1e-45, seed=seed),
        ):
            assert select_token(logits, params, make_generator(params)) == best


def test_huge_temperatures_sample_every_candidate_alike() -> None:
    logits = _logit_rows()["masked"]
    allowed = {i for i in range(VOCAB) if logits[i] > -math.inf}
    params = SamplingParams(max_new_tokens=1, temperature=1.7e308, seed=9)
    generator = make_generator(params)
    seen = {select_token(logits, params, generator) for _ in range(3000)}
    assert seen <= allowed
    assert len(seen) > len(allowed) * 0.9  # close to uniform over the candidates


def test_scores_that_allow_no_token_raise_a_sampling_error() -> None:
    from optiserve.models.local.sampling import SamplingError

    params = SamplingParams(max_new_tokens=1, temperature=1.0, seed=1)
    nan = _logit_rows()["plain"].clone()
    nan[3] = math.nan
    with pytest.raises(SamplingError, match="NaN"):
        select_token(nan, params, make_generator(params))
    with pytest.raises(SamplingError, match="-inf"):
        select_token(torch.full((VOCAB,), -math.inf), params, make_generator(params))


#: Seeds that differ only above bit 32 (1, 2^32 + 1, 2^40 + 1) or only in bit 63 (0, 2^63),
#: and the largest uint64: a 32-bit generator seed made each group one stream.
SEEDS_64 = [0, 1, 2**32, 2**32 + 1, 2**40 + 1, 2**63, 2**63 + 1, 2**64 - 1]


def _stream(seed: int | None, n: int = 48) -> list[int]:
    """``n`` tokens sampled from one fixed, nearly flat distribution with one generator."""
    logits = torch.randn(VOCAB, generator=torch.Generator().manual_seed(1)) * 0.1
    params = SamplingParams(max_new_tokens=n, temperature=1.0, seed=seed)
    generator = make_generator(params)
    return [select_token(logits, params, generator) for _ in range(n)]


def test_every_bit_of_a_64_bit_seed_counts() -> None:
    streams = {seed: _stream(seed) for seed in SEEDS_64}
    for seed, stream in streams.items():
        assert _stream(seed) == stream, seed  # the same seed, the same tokens
    distinct = {tuple(s) for s in streams.values()}
    assert len(distinct) == len(SEEDS_64), "seeds differing above bit 32 gave the same stream"


def test_no_seed_is_random() -> None:
    assert _stream(None) != _stream(None)
