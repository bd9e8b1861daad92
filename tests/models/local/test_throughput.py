"""The service rate a scheduler measures (completions per busy second), and the wait it
predicts."""

from __future__ import annotations

import pytest

from optiserve.models.local.throughput import CompletionRate


def test_bursts_of_completions_give_the_rate_of_the_work() -> None:
    rate = CompletionRate(window_s=10.0)
    # Steps of 50 ms; a batch of 8 finishes every 20th step: 8 per busy second.
    now = 100.0
    for i in range(400):
        now += 0.05
        rate.step(now, 0.05, 8 if i % 20 == 19 else 0)
    # The window's edge cuts a batch or not: 80 or 88 completions in about 10 busy s.
    assert 7.9 <= rate.per_s(now) <= 8.8
    wait = rate.expected_wait_s(40, now)
    assert wait is not None and 40 / 8.8 <= wait <= 40 / 7.9


def test_idle_time_does_not_lower_the_rate() -> None:
    rate = CompletionRate(window_s=10.0)
    rate.step(1.0, 0.5, 4)
    # Idle for 8 s, then a burst: the rate is still that of the work.
    rate.step(9.5, 0.5, 4)
    assert rate.per_s(9.5) == pytest.approx(8.0)


def test_no_rate_until_it_is_measured_and_old_steps_are_forgotten() -> None:
    rate = CompletionRate(window_s=10.0)
    assert rate.per_s(0.0) == 0.0
    assert rate.expected_wait_s(5, 0.0) is None
    rate.step(1.0, 0.2, 1)
    assert rate.per_s(1.0) == 0.0  # one completion is not a rate
    rate.step(1.2, 0.2, 1)
    assert rate.per_s(1.2) == pytest.approx(5.0)
    assert rate.per_s(30.0) == 0.0
