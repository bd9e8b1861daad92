"""What a request may spend and what it spent: budget reservations and the usage ledger.

For each model a request tries, the service reserves the model's worst-case cost
(:meth:`Spending.reserve`, which refuses with BudgetExceeded when a limit would be passed),
and when the attempt ends it settles the reservation with the measured cost and writes one
ledger row (:meth:`Spending.settle`). Cost comes from the provider's reported usage at the
model's prices; a reply without usage, or a remote answer cut short, is charged its reserved
worst case and marked estimated — never $0.

The ledger row is committed before the RPC returns: :meth:`Spending.settle` awaits the
SQLite commit on the ledger's own writer thread. That thread commits every row waiting when
it gets to them in one transaction (a group commit), so under load the rows of many requests
share one commit instead of queueing for one each. A failed write (disk full, read-only) is
logged and counted (``ledger_failures``); the answer is still returned.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
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
        self._writer = _GroupWriter(self._commit) if ledger is not None else None
        self.ledger_failures = 0
        #: USD charged since start by (model, provider), with or without a ledger
        #: (read by the metrics thread, hence the lock).
        self._spent: dict[tuple[str, str], Decimal] = {}
        self._spent_lock = threading.Lock()

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
        """Settle ``reservation`` at ``row``'s cost (0 without a row) and commit ``row``;
        returns once the row is committed (or its write failed, logged and counted)."""
        if row is not None:
            with self._spent_lock:
                key = (row.model, row.provider)
                self._spent[key] = self._spent.get(key, ZERO) + row.cost_usd
        if self._writer is None or row is None:
            if reservation is not None:
                await self._off_loop(reservation.settle, row.cost_usd if row else ZERO)
            return
        await asyncio.wrap_future(self._writer.submit(reservation, row))

    async def _off_loop(self, call: Callable[[Decimal], None], amount: Decimal) -> None:
        if self._shared:
            await asyncio.to_thread(call, amount)
        else:
            call(amount)

    def _commit(self, batch: list[tuple[Reservation | None, LedgerRow]]) -> None:
        """Settle a batch's reservations and commit its rows in one transaction (runs on
        the writer thread)."""
        for reservation, row in batch:
            if reservation is not None:
                try:
                    reservation.settle(row.cost_usd)
                except Exception:  # the row still commits: the ledger is the record
                    log.exception("settling the reservation of %s failed", row.request_id)
        assert self._ledger is not None
        try:
            self._ledger.record_many([row for _, row in batch])
        except LedgerWriteError as exc:
            self.ledger_failures += len(batch)
            log.error("ledger write failed for %d rows: %s", len(batch), exc)

    def spent(self) -> dict[tuple[str, str], Decimal]:
        """USD charged since start (every settled attempt) by (model, provider)."""
        with self._spent_lock:
            return dict(self._spent)

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
        if self._writer is not None:
            self._writer.close()
        if self._ledger is not None:
            self._ledger.close()
        if self._budgets is not None:
            self._budgets.close()


class _GroupWriter:
    """One thread that commits what is waiting, all at once: each :meth:`submit` returns a
    future resolved when its row is committed."""

    #: Most rows in one transaction (bounds a commit's time and memory).
    MAX_BATCH = 512

    def __init__(
        self, commit: Callable[[list[tuple[Reservation | None, LedgerRow]]], None]
    ) -> None:
        self._commit = commit
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self._thread.start()

    def submit(self, reservation: Reservation | None, row: LedgerRow) -> Future[None]:
        """Queue ``row`` (and the reservation it settles) for the next commit."""
        done: Future[None] = Future()
        self._queue.put(_Pending(reservation, row, done))
        return done

    def close(self) -> None:
        """Commit what is queued, then stop the thread."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            error: BaseException | None = None
            try:
                self._commit([(p.reservation, p.row) for p in batch])
            except BaseException as exc:  # a bug: fail the waiting requests, keep serving
                log.exception("ledger writer failed")
                error = exc
            for p in batch:
                # A waiter whose request was cancelled cancelled its future: nothing to tell.
                if p.done.set_running_or_notify_cancel():
                    if error is None:
                        p.done.set_result(None)
                    else:
                        p.done.set_exception(error)


@dataclass(frozen=True)
class _Pending:
    reservation: Reservation | None
    row: LedgerRow
    done: Future[None]
