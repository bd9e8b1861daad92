"""Spending limits: daily and monthly, global and per tenant, that a burst cannot pass.

Each request reserves its worst-case cost before it starts (:meth:`Budgets.reserve`): the
reservation is admitted only when, for every limit that applies, ``settled + reserved +
amount <= limit``, checked and taken atomically, so concurrent requests cannot overshoot
together. When the request ends it settles its measured cost (:meth:`Reservation.settle`),
which is at most the reservation except for the rare provider that reports more than the
worst case (recorded anyway, with a warning). Spend can therefore never pass a limit by more
than that excess.

Days and months are UTC and reset at the exact boundary (00:00:00Z). A reservation settles
in the periods it was made in: a request that straddles midnight counts in the day it
started. A reservation of $0 (a free local model) is always admitted, even when a limit is
spent: free models are what serves once budgets run out.

Amounts are counted in nano-dollars, rounded up (:mod:`optiserve.accounting.spend_counters`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Literal

from optiserve.accounting.config import BudgetConfig
from optiserve.accounting.ledger import Ledger, utc_now
from optiserve.accounting.spend_counters import CounterKey, Hold, Refusal, SpendCounters
from optiserve.domain.errors import BudgetExceeded
from optiserve.domain.pricing import ZERO, BudgetPressure

logger = logging.getLogger(__name__)

NANO = Decimal("1e-9")
CENT = Decimal("0.01")

PeriodKind = Literal["day", "month"]
_ADJECTIVE: dict[PeriodKind, str] = {"day": "daily", "month": "monthly"}


def dollars(value: Decimal) -> str:
    """``$4.98``; amounts under a cent keep up to six decimals (``$0.0042``)."""
    if abs(value) >= CENT:
        return f"${value:.2f}"
    whole, _, fraction = f"{value:.6f}".partition(".")
    return f"${whole}.{fraction.rstrip('0').ljust(2, '0')}"


def period_of(kind: PeriodKind, now: datetime) -> tuple[str, datetime, datetime]:
    """The UTC day or month holding ``now``: ``(name, start, end)``, e.g.
    ``("day:2026-12-02", 2026-12-02T00:00Z, 2026-12-03T00:00Z)``."""
    now = now.astimezone(UTC)
    if kind == "day":
        start = datetime(now.year, now.month, now.day, tzinfo=UTC)
        return f"day:{start:%Y-%m-%d}", start, start + timedelta(days=1)
    start = datetime(now.year, now.month, 1, tzinfo=UTC)
    end = datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=UTC)
    return f"month:{start:%Y-%m}", start, end


def _nano_up(usd: Decimal) -> int:
    return int((usd / NANO).to_integral_value(rounding=ROUND_CEILING))


def _usd(nano: int) -> Decimal:
    return nano * NANO if nano else ZERO


@dataclass(frozen=True)
class BudgetStatusRow:
    """One limit in its current period (GetUsage)."""

    #: E.g. ``"global daily limit $100.00"`` or ``"tenant 'acme' monthly limit $50.00"``.
    limit: str
    limit_usd: Decimal
    spent_usd: Decimal
    reserved_usd: Decimal
    resets_at: datetime


@dataclass(frozen=True)
class _Rule:
    """A configured limit: ``usd`` per ``kind`` for everyone together or each tenant."""

    kind: PeriodKind
    per_tenant: bool
    usd: Decimal

    @property
    def nano(self) -> int:
        # Rounded down (never above what was configured), and at least one nano-dollar.
        return max(1, int((self.usd / NANO).to_integral_value(rounding=ROUND_FLOOR)))

    def name(self, tenant: str) -> str:
        scope = f"tenant {tenant!r}" if self.per_tenant else "global"
        return f"{scope} {_ADJECTIVE[self.kind]} limit {dollars(self.usd)}"

    def key(self, tenant: str, now: datetime) -> CounterKey:
        period, start, end = period_of(self.kind, now)
        scope = f"tenant:{tenant}" if self.per_tenant else "global"
        return CounterKey(scope, period, start, end)


class Reservation:
    """A request's reserved worst case; settle it once when the request ends."""

    def __init__(
        self, counters: SpendCounters, hold: Hold, amount: Decimal, made_at: datetime
    ) -> None:
        self._counters = counters
        self._hold = hold
        self._lock = threading.Lock()
        self._done = False
        #: What was reserved, in dollars.
        self.amount = amount
        #: When it was made: the periods it counts in (a good time for the ledger row).
        self.made_at = made_at

    @property
    def settled(self) -> bool:
        """True once settled or released."""
        return self._done

    def settle(self, actual: Decimal) -> None:
        """Charge ``actual`` (the measured cost, or the reservation itself when usage was
        not reported) instead of the reservation. Only the first call counts."""
        if actual < 0:
            raise ValueError(f"a charge cannot be negative: {actual}")
        with self._lock:
            if self._done:
                return
            self._done = True
        if actual > self.amount:
            logger.warning(
                "a request cost %s, more than the %s it reserved; charging what it cost",
                dollars(actual),
                dollars(self.amount),
            )
        nano = _nano_up(actual)
        if self._hold.keys and (self._hold.amount or nano):
            self._counters.settle(self._hold, nano)

    def release(self) -> None:
        """End a reservation that spent nothing (settle at $0)."""
        self.settle(ZERO)


