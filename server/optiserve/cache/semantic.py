"""The semantic layer: nearest cached question in the same partition, then the guard."""

from __future__ import annotations

from dataclasses import dataclass

from optiserve.cache.entry import CacheEntry
from optiserve.cache.exact import EntryTable
from optiserve.cache.expiry import expired_detail
from optiserve.cache.guard import Guard
from optiserve.cache.index import FloatArray, VectorIndex
from optiserve.domain.types import CacheLayer, CacheLookup, CacheOutcome

#: Candidates above the threshold the guard may look at, best first.
CANDIDATES = 3


@dataclass(frozen=True)
class SemanticMatch:
    """The layer's decision: the entry served (or None) and its trace line, with the
    candidates found past their TTL (the caller drops and counts them)."""

    entry: CacheEntry | None
    lookup: CacheLookup
    expired: tuple[CacheEntry, ...] = ()


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
    Candidates past their TTL are never served: returned in ``expired``, and when nothing
    else matched, the MISS names the best of them (how long ago it expired).
    """
    best_rejected: CacheLookup | None = None
    expired: list[tuple[CacheEntry, float]] = []
    best_sim = 0.0
    for entry_id, sim in index.search(partition, vector, CANDIDATES):
        best_sim = max(best_sim, sim)
        if sim < threshold:
            break
        entry = table.peek(entry_id)
        if entry is None or entry.partition != partition:
            continue
        if entry.expired(now):
            expired.append((entry, sim))
            continue
        gone = tuple(e for e, _ in expired)
        if guard is None:
            return SemanticMatch(entry, _lookup(CacheOutcome.HIT, sim, entry_id, "off"), gone)
        verdict = guard.check(entry.query, query, sim)
        if verdict.accepted:
            hit = _lookup(CacheOutcome.HIT, sim, entry_id, verdict.reason)
            return SemanticMatch(entry, hit, gone)
        if best_rejected is None:
            best_rejected = _lookup(CacheOutcome.REJECTED, sim, entry_id, verdict.reason)
    gone = tuple(e for e, _ in expired)
    if best_rejected is not None:
        return SemanticMatch(None, best_rejected, gone)
    if expired:
        entry, sim = expired[0]
        miss = CacheLookup(
            layer=CacheLayer.SEMANTIC,
            outcome=CacheOutcome.MISS,
            similarity=sim,
            entry_id=str(entry.entry_id),
            detail=expired_detail(entry, now),
        )
        return SemanticMatch(None, miss, gone)
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
