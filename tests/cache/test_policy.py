"""Per-request policy: validation, modes, temperature, only-if-cached, replay chunks."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from cachehelpers import chat

from optiserve.cache import ResponseCache, replay_chunks, require_hit, validate_policy
from optiserve.domain.errors import CacheMiss, InvalidRequest
from optiserve.domain.types import CacheLayer, CacheMode, CacheOutcome, CachePolicy, FinishReason

Factory = Callable[..., ResponseCache]


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        (CachePolicy(semantic_threshold=1.5), "semantic_threshold"),
        (CachePolicy(semantic_threshold=-0.1), "semantic_threshold"),
        (CachePolicy(semantic_threshold=math.nan), "semantic_threshold"),
        (CachePolicy(ttl_s=-1.0), "ttl_s"),
        (CachePolicy(mode="sometimes"), "mode"),  # type: ignore[arg-type]
    ],
)
def test_validate_policy_names_the_field(policy: CachePolicy, field: str) -> None:
    with pytest.raises(InvalidRequest, match=f"cache.{field}"):
        validate_policy(policy)


def test_validate_policy_accepts_bounds() -> None:
    validate_policy(CachePolicy(semantic_threshold=0.0, ttl_s=0.0))
    validate_policy(CachePolicy(semantic_threshold=1.0, ttl_s=3600.0))


async def test_modes(make_cache: Factory) -> None:
    cache = make_cache(semantic_enabled=False)
    q = "What is the capital of France?"
    await cache.store(chat(q, mode=CacheMode.BYPASS), "m", "Paris", 1, 0.01, FinishReason.EOS)
    assert cache.stats().entries == 0
    await cache.store(chat(q, mode=CacheMode.ONLY_IF_CACHED), "m", "x", 1, 0.01, FinishReason.EOS)
    assert cache.stats().entries == 0
    miss = await cache.lookup(chat(q, mode=CacheMode.ONLY_IF_CACHED), "m")
    with pytest.raises(CacheMiss):
        require_hit(chat(q, mode=CacheMode.ONLY_IF_CACHED), miss)
    assert require_hit(chat(q), miss) is None

    await cache.store(chat(q), "m", "Paris", 1, 0.01, FinishReason.EOS)
    hit = await cache.lookup(chat(q, mode=CacheMode.ONLY_IF_CACHED), "m")
    assert require_hit(chat(q, mode=CacheMode.ONLY_IF_CACHED), hit) is not None
    assert hit.entry is not None
    assert hit.entry.text == "Paris"
    assert hit.entry.layer is CacheLayer.EXACT
    assert hit.entry.cost_usd == 0.01

    bypass = await cache.lookup(chat(q, mode=CacheMode.BYPASS), "m")
    assert bypass.entry is None
    assert bypass.trace[0].outcome is CacheOutcome.SKIPPED

    refresh = await cache.lookup(chat(q, mode=CacheMode.REFRESH), "m")
    assert refresh.entry is None
    await cache.store(chat(q, mode=CacheMode.REFRESH), "m", "Paris!", 2, 0.02, FinishReason.EOS)
    again = await cache.lookup(chat(q), "m")
    assert again.entry is not None
    assert again.entry.text == "Paris!"
    assert cache.stats().entries == 1

    stats = cache.stats()
    assert stats.exact_hits == 2
    assert stats.cost_saved_usd == pytest.approx(0.03)


async def test_temperature_above_zero_is_not_cached(make_cache: Factory) -> None:
    cache = make_cache(semantic_enabled=False)
    req = chat("Tell me a story", temperature=0.8)
    await cache.store(req, "m", "Once", 1, 0.0, FinishReason.EOS)
    result = await cache.lookup(req, "m")
    assert result.entry is None
    assert "temperature" in result.trace[0].detail
    assert cache.stats().entries == 0

    relaxed = make_cache(semantic_enabled=False, only_temperature_zero=False, persist=False)
    await relaxed.store(req, "m", "Once", 1, 0.0, FinishReason.EOS)
    assert (await relaxed.lookup(req, "m")).entry is not None


async def test_ttl_per_request(make_cache: Factory) -> None:
    cache = make_cache(semantic_enabled=False)
    await cache.store(chat("q", ttl_s=0.05), "m", "a", 1, 0.0, FinishReason.EOS)
    assert (await cache.lookup(chat("q"), "m")).entry is not None
    import asyncio

    await asyncio.sleep(0.08)
    late = await cache.lookup(chat("q"), "m")
    assert late.entry is None
    assert late.trace[0].outcome is CacheOutcome.MISS
    assert late.trace[0].detail.startswith("the entry matched but expired 0.")
    assert late.trace[0].detail.endswith(" s ago (ttl 0.05 s)")
    # The lookup dropped the entry and counted it, once.
    assert (cache.stats().expirations, cache.stats().entries) == (1, 0)
    again = await cache.lookup(chat("q"), "m")
    assert again.trace[0].detail == ""
    assert cache.sweep_expired() == 0
    assert cache.stats().expirations == 1


async def test_an_expired_semantic_candidate_is_named_and_counted(make_cache: Factory) -> None:
    import asyncio

    cache = make_cache(persist=False)
    stored = chat("How do I reset my password?", ttl_s=0.05)
    await cache.store(stored, "m", "a", 1, 0.0, FinishReason.EOS)
    await cache.store(chat("What is a vector index?"), "m", "b", 1, 0.0, FinishReason.EOS)
    await asyncio.sleep(0.08)
    late = await cache.lookup(chat("How can I reset my password?"), "m")
    assert late.entry is None
    semantic = late.trace[-1]
    assert (semantic.layer, semantic.outcome) == (CacheLayer.SEMANTIC, CacheOutcome.MISS)
    assert semantic.similarity > 0.8
    assert semantic.detail.startswith("the entry matched but expired "), semantic.detail
    assert (cache.stats().expirations, cache.stats().entries) == (1, 1)
    # Gone from the index too: the same question now finds only the other entry.
    again = await cache.lookup(chat("How can I reset my password?"), "m")
    assert again.trace[-1].detail.startswith("best similarity ")
    assert cache.stats().expirations == 1


async def test_cached_and_empty_answers_are_not_stored(make_cache: Factory) -> None:
    cache = make_cache(semantic_enabled=False)
    await cache.store(chat("q"), "m", "", 0, 0.0, FinishReason.EOS)
    await cache.store(chat("q"), "m", "a", 1, 0.0, FinishReason.CACHED)
    assert cache.stats().entries == 0


def test_replay_chunks() -> None:
    text = "The quick brown fox jumps over the lazy dog. ✓"
    chunks = list(replay_chunks(text, 8))
    assert "".join(chunks) == text
    assert all(0 < len(c) <= 8 for c in chunks)
    assert list(replay_chunks("", 8)) == []
    assert list(replay_chunks("ab", 0)) == ["a", "b"]


async def test_prometheus_counters(make_cache: Factory) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from optiserve.cache.metrics import register_cache_metrics

    cache = make_cache(semantic_enabled=False)
    registry = CollectorRegistry()
    register_cache_metrics(cache, registry)
    await cache.store(chat("q"), "m", "a", 7, 0.5, FinishReason.EOS)
    await cache.lookup(chat("q"), "m")
    await cache.lookup(chat("other"), "m")
    text = generate_latest(registry).decode()
    assert 'optiserve_cache_lookups_total{layer="exact",outcome="hit"} 1.0' in text
    assert 'optiserve_cache_lookups_total{layer="all",outcome="miss"} 1.0' in text
    assert "optiserve_cache_entries 1.0" in text
    assert "optiserve_cache_cost_saved_usd_total 0.5" in text
    assert "optiserve_cache_tokens_saved_total 7.0" in text


async def test_cache_failures_never_fail_the_request(
    make_cache: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = make_cache()
    assert cache.embedder is not None

    def broken(text: str) -> None:
        raise RuntimeError("embedder exploded")

    monkeypatch.setattr(cache.embedder, "embed", broken)
    await cache.store(chat("q"), "m", "a", 1, 0.0, FinishReason.EOS)  # no exception
    result = await cache.lookup(chat("another question"), "m")
    assert result.entry is None
    assert "cache error" in result.trace[-1].detail
    assert cache.stats().store_errors == 1
