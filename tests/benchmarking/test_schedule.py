"""Open-loop arrival schedules and synthetic prompt lengths: seeded, with the asked rate."""

from __future__ import annotations

import itertools
import statistics

import pytest

from optiserve.benchmarking.schedule import arrival_offsets, prompt_lengths
from optiserve.domain.benchmark import Arrival, LengthDistribution


def test_the_same_seed_gives_the_same_schedule_and_another_seed_another() -> None:
    a = arrival_offsets(200, 5.0, Arrival.POISSON, seed=1)
    assert a == arrival_offsets(200, 5.0, Arrival.POISSON, seed=1)
    assert a != arrival_offsets(200, 5.0, Arrival.POISSON, seed=2)
    assert a[0] == 0.0
    assert a == sorted(a)


def test_poisson_gaps_average_one_over_the_rate() -> None:
    rate = 8.0
    offsets = arrival_offsets(20_000, rate, Arrival.POISSON, seed=3)
    gaps = [b - a for a, b in itertools.pairwise(offsets)]
    assert statistics.fmean(gaps) == pytest.approx(1 / rate, rel=0.03)
    # exponential: the standard deviation equals the mean
    assert statistics.stdev(gaps) == pytest.approx(1 / rate, rel=0.05)


def test_constant_gaps_are_exact() -> None:
    offsets = arrival_offsets(10, 4.0, Arrival.CONSTANT, seed=9)
    assert offsets == [i / 4.0 for i in range(10)]
    assert offsets == arrival_offsets(10, 4.0, Arrival.CONSTANT, seed=10)


def test_a_closed_loop_or_a_zero_rate_has_no_schedule() -> None:
    with pytest.raises(ValueError, match="closed loop"):
        arrival_offsets(3, 1.0, Arrival.CLOSED, seed=0)
    with pytest.raises(ValueError, match="rate must be > 0"):
        arrival_offsets(3, 0.0, Arrival.POISSON, seed=0)
    assert arrival_offsets(0, 1.0, Arrival.POISSON, seed=0) == []


@pytest.mark.parametrize("distribution", list(LengthDistribution))
def test_prompt_lengths_are_seeded_at_least_one_and_around_the_mean(
    distribution: LengthDistribution,
) -> None:
    lengths = prompt_lengths(4000, 100, distribution, 0.5, seed=4)
    assert lengths == prompt_lengths(4000, 100, distribution, 0.5, seed=4)
    assert min(lengths) >= 1
    assert statistics.fmean(lengths) == pytest.approx(100, rel=0.03)
    if distribution is LengthDistribution.FIXED:
        assert set(lengths) == {100}
    elif distribution is LengthDistribution.UNIFORM:
        assert min(lengths) >= 50 and max(lengths) <= 150
        assert len(set(lengths)) > 50
    else:
        assert statistics.stdev(lengths) == pytest.approx(50, rel=0.1)
    # a wide normal spread still never goes below one token
    assert min(prompt_lengths(1000, 2, LengthDistribution.NORMAL, 3.0, seed=5)) == 1
