"""Expired entries found by a lookup: how the trace names them.

A lookup that matches an entry past its TTL (exact key, or a semantic candidate at or above
the threshold) does not serve it: the response cache drops the entry from the table, the
index and the store, counts it in ``CacheStats.expirations`` and the trace says so, e.g.
``the entry matched but expired 1.0 s ago (ttl 1 s)``. Entries nobody asks for are dropped
by the periodic sweep (counted the same way, once per entry).
"""

from __future__ import annotations

from optiserve.cache.entry import CacheEntry


def expired_detail(entry: CacheEntry, now: float) -> str:
    """The trace detail for a lookup that matched ``entry`` after it expired."""
    ago = max(0.0, now - entry.expires_at)
    ttl = entry.expires_at - entry.created_at
    return f"the entry matched but expired {ago:.1f} s ago (ttl {ttl:g} s)"