class Budgets:
    """The configured spending limits over ``counters`` (in memory or shared in Redis)."""

    def __init__(
        self,
        config: BudgetConfig,
        counters: SpendCounters,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        candidates = (
            _Rule("day", True, Decimal(str(config.tenant_daily_usd))),
            _Rule("month", True, Decimal(str(config.tenant_monthly_usd))),
            _Rule("day", False, Decimal(str(config.daily_usd))),
            _Rule("month", False, Decimal(str(config.monthly_usd))),
        )
        self._rules = tuple(rule for rule in candidates if rule.usd > 0)
        self._counters = counters
        self._clock = clock

    def _applicable(self, tenant: str, now: datetime) -> list[tuple[_Rule, CounterKey]]:
        return [(rule, rule.key(tenant, now)) for rule in self._rules]

    def reserve(self, tenant: str, amount: Decimal) -> Reservation:
        """Reserve ``amount`` for a request of ``tenant``; BudgetExceeded naming the limit
        it would pass and when that resets (``retry_after_s`` until then)."""
        now = self._clock()
        applicable = self._applicable(tenant, now)
        keys = tuple(key for _, key in applicable)
        nano = _nano_up(amount)
        if nano <= 0 or not applicable:
            return Reservation(self._counters, Hold(keys, 0), amount, now)
        taken = self._counters.reserve([(key, rule.nano) for rule, key in applicable], nano)
        if isinstance(taken, Refusal):
            raise self._refusal(tenant, amount, applicable, taken, now)
        return Reservation(self._counters, taken, amount, now)

    def _refusal(
        self,
        tenant: str,
        amount: Decimal,
        applicable: list[tuple[_Rule, CounterKey]],
        refusal: Refusal,
        now: datetime,
    ) -> BudgetExceeded:
        # When several limits are spent, name the one that resets last: the earliest time
        # a retry can pass.
        index, spent = max(refusal.over, key=lambda over: applicable[over[0]][1].ends_at)
        rule, key = applicable[index]
        resets = key.ends_at
        return BudgetExceeded(
            f"{rule.name(tenant)} reached ({dollars(_usd(spent))} spent or reserved; this "
            f"request may cost up to {dollars(amount)}); it resets at "
            f"{resets:%Y-%m-%dT%H:%M:%SZ}",
            retry_after_s=(resets - now).total_seconds(),
        )

    def pressure(self, tenant: str) -> BudgetPressure:
        """The tightest limit for ``tenant``: the highest (settled + reserved) / limit."""
        now = self._clock()
        applicable = self._applicable(tenant, now)
        if not applicable:
            return BudgetPressure()
        spends = self._counters.read([key for _, key in applicable])
        fraction, rule, key = max(
            ((spend.total / rule.nano, rule, key) for (rule, key), spend in
             zip(applicable, spends, strict=True)),
            key=lambda found: found[0],
        )  # fmt: skip
        return BudgetPressure(fraction=fraction, limit=rule.name(tenant), resets_at=key.ends_at)

    def status(self) -> list[BudgetStatusRow]:
        """Every global limit, and each tenant's that has a counter in its current period."""
        now = self._clock()
        shown: list[tuple[str, _Rule, CounterKey]] = []
        for rule in self._rules:
            if not rule.per_tenant:
                shown.append(("", rule, rule.key("", now)))
                continue
            period = period_of(rule.kind, now)[0]
            for scope in self._counters.scopes(period):
                if scope.startswith("tenant:"):
                    tenant = scope.removeprefix("tenant:")
                    shown.append((tenant, rule, rule.key(tenant, now)))
        shown.sort(key=lambda item: (item[1].per_tenant, item[0], item[1].kind))
        spends = self._counters.read([key for _, _, key in shown])
        return [
            BudgetStatusRow(
                limit=rule.name(tenant),
                limit_usd=rule.usd,
                spent_usd=_usd(spend.settled),
                reserved_usd=_usd(spend.reserved),
                resets_at=key.ends_at,
            )
            for (tenant, rule, key), spend in zip(shown, spends, strict=True)
        ]

    def load_from(self, ledger: Ledger) -> None:
        """Start from what the ledger says was spent in the current periods (so a restart
        does not reset the budgets). Counters already higher (shared in Redis) stay."""
        now = self._clock()
        for rule in self._rules:
            start = period_of(rule.kind, now)[1]
            per_tenant = rule.per_tenant
            spent = ledger.spent_by_tenant(start) if per_tenant else {"": ledger.spent(start)}
            for tenant, usd in spent.items():
                self._counters.raise_settled(rule.key(tenant, now), _nano_up(usd))

    def close(self) -> None:
        """Release the counters' connections."""
        self._counters.close()
