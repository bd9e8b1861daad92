"""Budgets in memory: atomic reservations, exact UTC resets, pressure, status, restart."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from optiserve.accounting.budget import Budgets, Reservation, dollars
from optiserve.accounting.config import BudgetConfig
from optiserve.accounting.ledger import Ledger
from optiserve.accounting.spend_counters import MemorySpendCounters, SpendCounters
from optiserve.domain.errors import BudgetExceeded

from .helpers import Clock, ledger_row

D = Decimal
LAST_MICROSECOND = timedelta(microseconds=1)


def budgets(clock: Clock, counters: SpendCounters | None = None, **limits: float) -> Budgets:
    return Budgets(BudgetConfig(**limits), counters or MemorySpendCounters(), clock)


def admitted(budget: Budgets, tenant: str, amount: Decimal) -> bool:
    try:
        budget.reserve(tenant, amount).settle(amount)
    except BudgetExceeded:
        return False
    return True


def test_the_refusal_names_the_limit_and_when_it_resets() -> None:
    clock = Clock(datetime(2026, 12, 2, 18, 0, tzinfo=UTC))
    budget = budgets(clock, tenant_daily_usd=5.0)
    budget.reserve("acme", D("4.98")).settle(D("4.98"))
    with pytest.raises(BudgetExceeded) as refused:
        budget.reserve("acme", D("0.10"))
    assert refused.value.message == (
        "tenant 'acme' daily limit $5.00 reached ($4.98 spent or reserved; this request may "
        "cost up to $0.10); it resets at 2026-12-03T00:00:00Z"
    )
    assert refused.value.retry_after_s == 6 * 3600
    budget.reserve("bob", D("0.10")).release()  # another tenant has its own limit
    budget.reserve("acme", D("0.02")).release()  # exactly up to the limit passes


def test_a_free_request_always_passes_and_settling_counts_once() -> None:
    clock = Clock(datetime(2026, 12, 2, 18, 0, tzinfo=UTC))
    budget = budgets(clock, daily_usd=1.0)
    budget.reserve("acme", D("1")).settle(D("1"))
    assert not admitted(budget, "acme", D("0.000000001"))
    free = budget.reserve("acme", D(0))  # a local model: even with the limit spent
    free.settle(D(0))
    assert budget.status()[0].spent_usd == D("1")
    clock.now += timedelta(days=1)
    reservation = budget.reserve("acme", D("0.4"))
    reservation.settle(D("0.25"))
    reservation.settle(D("0.4"))  # ignored: already settled
    reservation.release()  # ignored too
    assert reservation.settled
    (row,) = budget.status()
    assert (row.spent_usd, row.reserved_usd) == (D("0.25"), D(0))


def test_a_charge_above_the_reservation_is_recorded_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    budget = budgets(Clock(datetime(2026, 12, 2, tzinfo=UTC)), daily_usd=1.0)
    with caplog.at_level(logging.WARNING):
        budget.reserve("acme", D("0.10")).settle(D("0.15"))
    assert "more than the $0.10 it reserved" in caplog.text
    assert budget.status()[0].spent_usd == D("0.15")
    with pytest.raises(ValueError, match="negative"):
        budget.reserve("acme", D("0.10")).settle(D("-1"))


@pytest.mark.parametrize(
    ("limits", "last_instant", "resets_at"),
    [
        ({"daily_usd": 1.0}, datetime(2026, 12, 2, 23, 59, 59, 999_999, tzinfo=UTC),
         "2026-12-03T00:00:00Z"),
        ({"tenant_daily_usd": 1.0}, datetime(2027, 2, 28, 23, 59, 59, 999_999, tzinfo=UTC),
         "2027-03-01T00:00:00Z"),
        ({"monthly_usd": 1.0}, datetime(2026, 11, 30, 23, 59, 59, 999_999, tzinfo=UTC),
         "2026-12-01T00:00:00Z"),
        ({"tenant_monthly_usd": 1.0}, datetime(2028, 2, 29, 23, 59, 59, 999_999, tzinfo=UTC),
         "2028-03-01T00:00:00Z"),
        ({"monthly_usd": 1.0, "daily_usd": 0.5},
         datetime(2026, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC), "2027-01-01T00:00:00Z"),
    ],
    ids=["daily", "tenant daily, end of February", "monthly, last day of November",
         "tenant monthly, leap February", "monthly and daily, December to January"],
)  # fmt: skip
def test_limits_reset_at_the_exact_utc_boundary(
    limits: dict[str, float], last_instant: datetime, resets_at: str
) -> None:
    clock = Clock(last_instant - timedelta(hours=1))
    budget = budgets(clock, **limits)
    spend = D(str(min(limits.values())))
    budget.reserve("acme", spend).settle(spend)
    clock.now = last_instant
    with pytest.raises(BudgetExceeded, match=f"resets at {resets_at}") as refused:
        budget.reserve("acme", D("0.01"))
    assert refused.value.retry_after_s == pytest.approx(1e-6)
    assert budget.pressure("acme").reached
    clock.now = last_instant + LAST_MICROSECOND  # 00:00:00.000000 of the next period
    assert budget.pressure("acme").fraction == 0
    budget.reserve("acme", spend).settle(spend)


def test_when_day_and_month_are_both_spent_the_later_reset_is_named() -> None:
    clock = Clock(datetime(2026, 12, 2, 12, tzinfo=UTC))
    budget = budgets(clock, daily_usd=1.0, monthly_usd=1.0)
    budget.reserve("acme", D(1)).settle(D(1))
    with pytest.raises(BudgetExceeded, match="global monthly limit") as refused:
        budget.reserve("acme", D("0.5"))
    assert "2027-01-01T00:00:00Z" in refused.value.message


def test_a_request_straddling_midnight_counts_in_the_day_it_reserved_in() -> None:
    clock = Clock(datetime(2026, 12, 2, 23, 59, 59, tzinfo=UTC))
    budget = budgets(clock, daily_usd=1.0, monthly_usd=10.0)
    reservation = budget.reserve("acme", D("0.8"))
    clock.now = datetime(2026, 12, 3, 0, 0, 1, tzinfo=UTC)
    reservation.settle(D("0.7"))
    daily, monthly = budget.status()
    assert (daily.limit, daily.spent_usd, daily.reserved_usd) == (
        "global daily limit $1.00", D(0), D(0))  # fmt: skip
    assert monthly.spent_usd == D("0.7")
    assert budget.pressure("acme").fraction == pytest.approx(0.07)
    clock.now = datetime(2026, 12, 2, 23, 59, 59, 500_000, tzinfo=UTC)  # back in Dec 2
    assert budget.pressure("acme").fraction == pytest.approx(0.7)


def test_pressure_is_the_tightest_limit_with_reservations_counted() -> None:
    clock = Clock(datetime(2026, 12, 2, 12, tzinfo=UTC))
    budget = budgets(clock, daily_usd=100.0, tenant_daily_usd=1.0, tenant_monthly_usd=20.0)
    assert budgets(clock).pressure("acme").fraction == 0  # no limits
    budget.reserve("acme", D("0.5")).settle(D("0.5"))
    running = budget.reserve("acme", D("0.4"))
    pressure = budget.pressure("acme")
    assert pressure.fraction == pytest.approx(0.9)
    assert pressure.limit == "tenant 'acme' daily limit $1.00"
    assert pressure.resets_at == datetime(2026, 12, 3, tzinfo=UTC)
    assert not pressure.reached
    running.settle(D("0.5"))
    assert budget.pressure("acme").reached
    assert budget.pressure("bob").fraction == pytest.approx(0.01)  # the global daily limit


def test_status_lists_global_limits_and_each_tenant_seen() -> None:
    clock = Clock(datetime(2026, 12, 2, 12, tzinfo=UTC))
    budget = budgets(clock, daily_usd=100.0, tenant_daily_usd=5.0)
    assert [row.limit for row in budget.status()] == ["global daily limit $100.00"]
    budget.reserve("bob", D("0.2"))
    budget.reserve("acme", D("1")).settle(D("0.5"))
    rows = [(r.limit, r.limit_usd, r.spent_usd, r.reserved_usd) for r in budget.status()]
    assert rows == [
        ("global daily limit $100.00", D(100), D("0.5"), D("0.2")),
        ("tenant 'acme' daily limit $5.00", D(5), D("0.5"), D(0)),
        ("tenant 'bob' daily limit $5.00", D(5), D(0), D("0.2")),
    ]
    assert {row.resets_at for row in budget.status()} == {datetime(2026, 12, 3, tzinfo=UTC)}


def test_a_restart_keeps_the_spend_of_the_current_day_and_month(tmp_path: Path) -> None:
    clock = Clock(datetime(2026, 12, 2, 12, tzinfo=UTC))
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    ledger.record(ledger_row(datetime(2026, 11, 30, 23, tzinfo=UTC), "50", tenant="acme"))
    ledger.record(ledger_row(datetime(2026, 12, 1, 23, tzinfo=UTC), "2", tenant="acme"))
    ledger.record(ledger_row(datetime(2026, 12, 2, 1, tzinfo=UTC), "3", tenant="acme"))
    ledger.record(ledger_row(datetime(2026, 12, 2, 2, tzinfo=UTC), "0.25", tenant="bob"))
    limits = {"daily_usd": 10.0, "monthly_usd": 100.0, "tenant_daily_usd": 5.0}
    budget = budgets(clock, **limits)
    budget.load_from(ledger)
    rows = [(r.limit, r.spent_usd) for r in budget.status()]
    assert rows == [
        ("global daily limit $10.00", D("3.25")),
        ("global monthly limit $100.00", D("5.25")),
        ("tenant 'acme' daily limit $5.00", D("3")),
        ("tenant 'bob' daily limit $5.00", D("0.25")),
    ]
    with pytest.raises(BudgetExceeded, match="tenant 'acme' daily limit"):
        budget.reserve("acme", D("2.01"))
    ledger.close()


@pytest.mark.parametrize(
    ("limit", "amount", "charge"),
    [(1.0, D("0.03"), D(1)), (0.5, D("0.007"), D(1)), (1.0, D("0.03"), D("0.5"))],
    ids=["charge = reservation", "odd amounts", "charge = half the reservation"],
)
def test_100_concurrent_reservations_never_pass_the_limit(
    tmp_path: Path, limit: float, amount: Decimal, charge: Decimal
) -> None:
    clock = Clock(datetime(2026, 12, 2, 12, tzinfo=UTC))
    budget = budgets(clock, daily_usd=limit, tenant_daily_usd=limit * 2)
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    start = threading.Barrier(100)

    def request(i: int) -> bool:
        start.wait()
        try:
            reservation: Reservation = budget.reserve(f"t{i % 3}", amount)
        except BudgetExceeded:
            return False
        cost = amount * charge
        ledger.record(ledger_row(clock.now, cost, request_id=f"r{i}", tenant=f"t{i % 3}"))
        reservation.settle(cost)
        return True

    with ThreadPoolExecutor(max_workers=100) as pool:
        results = list(pool.map(request, range(100)))
    spent = ledger.spent(clock.now - timedelta(hours=1))
    assert spent <= D(str(limit))
    if charge == 1:
        assert sum(results) == int(D(str(limit)) / amount)  # floor(B / amount) exactly
    assert budget.status()[0].spent_usd == spent
    assert budget.status()[0].reserved_usd == 0
    ledger.close()


def test_dollars_are_shown_to_the_cent_and_small_amounts_in_full() -> None:
    assert dollars(D("4.985")) == "$4.98"
    assert dollars(D(5)) == "$5.00"
    assert dollars(D("0.0042")) == "$0.0042"
    assert dollars(D("0.000315")) == "$0.000315"
    assert dollars(D(0)) == "$0.00"
