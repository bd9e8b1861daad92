"""A point's prompts: synthetic ones of about the asked length, the workload's own cycled,
and exactly the asked share of repeats, all seeded."""

from __future__ import annotations

import random

from optiserve.benchmarking.prompts import point_prompts, repeat_count, synthetic_prompt
from optiserve.domain.benchmark import Point, Workload

POINT = Point(
    target="m", input_tokens=40, output_tokens=8, concurrency=1, rate=0.0, batch_size=0, cache=True
)


def test_a_synthetic_prompt_has_about_one_word_per_token() -> None:
    rng = random.Random(0)
    for tokens in (1, 2, 16, 300):
        text = synthetic_prompt(tokens, rng)
        assert text.endswith("?")
        assert len(text.split()) == max(1, tokens - 1)
        assert text.isascii()


def test_prompts_are_seeded_and_synthetic_ones_differ() -> None:
    w = Workload(targets=("m",))
    a = point_prompts(w, POINT, 30, seed=1)
    assert a == point_prompts(w, POINT, 30, seed=1)
    assert a != point_prompts(w, POINT, 30, seed=2)
    assert len(set(a)) == 30


def test_the_workloads_own_prompts_are_cycled() -> None:
    w = Workload(targets=("m",), prompts=("one", "two", "three"))
    prompts = point_prompts(w, POINT, 7, seed=0)
    assert sorted(prompts[:3]) == ["one", "three", "two"]
    assert prompts[3:6] == prompts[:3] and prompts[6] == prompts[0]


def test_repeat_fraction_repeats_that_share_of_earlier_prompts() -> None:
    for fraction, n in ((0.0, 20), (0.25, 20), (0.5, 41), (1.0, 10)):
        w = Workload(targets=("m",), repeat_fraction=fraction)
        prompts = point_prompts(w, POINT, n, seed=3)
        repeats = repeat_count(n, fraction)
        assert repeats == min(n - 1, round(fraction * n))
        assert len(set(prompts)) == n - repeats
    assert point_prompts(Workload(targets=("m",), repeat_fraction=1.0), POINT, 1, seed=0)
    assert point_prompts(Workload(targets=("m",)), POINT, 0, seed=0) == []
