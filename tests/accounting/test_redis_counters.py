"""Budget counters shared through a real redis-server, and the fallback when it is down."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import pytest
import redis

from optiserve.accounting.budget import Budgets
from optiserve.accounting.config import BudgetConfig
from optiserve.accounting.ledger import Ledger
from optiserve.accounting.spend_counters import EXPIRY_GRACE, PREFIX, RedisSpendCounters
from optiserve.domain.errors import BudgetExceeded

from .helpers import Clock, free_port, ledger_row

D = Decimal


@pytest.fixture
def replicas(redis_url: str, clock: Clock) -> list[Budgets]:
    """Two replicas' budgets on one Redis: a global daily limit of $1, $0.50 per tenant."""
    config = BudgetConfig(daily_usd=1.0, tenant_daily_usd=0.5)
    # A generous timeout: a busy CI machine must not make the test fall back to memory.
    made = [Budgets(config, RedisSpendCounters(redis_url, timeout_s=5.0), clock) for _ in range(2)]
    yield made
    for budget in made:
        budget.close()


def test_two_replicas_share_one_limit(replicas: list[Budgets]) -> None:
    one, two = replicas
    one.reserve("acme", D("0.3")).settle(D("0.3"))
    running = one.reserve("bob", D("0.4"))
    assert two.pressure("carol").fraction == pytest.approx(0.7)  # global: settled + reserved
    with pytest.raises(BudgetExceeded, match="tenant 'acme' daily limit"):
        two.reserve("acme", D("0.25"))
    with pytest.raises(BudgetExceeded, match="global daily limit"):
        two.reserve("carol", D("0.35"))
    running.settle(D("0.1"))
    two.reserve("carol", D("0.35")).release()
    rows = [(r.limit, r.spent_usd, r.reserved_usd) for r in two.status()]
    assert rows == [
        ("global daily limit $1.00", D("0.4"), D(0)),
        ("tenant 'acme' daily limit $0.50", D("0.3"), D(0)),
        ("tenant 'bob' daily limit $0.50", D("0.1"), D(0)),
        ("tenant 'carol' daily limit $0.50", D(0), D(0)),
    ]


def test_100_concurrent_reservations_on_two_replicas_admit_exactly_the_limit(
    replicas: list[Budgets],
) -> None:
    amount = D("0.03")
    start = threading.Barrier(100)

    def request(i: int) -> bool:
        start.wait()
        try:
            reservation = replicas[i % 2].reserve(f"t{i % 5}", amount)
        except BudgetExceeded:
            return False
        reservation.settle(amount)
        return True

    with ThreadPoolExecutor(max_workers=100) as pool:
        results = list(pool.map(request, range(100)))
    assert sum(results) == 33  # floor($1.00 / $0.03), the global limit binds
    (global_row,) = [r for r in replicas[1].status() if r.limit.startswith("global")]
    assert global_row.spent_usd == D("0.99")
    assert global_row.reserved_usd == 0


def test_replicas_loading_their_ledgers_do_not_count_twice(
    redis_url: str, clock: Clock, tmp_path: Path
) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    ledger.record(ledger_row(clock.now, "0.6", tenant="acme"))
    config = BudgetConfig(daily_usd=1.0)
    one = Budgets(config, RedisSpendCounters(redis_url), clock)
    two = Budgets(config, RedisSpendCounters(redis_url), clock)
    one.load_from(ledger)
    two.load_from(ledger)  # the same spend seen again: Redis keeps the larger, not the sum
    assert two.status()[0].spent_usd == D("0.6")
    with pytest.raises(BudgetExceeded):
        one.reserve("acme", D("0.41"))
    ledger.close()
    one.close()
    two.close()


def test_redis_down_falls_back_to_this_process_with_one_warning(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    counters = RedisSpendCounters(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.1)
    budget = Budgets(BudgetConfig(daily_usd=1.0), counters, clock)
    with caplog.at_level(logging.WARNING):
        budget.reserve("acme", D("0.6")).settle(D("0.6"))
        with pytest.raises(BudgetExceeded):
            budget.reserve("acme", D("0.5"))
        assert budget.pressure("acme").fraction == pytest.approx(0.6)
    warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1
    assert not counters.shared
    assert counters.errors >= 1
    budget.close()


def test_what_redis_missed_is_added_once_it_answers(
    start_redis: Callable[[int], str], clock: Clock
) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    counters = RedisSpendCounters(url, timeout_s=0.1, retry_after_s=0.05)
    budget = Budgets(BudgetConfig(daily_usd=1.0), counters, clock)
    budget.reserve("acme", D("0.4")).settle(D("0.3"))  # while down: counted here only
    start_redis(port)
    time.sleep(0.06)  # the retry interval
    budget.reserve("acme", D("0.2")).settle(D("0.2"))  # first hands Redis what it missed
    assert counters.shared
    fresh = Budgets(BudgetConfig(daily_usd=1.0), RedisSpendCounters(url), clock)
    (row,) = fresh.status()
    assert (row.spent_usd, row.reserved_usd) == (D("0.5"), D(0))
    assert budget.status() == fresh.status()
    budget.close()
    fresh.close()


def test_keys_expire_a_little_after_their_period(replicas: list[Budgets], redis_url: str) -> None:
    replicas[0].reserve("acme", D("0.1")).release()
    client = redis.Redis.from_url(redis_url)
    resets_at = replicas[0].status()[0].resets_at
    left = (resets_at + EXPIRY_GRACE - resets_at.now(resets_at.tzinfo)).total_seconds()
    for key in client.keys(PREFIX + "*"):
        assert left - 5 < client.pttl(key) / 1000 <= left


def test_a_redis_restarted_empty_does_not_go_negative(
    replicas: list[Budgets], redis_url: str
) -> None:
    running = replicas[0].reserve("acme", D("0.4"))
    redis.Redis.from_url(redis_url).flushall()  # as if Redis restarted without persistence
    running.settle(D("0.1"))
    (row, *_) = replicas[1].status()
    assert (row.spent_usd, row.reserved_usd) == (D("0.1"), D(0))
