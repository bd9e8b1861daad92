"""What a request may spend and what it spent: budget reservations and the usage ledger.

For each model a request tries, the service reserves the model's worst-case cost
(:meth:`Spending.reserve`, which refuses with BudgetExceeded when a limit would be passed),
and when the attempt ends it settles the reservation with the measured cost and writes one
ledger row (:meth:`Spending.settle`). Cost comes from the provider's reported usage at the
model's prices; a reply without usage, or a remote answer cut short, is charged its reserved
worst case and marked estimated — never $0.

The ledger row is committed before the RPC returns: :meth:`Spending.settle` awaits the
SQLite commit on the ledger's own thread. A failed write (disk full, read-only) is logged and
counted (``ledger_failures``); the answer is still returned.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal

from optiserve.accounting.budget import Budgets, BudgetStatusRow, Reservation
from optiserve.accounting.ledger import Ledger, LedgerRow, LedgerTotal, LedgerWriteError
from optiserve.domain.errors import BudgetExceeded
from optiserve.domain.pricing import ZERO, BudgetPressure, TokenCounts
from optiserve.domain.types import ModelInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Charge:
    """What one attempt is charged."""

    counts: TokenCounts
    cost_usd: Decimal
    #: True when the provider reported no usage: cost is the reserved worst case.
    estimated: bool


def charge_for(
    info: ModelInfo, counts: TokenCounts, *, reported: bool, reserved: Decimal
) -> Charge:
    """The charge for ``counts`` on ``info``: measured when ``reported``, else the reserved
    worst case (a free model costs nothing either way)."""
    if reported or info.prices.free:
        return Charge(counts, info.prices.cost(counts), estimated=False)
    return Charge(counts, reserved, estimated=True)


@dataclass(frozen=True)
class LedgerReport:
    """What GetUsage shows from the ledger and the budgets."""

    by_day: list[LedgerTotal]
    by_model: list[LedgerTotal]
    by_tenant: list[LedgerTotal]
    saved_by_layer: dict[str, Decimal]
    budgets: list[BudgetStatusRow]


class Spending:
    """Budgets (optional) and the ledger (optional) behind one small interface."""

    def __init__(
        self, budgets: Budgets | None, ledger: Ledger | None, *, shared_counters: bool = False
    ) -> None:
        self._budgets = budgets
        self._ledger = ledger
        #: Budget counters in Redis: every call is a network round trip, made off the loop.
        self._shared = shared_counters
        # One writer thread: rows commit in arrival order, never blocking the event loop.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger")
        self.ledger_failures = 0

    @property
    def limited(self) -> bool:
        """True when spending limits are configured."""
        return self._budgets is not None

    async def pressure(self, tenant: str) -> BudgetPressure:
        """How close the tightest limit for ``tenant`` is (no limits: 0)."""
        if self._budgets is None:
            return BudgetPressure()
        if self._shared:
            return await asyncio.to_thread(self._budgets.pressure, tenant)
        return self._budgets.pressure(tenant)

    async def reserve(
        self, tenant: str, info: ModelInfo, worst_case: Decimal
    ) -> Reservation | None:
        """Reserve ``worst_case`` for an attempt on ``info``; BudgetExceeded when a limit
        would be passed. None when there are no limits."""
        budgets = self._budgets
        if budgets is None:
            return None
        try:
            if self._shared:
                return await asyncio.to_thread(budgets.reserve, tenant, worst_case)
            return budgets.reserve(tenant, worst_case)
        except BudgetExceeded as exc:
            raise BudgetExceeded(
                f"model {info.name!r}: {exc.message}", retry_after_s=exc.retry_after_s
            ) from None

    async def settle(self, reservation: Reservation | None, row: LedgerRow | None) -> None:
        """Settle ``reservation`` at ``row``'s cost (0 without a row) and commit ``row``,
        on the writer thread; returns once the row is committed."""
        if reservation is None and (row is None or self._ledger is None):
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._writer, self._settle_sync, reservation, row)

    def _settle_sync(self, reservation: Reservation | None, row: LedgerRow | None) -> None:
        if reservation is not None:
            reservation.settle(row.cost_usd if row is not None else ZERO)
        if row is None or self._ledger is None:
            return
        try:
            self._ledger.record(row)
        except LedgerWriteError as exc:
            self.ledger_failures += 1
            log.error("ledger write failed for request %s: %s", row.request_id, exc)

    def report(self) -> LedgerReport | None:
        """Ledger totals and budget status (None without a ledger)."""
        if self._ledger is None:
            return None
        return LedgerReport(
            by_day=self._ledger.totals("day"),
            by_model=self._ledger.totals("model"),
            by_tenant=self._ledger.totals("tenant"),
            saved_by_layer=self._ledger.saved_by_layer(),
            budgets=self._budgets.status() if self._budgets else [],
        )

    def close(self) -> None:
        """Wait for pending ledger writes, then close the ledger and the budget counters."""
        self._writer.shutdown(wait=True)
        if self._ledger is not None:
            self._ledger.close()
        if self._budgets is not None:
            self._budgets.close()
