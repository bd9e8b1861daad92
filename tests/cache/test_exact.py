"""The bounded entry table: eviction policies, max bytes, TTL."""

from __future__ import annotations

import pytest

from optiserve.cache.entry import CacheEntry
from optiserve.cache.exact import EntryTable
from optiserve.domain.types import FinishReason


def entry(i: int, text: str = "answer", expires_at: float = 0.0) -> CacheEntry:
    return CacheEntry(
        entry_id=i,
        partition="p",
        exact_key=f"k{i}",
        query=f"q{i}",
        text=text,
        model="m",
        completion_tokens=3,
        cost_usd=0.001,
        finish_reason=FinishReason.EOS,
        created_at=float(i),
        expires_at=expires_at,
    )


def test_lru_evicts_least_recently_used() -> None:
    table = EntryTable(max_entries=2, max_bytes=10**6, policy="lru")
    table.put(entry(1))
    table.put(entry(2))
    hit = table.find_exact("k1")
    assert hit is not None
    table.touch(hit)
    evicted = table.put(entry(3))
    assert [e.entry_id for e in evicted] == [2]
    assert table.find_exact("k1") is not None


def test_fifo_ignores_hits() -> None:
    table = EntryTable(max_entries=2, max_bytes=10**6, policy="fifo")
    table.put(entry(1))
    table.put(entry(2))
    table.touch(table.find_exact("k1"))  # type: ignore[arg-type]
    assert [e.entry_id for e in table.put(entry(3))] == [1]


def test_lfu_evicts_least_frequently_used() -> None:
    table = EntryTable(max_entries=3, max_bytes=10**6, policy="lfu")
    for i in (1, 2, 3):
        table.put(entry(i))
    for i, n in ((1, 3), (2, 1), (3, 2)):
        for _ in range(n):
            table.touch(table.find_exact(f"k{i}"))  # type: ignore[arg-type]
    assert [e.entry_id for e in table.put(entry(4))] == [2]
    assert [e.entry_id for e in table.put(entry(5))] == [4]  # new entry has 0 hits


def test_max_bytes_evicts_and_rejects_oversized() -> None:
    size = entry(1, "x" * 1000).size_bytes
    table = EntryTable(max_entries=100, max_bytes=size * 2 + 10, policy="lru")
    table.put(entry(1, "x" * 1000))
    table.put(entry(2, "x" * 1000))
    assert [e.entry_id for e in table.put(entry(3, "x" * 1000))] == [1]
    assert table.bytes <= table.max_bytes
    huge = entry(4, "x" * 10_000)
    assert table.put(huge) == [huge]
    assert table.find_exact("k4") is None


def test_ttl_expiry() -> None:
    table = EntryTable(max_entries=10, max_bytes=10**6)
    table.put(entry(1, expires_at=100.0))
    assert table.find_exact("k1", now=99.0) is not None
    assert table.find_exact("k1", now=100.0) is None
    assert [e.entry_id for e in table.expire(now=101.0)] == [1]
    assert len(table) == 0


def test_pop_expired_drops_each_entry_once() -> None:
    table = EntryTable(max_entries=10, max_bytes=10**6)
    old, live = entry(1, expires_at=100.0), entry(2)
    table.put(old)
    table.put(live)
    assert table.peek_exact("k1") is old  # expired entries can still be looked at
    assert table.peek(1) is old
    assert table.pop_expired([old, live], now=99.0) == []
    assert table.pop_expired([old, live], now=101.0) == [old]
    assert table.pop_expired([old], now=101.0) == []  # a second finder drops nothing
    assert table.peek(1) is None and len(table) == 1


def test_same_exact_key_replaces() -> None:
    table = EntryTable(max_entries=10, max_bytes=10**6)
    table.put(entry(1))
    newer = entry(2)
    newer.exact_key = "k1"
    assert [e.entry_id for e in table.put(newer)] == [1]
    assert table.find_exact("k1") is newer
    assert len(table) == 1


def test_unknown_policy() -> None:
    with pytest.raises(ValueError, match="lru, lfu, fifo"):
        EntryTable(max_entries=1, max_bytes=1, policy="random")
