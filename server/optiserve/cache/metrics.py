"""Prometheus view of the response cache, read from :meth:`ResponseCache.stats` at scrape time.

``register_cache_metrics(cache, registry)`` adds a collector to the caller's registry (never
the global one). Series:

* ``optiserve_cache_lookups_total{layer, outcome}``: exact/semantic hits, misses, guard
  rejections (layer "semantic", outcome "rejected"), skipped lookups (layer "none");
* ``optiserve_cache_hit_ratio``: hits over lookups made (exact and semantic hits over hits
  plus misses; skipped lookups are not counted), 0 before the first lookup;
* ``optiserve_cache_entries`` and ``optiserve_cache_bytes``: current size;
* ``optiserve_cache_evictions_total``, ``optiserve_cache_expirations_total``,
  ``optiserve_cache_stores_total``;
* ``optiserve_cache_cost_saved_usd_total`` and ``optiserve_cache_tokens_saved_total``:
  measured cost and completion tokens of the original generations of every hit.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from optiserve.cache.entry import CacheStats


class CacheCollector:
    """A custom collector over any object with a ``stats() -> CacheStats`` method."""

    def __init__(self, cache: Any) -> None:
        self._cache = cache

    def collect(self) -> Iterator[Any]:
        """The cache's series (called by the registry on every scrape)."""
        stats: CacheStats = self._cache.stats()
        lookups = CounterMetricFamily(
            "optiserve_cache_lookups",
            "Cache lookups by layer and outcome.",
            labels=["layer", "outcome"],
        )
        lookups.add_metric(["exact", "hit"], stats.exact_hits)
        lookups.add_metric(["semantic", "hit"], stats.semantic_hits)
        lookups.add_metric(["semantic", "rejected"], stats.guard_rejections)
        lookups.add_metric(["all", "miss"], stats.misses)
        lookups.add_metric(["none", "skipped"], stats.skipped)
        yield lookups
        hits = stats.exact_hits + stats.semantic_hits
        looked = hits + stats.misses
        yield GaugeMetricFamily(
            "optiserve_cache_hit_ratio",
            "Cache hits over lookups made (skipped lookups not counted).",
            value=hits / looked if looked else 0.0,
        )
        yield GaugeMetricFamily("optiserve_cache_entries", "Entries cached.", value=stats.entries)
        yield GaugeMetricFamily("optiserve_cache_bytes", "Bytes cached.", value=stats.bytes)
        for name, value, doc in (
            ("stores", stats.stores, "Answers stored."),
            ("evictions", stats.evictions, "Entries evicted by the size limits."),
            ("expirations", stats.expirations, "Entries dropped at their TTL."),
            ("cost_saved_usd", stats.cost_saved_usd, "Cost of the generations hits replaced."),
            ("tokens_saved", stats.tokens_saved, "Completion tokens hits did not generate."),
            ("redis_errors", stats.redis_errors, "Redis calls that failed (fallback used)."),
            ("store_errors", stats.store_errors, "Cache writes that failed (logged)."),
        ):
            yield CounterMetricFamily(f"optiserve_cache_{name}", doc, value=value)


def register_cache_metrics(cache: Any, registry: CollectorRegistry) -> CacheCollector:
    """Register the cache's collector in ``registry`` and return it."""
    collector = CacheCollector(cache)
    registry.register(collector)
    return collector
