"""Spending: rows arriving together are committed together (group commit), none lost."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from contextlib import closing
from decimal import Decimal
from pathlib import Path

from optiserve.accounting.ledger import Ledger, LedgerRow, utc_now
from optiserve.accounting.spend import Spending
from optiserve.domain.pricing import TokenCounts


class CountingLedger(Ledger):
    """A real ledger that counts its transactions."""

    transactions = 0

    def record_many(self, rows: Sequence[LedgerRow]) -> None:
        self.transactions += 1
        super().record_many(rows)


def _row(i: int) -> LedgerRow:
    return LedgerRow(
        at=utc_now(),
        request_id=f"r{i}",
        tenant="t",
        route="",
        model="m",
        provider="p",
        counts=TokenCounts(input_tokens=10, output_tokens=2),
        cost_usd=Decimal("0.000001"),
        cost_saved_usd=Decimal(0),
        cache_layer="",
        latency_ms=1.0,
        status="OK",
        usage_estimated=False,
    )


async def test_concurrent_rows_share_commits_and_all_land(tmp_path: Path) -> None:
    ledger = CountingLedger(tmp_path / "ledger.sqlite3", synchronous="full")
    spending = Spending(None, ledger)
    await asyncio.gather(*(spending.settle(None, _row(i)) for i in range(300)))
    committed = ledger.transactions
    spending.close()
    with closing(Ledger(tmp_path / "ledger.sqlite3")) as reopened:
        assert {r.request_id for r in reopened.rows()} == {f"r{i}" for i in range(300)}
    assert committed < 300, "rows waiting together must be committed in one transaction"
