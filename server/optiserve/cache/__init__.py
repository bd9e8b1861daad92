"""Exact and semantic response cache.

Public surface (what the request pipeline uses)::

    cache = ResponseCache.open(CacheConfig(), data_dir)
    validate_policy(request.cache)               # InvalidRequest on bad overrides
    result = await cache.lookup(request, model)  # CacheResult(entry | None, trace)
    answer = require_hit(request, result)        # CacheMiss for only-if-cached misses
    await cache.store(request, model, text, completion_tokens, cost_usd, finish_reason)
    for chunk in replay_chunks(answer.text, cache.config.replay_chunk_chars): ...
    cache.stats(); cache.close()

Modules: ``keys`` (partition and exact hash), ``exact`` (bounded entry table, LRU/LFU/FIFO,
TTL), ``redis_store`` (shared exact layer), ``embedder`` (MiniLM via ONNX Runtime or torch),
``index`` (FAISS per partition), ``guard`` (false-hit verifier), ``semantic`` (match + guard),
``eligibility`` (which questions the semantic layer skips),
``store`` (SQLite WAL), ``response_cache`` (the facade), ``config``.
"""

from optiserve.cache.config import CacheConfig
from optiserve.cache.entry import CachedAnswer, CacheEntry, CacheResult, CacheStats
from optiserve.cache.response_cache import (
    ResponseCache,
    replay_chunks,
    require_hit,
    validate_policy,
)

__all__ = [
    "CacheConfig",
    "CacheEntry",
    "CacheResult",
    "CacheStats",
    "CachedAnswer",
    "ResponseCache",
    "replay_chunks",
    "require_hit",
    "validate_policy",
]
