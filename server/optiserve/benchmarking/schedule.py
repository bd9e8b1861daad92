"""When requests are sent (open loop) and how long synthetic prompts are, both seeded:
the same seed gives the same schedule."""

from __future__ import annotations

import random

from optiserve.domain.benchmark import Arrival, LengthDistribution


def arrival_offsets(n: int, rate: float, arrival: Arrival, seed: int) -> list[float]:
    """Seconds from the start at which each of ``n`` requests is due: equal gaps of
    ``1/rate`` (CONSTANT) or exponential gaps of mean ``1/rate`` (POISSON); the first is
    due at 0. A closed loop has no schedule (ValueError)."""
    if rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    if arrival is Arrival.CONSTANT:
        return [i / rate for i in range(n)]
    if arrival is Arrival.POISSON:
        rng = random.Random(seed)
        offsets, t = [], 0.0
        for _ in range(n):
            offsets.append(t)
            t += rng.expovariate(rate)
        return offsets
    raise ValueError("a closed loop is paced by its concurrency, not by a schedule")


def prompt_lengths(
    n: int, mean: int, distribution: LengthDistribution, spread: float, seed: int
) -> list[int]:
    """``n`` prompt lengths in tokens (each at least 1) around ``mean``."""
    rng = random.Random(seed)
    if distribution is LengthDistribution.FIXED or spread <= 0:
        return [max(1, mean)] * n
    if distribution is LengthDistribution.UNIFORM:
        low, high = mean * (1 - spread), mean * (1 + spread)
        return [max(1, round(rng.uniform(low, high))) for _ in range(n)]
    return [max(1, round(rng.gauss(mean, spread * mean))) for _ in range(n)]
