"""Prometheus view of spending, read from :class:`Spending` at scrape time.

``register_spend_metrics(spending, registry)`` adds a collector to the caller's registry
(never the global one). Series:

* ``optiserve_spend_usd_total{model, provider}``: USD charged since start, every settled
  attempt (cut-short ones included; cache hits under provider "cache" at 0), whether or
  not the ledger is on;
* ``optiserve_ledger_write_failures_total``: ledger rows whose write failed (logged).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily

from optiserve.accounting.spend import Spending


class SpendCollector:
    """A custom collector over a :class:`Spending`."""

    def __init__(self, spending: Spending) -> None:
        self._spending = spending

    def collect(self) -> Iterator[Any]:
        """The spending series (called by the registry on every scrape)."""
        spend = CounterMetricFamily(
            "optiserve_spend_usd",
            "USD charged for generation, by model and provider.",
            labels=["model", "provider"],
        )
        for (model, provider), usd in sorted(self._spending.spent().items()):
            spend.add_metric([model, provider], float(usd))
        yield spend
        yield CounterMetricFamily(
            "optiserve_ledger_write_failures",
            "Ledger rows whose write failed (logged; the answer was still returned).",
            value=self._spending.ledger_failures,
        )


def register_spend_metrics(spending: Spending, registry: CollectorRegistry) -> SpendCollector:
    """Register the spending collector in ``registry`` and return it."""
    collector = SpendCollector(spending)
    registry.register(collector)
    return collector
