"""The in-process entry table: exact-key lookup, TTL, max entries/bytes, LRU/LFU/FIFO.

Every cached answer lives here once; the exact layer finds it by exact key and the semantic
layer by entry id. The table decides what to evict and tells the caller, which drops the
evicted entries from the vector index and the persistent store.

Eviction policies:

* ``lru`` (default): least recently used (a hit or a store refreshes an entry).
* ``lfu``: fewest hits, oldest first among equals (an O(log n) heap with lazy updates).
* ``fifo``: oldest stored first; hits do not matter.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import OrderedDict
from typing import get_args

from optiserve.cache.config import Eviction
from optiserve.cache.entry import CacheEntry

POLICIES: tuple[str, ...] = get_args(Eviction)


class EntryTable:
    """Bounded, thread-safe map of entries with exact-key lookup and eviction."""

    def __init__(self, *, max_entries: int, max_bytes: int, policy: str = "lru") -> None:
        if policy not in POLICIES:
            raise ValueError(f"cache eviction must be one of {', '.join(POLICIES)}, not {policy!r}")
        self.max_entries = max(1, int(max_entries))
        self.max_bytes = max(1, int(max_bytes))
        self.policy = policy
        self._entries: OrderedDict[int, CacheEntry] = OrderedDict()
        self._by_exact: dict[str, int] = {}
        self._heap: list[tuple[int, int, int]] = []  # (hits, tiebreak, id), LFU only
        self._tick = 0
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        """Bytes counted against ``max_bytes``."""
        return self._bytes

    def get(self, entry_id: int, now: float | None = None) -> CacheEntry | None:
        """The live entry ``entry_id`` (expired entries are not returned)."""
        with self._lock:
            entry = self._entries.get(entry_id)
            if entry is None or entry.expired(time.time() if now is None else now):
                return None
            return entry

    def find_exact(self, exact_key: str, now: float | None = None) -> CacheEntry | None:
        """The live entry stored under ``exact_key``, or None."""
        with self._lock:
            entry_id = self._by_exact.get(exact_key)
            if entry_id is None:
                return None
            entry = self._entries[entry_id]
            if entry.expired(time.time() if now is None else now):
                return None
            return entry

    def peek(self, entry_id: int) -> CacheEntry | None:
        """The entry ``entry_id``, expired or not (None when it is not in the table)."""
        with self._lock:
            return self._entries.get(entry_id)

    def peek_exact(self, exact_key: str) -> CacheEntry | None:
        """The entry stored under ``exact_key``, expired or not."""
        with self._lock:
            entry_id = self._by_exact.get(exact_key)
            return None if entry_id is None else self._entries[entry_id]

    def pop_expired(self, entries: list[CacheEntry], now: float) -> list[CacheEntry]:
        """Remove those of ``entries`` still in the table and expired at ``now``; return them
        (so that concurrent lookups finding the same expired entry drop it once)."""
        with self._lock:
            dead = [e for e in entries if self._entries.get(e.entry_id) is e and e.expired(now)]
            return [self._pop(e.entry_id) for e in dead]

    def touch(self, entry: CacheEntry) -> None:
        """Record a hit on ``entry`` (recency for LRU, frequency for LFU)."""
        with self._lock:
            if entry.entry_id not in self._entries:
                return
            entry.hits += 1
            if self.policy == "lru":
                self._entries.move_to_end(entry.entry_id)
            elif self.policy == "lfu":
                self._push_lfu(entry)

    def _push_lfu(self, entry: CacheEntry) -> None:
        self._tick += 1
        heapq.heappush(self._heap, (entry.hits, self._tick, entry.entry_id))
        if len(self._heap) > 4 * len(self._entries) + 64:
            self._heap = [(e.hits, i, e.entry_id) for i, e in enumerate(self._entries.values())]
            heapq.heapify(self._heap)

    def put(self, entry: CacheEntry) -> list[CacheEntry]:
        """Insert ``entry`` (replacing one with the same exact key); return evicted entries.

        An entry larger than ``max_bytes`` on its own is not stored and is returned as evicted.
        """
        with self._lock:
            evicted: list[CacheEntry] = []
            old_id = self._by_exact.get(entry.exact_key)
            if old_id is not None:
                evicted.append(self._pop(old_id))
            if entry.size_bytes > self.max_bytes:
                return [*evicted, entry]
            # Make room first, so a new entry (0 hits) is never its own LFU victim.
            while self._entries and (
                len(self._entries) + 1 > self.max_entries
                or self._bytes + entry.size_bytes > self.max_bytes
            ):
                evicted.append(self._pop(self._victim()))
            self._entries[entry.entry_id] = entry
            self._by_exact[entry.exact_key] = entry.entry_id
            self._bytes += entry.size_bytes
            if self.policy == "lfu":
                self._push_lfu(entry)
            return evicted

    def _victim(self) -> int:
        if self.policy != "lfu":
            return next(iter(self._entries))
        while self._heap:
            hits, _, entry_id = heapq.heappop(self._heap)
            entry = self._entries.get(entry_id)
            if entry is not None and entry.hits == hits:
                return entry_id
        return next(iter(self._entries))

    def _pop(self, entry_id: int) -> CacheEntry:
        entry = self._entries.pop(entry_id)
        if self._by_exact.get(entry.exact_key) == entry_id:
            del self._by_exact[entry.exact_key]
        self._bytes -= entry.size_bytes
        return entry

    def expire(self, now: float | None = None) -> list[CacheEntry]:
        """Remove and return every expired entry."""
        now = time.time() if now is None else now
        with self._lock:
            dead = [i for i, e in self._entries.items() if e.expired(now)]
            return [self._pop(i) for i in dead]
