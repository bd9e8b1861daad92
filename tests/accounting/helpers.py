"""Builders shared by the accounting tests."""

from __future__ import annotations

import socket
from datetime import datetime
from decimal import Decimal

from optiserve.accounting.ledger import LedgerRow
from optiserve.domain.pricing import ZERO, TokenCounts


class Clock:
    """A clock the test sets by hand (``clock.now = ...``)."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ledger_row(
    at: datetime,
    cost: str | Decimal,
    *,
    request_id: str = "r",
    tenant: str = "acme",
    model: str = "claude",
    counts: TokenCounts | None = None,
    saved: str = "0",
    layer: str = "",
    status: str = "OK",
    estimated: bool = False,
) -> LedgerRow:
    """A ledger row with the fields a test cares about."""
    return LedgerRow(
        at=at,
        request_id=request_id,
        tenant=tenant,
        route="auto" if not layer else "",
        model=model,
        provider="anthropic" if not layer else "cache",
        counts=counts or TokenCounts(input_tokens=10, output_tokens=5),
        cost_usd=Decimal(cost) if cost else ZERO,
        cost_saved_usd=Decimal(saved),
        cache_layer=layer,
        latency_ms=12.5,
        status=status,
        usage_estimated=estimated,
    )
