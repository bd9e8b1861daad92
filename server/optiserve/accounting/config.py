"""Settings of the usage ledger and the spending limits (``[ledger]``, ``[budget]``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from optiserve.domain.settings import at_least, between, check


@dataclass(frozen=True)
class LedgerConfig:
    """The usage ledger: one SQLite row per request, committed before the RPC returns."""

    enabled: bool = True
    #: SQLite file ("" = ledger.sqlite3 in the data directory).
    path: str = ""
    #: "normal": a committed row survives the server being killed (kill -9); "full": also
    #: the machine losing power (an fsync per commit, about 1 ms here).
    synchronous: Literal["normal", "full"] = "normal"

    def __post_init__(self) -> None:
        check(self)


@dataclass(frozen=True)
class BudgetConfig:
    """Spending limits in US dollars (0 = no limit). Days and months are UTC."""

    daily_usd: float = 0.0
    monthly_usd: float = 0.0
    #: The same limits for each tenant (API key) on its own.
    tenant_daily_usd: float = 0.0
    tenant_monthly_usd: float = 0.0
    #: At this fraction of a limit, routes move to cheaper tiers (and may compress); at 1
    #: only free (local) models serve.
    pressure_fraction: float = 0.9

    def __post_init__(self) -> None:
        check(
            self,
            {
                "daily_usd": at_least(0),
                "monthly_usd": at_least(0),
                "tenant_daily_usd": at_least(0),
                "tenant_monthly_usd": at_least(0),
                "pressure_fraction": between(0, 1),
            },
        )
