"""The shared exact layer in a real redis-server, and the fallback when Redis is down."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from cachehelpers import chat, free_port

from optiserve.cache import ResponseCache
from optiserve.domain.types import CacheLayer, FinishReason

Factory = Callable[..., ResponseCache]


async def test_replicas_share_exact_hits(
    redis_url: str, make_cache: Factory, tmp_path: Path
) -> None:
    one = make_cache(tmp_path / "one", redis_url=redis_url, semantic_enabled=False)
    two = make_cache(tmp_path / "two", redis_url=redis_url, semantic_enabled=False)
    await one.store(chat("What is Redis?"), "m", "A key-value store.", 5, 0.004, FinishReason.EOS)
    hit = await two.lookup(chat("What is Redis?"), "m")
    assert hit.entry is not None
    assert hit.entry.text == "A key-value store."
    assert hit.entry.layer is CacheLayer.EXACT
    assert hit.trace[0].detail == "redis"
    assert hit.entry.cost_usd == pytest.approx(0.004)
    assert two.stats().exact_backend == "redis"
    other_tenant = await two.lookup(chat("What is Redis?", tenant="t9"), "m")
    assert other_tenant.entry is None


async def test_redis_down_falls_back_with_warning(
    make_cache: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    with caplog.at_level(logging.WARNING):
        cache = make_cache(redis_url=url, redis_timeout_s=0.1, semantic_enabled=False)
        await cache.store(chat("q"), "m", "a", 1, 0.0, FinishReason.EOS)
        hit = await cache.lookup(chat("q"), "m")
        miss = await cache.lookup(chat("other"), "m")
    assert hit.entry is not None
    assert hit.entry.text == "a"
    assert miss.entry is None
    assert any("unreachable" in r.getMessage() for r in caplog.records)
    stats = cache.stats()
    assert stats.redis_errors >= 1
    assert stats.exact_backend == "memory"
