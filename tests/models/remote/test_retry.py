"""The retry policy: bounded calls, exponential backoff with jitter, Retry-After."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from optiserve.models.remote.retry import RetryPolicy, retry_after_s


def policy(jitter: float = 0.0, max_retries: int = 3) -> RetryPolicy:
    return RetryPolicy(max_retries, backoff_s=0.5, backoff_max_s=4.0, jitter=lambda: jitter)


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    low, high = policy(0.0, 10), policy(0.999999, 10)
    assert [low.wait_s(n, None, None, 0.0) for n in (1, 2, 3, 4, 5)] == [0.25, 0.5, 1.0, 2.0, 2.0]
    assert high.wait_s(1, None, None, 0.0) == pytest.approx(0.5)
    assert high.wait_s(6, None, None, 0.0) == pytest.approx(4.0)


def test_calls_are_bounded() -> None:
    p = policy(max_retries=2)
    assert p.max_calls == 3
    assert p.wait_s(2, None, None, 0.0) is not None
    assert p.wait_s(3, None, None, 0.0) is None


def test_retry_after_wins_when_longer_and_is_never_waited_past_its_cap() -> None:
    p = policy()
    assert p.wait_s(1, 3.0, None, 0.0) == 3.0
    assert p.wait_s(1, 0.01, None, 0.0) == 0.25
    assert p.wait_s(1, 4.5, None, 0.0) is None  # longer than backoff_max_s: fail now


def test_a_wait_past_the_deadline_is_not_taken() -> None:
    p = policy()
    assert p.wait_s(1, 1.0, deadline=10.5, now=10.0) is None
    assert p.wait_s(1, 1.0, deadline=12.0, now=10.0) == 1.0


def test_retry_after_headers() -> None:
    assert retry_after_s({"retry-after": "2"}) == 2.0
    assert retry_after_s({"retry-after": "0.2"}) == 0.2
    assert retry_after_s({"retry-after-ms": "150", "retry-after": "9"}) == 0.15
    assert retry_after_s({}) is None
    assert retry_after_s({"retry-after": "soon"}) is None
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 28 <= (retry_after_s({"retry-after": when}) or 0) <= 30
