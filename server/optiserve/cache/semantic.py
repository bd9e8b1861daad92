"""The semantic layer: nearest cached question in the same partition, then the guard."""

from __future__ import annotations

from dataclasses import dataclass

from optiserve.cache.entry import CacheEntry
from optiserve.cache.exact import EntryTable
from optiserve.cache.guard import Guard
from optiserve.cache.index import FloatArray, VectorIndex
from optiserve.domain.types import CacheLayer, CacheLookup, CacheOutcome

#: Candidates above the threshold the guard may look at, best first.
CANDIDATES = 3


@dataclass(frozen=True)
class SemanticMatch:
    """The layer's decision: the entry served (or None) and its trace line."""

    entry: CacheEntry | None
    lookup: CacheLookup


def match(
    index: VectorIndex,
    table: EntryTable,
    guard: Guard | None,
    *,
    partition: str,
    query: str,
    vector: FloatArray,
    threshold: float,
    now: float,
) -> SemanticMatch:
    """Find a cached answer for ``query`` inside ``partition``.

    Candidates at or above ``threshold`` cosine are checked best first; the first the guard
    accepts is a HIT. Candidates found but all refused make a REJECTED lookup (the trace
    names the best one and the guard's reason); nothing above the threshold is a MISS.
    """
    best_rejected: CacheLookup | None = None
    best_sim = 0.0
    for entry_id, sim in index.search(partition, vector, CANDIDATES):
        best_sim = max(best_sim, sim)
        if sim < threshold:
            break
        entry = table.get(entry_id, now)
        if entry is None or entry.partition != partition:
            continue
        if guard is None:
            return SemanticMatch(entry, _lookup(CacheOutcome.HIT, sim, entry_id, "off"))
        verdict = guard.check(entry.query, query, sim)
        if verdict.accepted:
            return SemanticMatch(entry, _lookup(CacheOutcome.HIT, sim, entry_id, verdict.reason))
        if best_rejected is None:
            best_rejected = _lookup(CacheOutcome.REJECTED, sim, entry_id, verdict.reason)
    if best_rejected is not None:
        return SemanticMatch(None, best_rejected)
    return SemanticMatch(
        None,
        CacheLookup(
            layer=CacheLayer.SEMANTIC,
            outcome=CacheOutcome.MISS,
            similarity=best_sim,
            detail=f"best similarity {best_sim:.3f} < threshold {threshold:.3f}"
            if best_sim
            else "no entry in this partition",
        ),
    )


def _lookup(outcome: CacheOutcome, sim: float, entry_id: int, verdict: str) -> CacheLookup:
    return CacheLookup(
        layer=CacheLayer.SEMANTIC,
        outcome=outcome,
        similarity=sim,
        entry_id=str(entry_id),
        guard_verdict=verdict,
    )
