"""The completion rate a scheduler measures, and the wait it predicts."""

from __future__ import annotations

import pytest

from optiserve.models.local.throughput import CompletionRate


def test_bursts_of_completions_give_the_rate_over_the_window() -> None:
    rate = CompletionRate(window_s=10.0)
    # A batch of 8 finishing together every second for 20 s: 8 per second.
    for second in range(20):
        rate.add(100.0 + second, count=8)
    assert rate.per_s(119.0) == pytest.approx(8.8, rel=0.01)  # 88 in the last 10 s
    assert rate.expected_wait_s(40, 119.0) == pytest.approx(40 / 8.8, rel=0.01)


def test_a_new_server_measures_over_the_time_it_has() -> None:
    rate = CompletionRate(window_s=10.0)
    assert rate.per_s(0.0) == 0.0
    assert rate.expected_wait_s(5, 0.0) is None
    rate.add(1.0, count=4)
    rate.add(2.0, count=4)
    assert rate.per_s(2.0) == pytest.approx(8.0)  # 8 over the 1 s since the first


def test_an_idle_window_forgets_the_old_rate() -> None:
    rate = CompletionRate(window_s=10.0)
    rate.add(1.0, count=50)
    rate.add(2.0, count=50)
    assert rate.per_s(30.0) == 0.0
