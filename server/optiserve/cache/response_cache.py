"""The response cache facade the request pipeline calls: exact layer, semantic layer, policy.

Lookup order: in-process exact table → Redis (when configured) → semantic index + guard.
Everything that may block (Redis I/O, embedding, FAISS, SQLite) runs on a small dedicated
thread pool, never on the event loop; an in-process exact hit is answered inline (µs).

Policy (per request, :class:`~optiserve.domain.types.CachePolicy`):

=================  ========  ======  =================================================
mode               looks up  stores  note
=================  ========  ======  =================================================
DEFAULT            yes       yes
BYPASS             no        no
REFRESH            no        yes     replaces the entry under the same exact key
ONLY_IF_CACHED     yes       no      the caller raises CacheMiss on a miss
                                     (:func:`require_hit`)
=================  ========  ======  =================================================

Only temperature-0 requests are cached unless ``only_temperature_zero`` is off. Questions
whose embedding says nothing (no letters or digits, no known word) are exact only: see
:mod:`optiserve.cache.eligibility`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from optiserve.cache.config import CacheConfig
from optiserve.cache.eligibility import semantic_skip_reason
from optiserve.cache.embedder import Embedder
from optiserve.cache.entry import CachedAnswer, CacheEntry, CacheResult, CacheStats
from optiserve.cache.exact import EntryTable
from optiserve.cache.expiry import expired_detail
from optiserve.cache.guard import Guard
from optiserve.cache.index import IndexParams, VectorIndex, set_openmp_threads
from optiserve.cache.keys import RequestKeys, request_keys
from optiserve.cache.redis_store import RedisAnswer, RedisExact
from optiserve.cache.semantic import match
from optiserve.cache.store import CacheStore
from optiserve.domain.errors import CacheMiss, InvalidRequest
from optiserve.domain.types import (
    CacheLayer,
    CacheLookup,
    CacheMode,
    CacheOutcome,
    CachePolicy,
    FinishReason,
    GenerateRequest,
)

logger = logging.getLogger(__name__)

_LOOKUP_MODES = (CacheMode.DEFAULT, CacheMode.ONLY_IF_CACHED)
_STORE_MODES = (CacheMode.DEFAULT, CacheMode.REFRESH)


def validate_policy(policy: CachePolicy) -> None:
    """Raise InvalidRequest naming the field when a per-request override is out of range."""
    if not isinstance(policy.mode, CacheMode):
        allowed = ", ".join(m.value for m in CacheMode)
        raise InvalidRequest(f"cache.mode {policy.mode!r} is unknown; use one of: {allowed}")
    t = policy.semantic_threshold
    if t is not None and not (0.0 <= t <= 1.0):  # also rejects NaN
        raise InvalidRequest(
            f"cache.semantic_threshold is {t}; it must be between 0 and 1 (cosine similarity)"
        )
    if policy.ttl_s is not None and not (policy.ttl_s >= 0.0):
        raise InvalidRequest(
            f"cache.ttl_s is {policy.ttl_s}; it must be ≥ 0 seconds (0 = no expiry)"
        )


def require_hit(request: GenerateRequest, result: CacheResult) -> CachedAnswer | None:
    """The hit, or CacheMiss for an only-if-cached request that missed (None otherwise)."""
    if result.entry is None and request.cache.mode is CacheMode.ONLY_IF_CACHED:
        raise CacheMiss(
            "no cached answer for this only-if-cached request; send it with cache mode "
            "default to generate one"
        )
    return result.entry


def replay_chunks(text: str, chunk_chars: int = 32) -> Iterator[str]:
    """Split a cached answer into stream chunks of at most ``chunk_chars`` characters."""
    size = max(1, int(chunk_chars))
    if not text:
        return
    for start in range(0, len(text), size):
        yield text[start : start + size]


def _skipped(detail: str) -> tuple[CacheLookup, ...]:
    return (CacheLookup(CacheLayer.EXACT, CacheOutcome.SKIPPED, detail=detail),)


class ResponseCache:
    """Exact and semantic response cache with persistence. Create with :meth:`open`."""

    def __init__(
        self,
        config: CacheConfig,
        *,
        store: CacheStore | None,
        embedder: Embedder | None,
        guard: Guard | None,
        redis: RedisExact | None,
    ) -> None:
        self.config = config
        self._store = store
        self._embedder = embedder
        self._guard = guard
        self._redis = redis
        self._table = EntryTable(
            max_entries=config.max_entries, max_bytes=config.max_bytes, policy=config.eviction
        )
        dim = embedder.dim if embedder is not None else 384
        self._index = VectorIndex(
            IndexParams(
                dim=dim,
                flat_max_entries=config.flat_max_entries,
                hnsw_m=config.hnsw_m,
                hnsw_ef_search=config.hnsw_ef_search,
                hnsw_ef_construction=config.hnsw_ef_construction,
                use_gpu=config.use_gpu,
            )
        )
        # Every FAISS call of the cache runs on these threads; each sets its OpenMP team
        # size once, as it starts (OpenMP keeps it per thread; see set_openmp_threads).
        self._executor = ThreadPoolExecutor(
            max_workers=4,
            thread_name_prefix="cache",
            initializer=set_openmp_threads,
            initargs=(config.faiss_threads,),
        )
        self._ids = itertools.count((store.max_id() if store else 0) + 1)
        self._lock = threading.Lock()
        self._counters = CacheStats()
        self._stores_since_sweep = 0
        self._closed = False

    # -- construction --------------------------------------------------------------------

    @classmethod
    def open(
        cls, config: CacheConfig, data_dir: Path, *, embedder: Embedder | None = None
    ) -> ResponseCache:
        """Open the cache: load the SQLite store, rebuild the index, connect Redis.

        A corrupt store is moved aside (logged) and an empty one created. An embedder that
        fails to load disables the semantic layer (logged); the exact layer still serves.
        ``embedder`` shares an already loaded embedder (tests, several caches in a process).
        """
        data_dir = Path(data_dir)
        store = CacheStore(data_dir / config.db_name) if config.persist else None
        guard: Guard | None = None
        if not (config.enabled and config.semantic_enabled):
            embedder = None
        elif embedder is None:
            try:
                embedder = Embedder(
                    config.embedder_path,
                    max_tokens=config.embedder_max_tokens,
                    threads=config.embedder_threads,
                    onnx_dir=data_dir / "onnx",
                    quantize=config.embedder_quantize,
                )
            except Exception:
                logger.exception("semantic cache disabled: the embedder failed to load")
        if embedder is not None and config.guard_enabled:
            guard = Guard.load(config.guard_weights, config.guard_threshold)
        redis = None
        if config.enabled and config.exact_enabled and config.redis_url:
            redis = RedisExact(config.redis_url, timeout_s=config.redis_timeout_s)
        cache = cls(config, store=store, embedder=embedder, guard=guard, redis=redis)
        try:
            # On the cache's own threads, like every other index operation.
            cache._executor.submit(cache._load).result()
        except BaseException:
            cache.close()
            raise
        return cache

    def _load(self) -> None:
        if self._store is None:
            return
        started = time.perf_counter()
        now = time.time()
        entries = self._store.load()
        expired = [e.entry_id for e in entries if e.expired(now)]
        live = [e for e in entries if not e.expired(now)]
        if self._embedder is not None:
            embedder = self._embedder
            # Questions the semantic layer skips are exact only: never in the index.
            skip = {e.entry_id for e in live if semantic_skip_reason(e.query, embedder)}
            for e in live:
                if e.entry_id in skip:
                    e.vector = None
            missing = [
                e
                for e in live
                if e.entry_id not in skip
                and (e.vector is None or e.vector.shape[0] != embedder.dim)
            ]
            if missing:
                vectors = self._embedder.embed_many([e.query for e in missing])
                for e, v in zip(missing, vectors, strict=True):
                    e.vector = v
                    self._store.put(e)
        dropped: list[int] = list(expired)
        for entry in live:
            for gone in self._table.put(entry):
                dropped.append(gone.entry_id)
                self._index.remove(gone.partition, gone.entry_id)
            if entry.vector is not None and self._table.get(entry.entry_id, now) is entry:
                self._index.add(entry.partition, entry.entry_id, entry.vector)
        self._delete_rows(dropped)
        logger.info(
            "response cache: %d entries loaded from %s in %.0f ms (%d expired or over limits "
            "dropped); index %d vectors in %d partitions",
            len(self._table),
            self._store.path,
            (time.perf_counter() - started) * 1000,
            len(dropped),
            len(self._index),
            self._index.partitions(),
        )

    # -- lookup --------------------------------------------------------------------------

    def _count(self, **deltas: float) -> None:
        with self._lock:
            values = {k: getattr(self._counters, k) + v for k, v in deltas.items()}
            self._counters = replace(self._counters, **values)

    def _cacheable(self, request: GenerateRequest) -> str:
        """Why the request is not cacheable ("" when it is)."""
        if not self.config.enabled:
            return "cache disabled"
        if self.config.only_temperature_zero and request.sampling.temperature != 0.0:
            return "temperature > 0 (only greedy requests are cached)"
        return ""

    async def lookup(self, request: GenerateRequest, model: str) -> CacheResult:
        """Look ``request`` up (as served by ``model``); never blocks the event loop.

        Policy checks and an in-process exact hit are answered inline (microseconds); Redis,
        embedding and search run on the cache's thread pool.
        """
        quick = self._lookup_fast(request, model)
        if isinstance(quick, CacheResult):
            return quick
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._lookup_safe, request, quick)

    def lookup_sync(self, request: GenerateRequest, model: str) -> CacheResult:
        """Blocking lookup (benchmarks, tests, threads); same semantics as :meth:`lookup`.

        The slow path runs on the cache's thread pool, as :meth:`lookup`'s does.
        """
        quick = self._lookup_fast(request, model)
        if isinstance(quick, CacheResult):
            return quick
        return self._executor.submit(self._lookup_safe, request, quick).result()

    def _lookup_fast(self, request: GenerateRequest, model: str) -> CacheResult | RequestKeys:
        """A final answer (skipped, in-process exact hit) or the keys to look up further."""
        mode = request.cache.mode
        if mode not in _LOOKUP_MODES:
            self._count(skipped=1)
            return CacheResult(None, _skipped(f"cache mode {mode.value}"))
        why = self._cacheable(request)
        if why:
            self._count(skipped=1)
            return CacheResult(None, _skipped(why))
        keys = request_keys(request, model, embed_text=self.config.embed_text)
        if self.config.exact_enabled:
            entry = self._table.find_exact(keys.exact)
            if entry is not None:
                lookup = CacheLookup(CacheLayer.EXACT, CacheOutcome.HIT, 1.0, str(entry.entry_id))
                return CacheResult(self._hit(entry, CacheLayer.EXACT, 1.0), (lookup,))
        return keys

    def _lookup_safe(self, request: GenerateRequest, keys: RequestKeys) -> CacheResult:
        """:meth:`_lookup_slow`, but a failing cache is a miss, never a failed request."""
        try:
            return self._lookup_slow(request, keys)
        except Exception as exc:
            logger.exception("response cache lookup failed; answering as a miss")
            self._count(misses=1)
            detail = f"cache error: {type(exc).__name__}"
            return CacheResult(
                None, (CacheLookup(CacheLayer.SEMANTIC, CacheOutcome.MISS, detail=detail),)
            )

    def _lookup_slow(self, request: GenerateRequest, keys: RequestKeys) -> CacheResult:
        trace: list[CacheLookup] = []
        if self.config.exact_enabled:
            # The fast path skipped an entry under this key past its TTL: drop it here.
            now = time.time()
            stale = self._table.peek_exact(keys.exact)
            expired = ""
            if stale is not None and stale.expired(now):
                expired = expired_detail(stale, now)
                self._drop_expired([stale], now)
            if self._redis is not None:
                answer = self._redis.get(keys.exact)
                if answer is not None:
                    return self._redis_hit(answer)
                detail = f"memory+redis; {expired}" if expired else "memory+redis"
                trace.append(CacheLookup(CacheLayer.EXACT, CacheOutcome.MISS, detail=detail))
            else:
                trace.append(CacheLookup(CacheLayer.EXACT, CacheOutcome.MISS, detail=expired))
        if self._embedder is None or not self.config.semantic_enabled:
            self._count(misses=1)
            return CacheResult(None, tuple(trace))
        skip = semantic_skip_reason(keys.query, self._embedder)
        if skip:
            trace.append(CacheLookup(CacheLayer.SEMANTIC, CacheOutcome.SKIPPED, detail=skip))
            self._count(misses=1)
            return CacheResult(None, tuple(trace))
        threshold = request.cache.semantic_threshold
        if threshold is None:
            threshold = self.config.semantic_threshold
        vector = self._embedder.embed(keys.query)
        found = match(
            self._index,
            self._table,
            self._guard,
            partition=keys.partition,
            query=keys.query,
            vector=vector,
            threshold=threshold,
            now=time.time(),
        )
        trace.append(found.lookup)
        if found.expired:
            self._drop_expired(list(found.expired), time.time())
        if found.entry is None:
            if found.lookup.outcome is CacheOutcome.REJECTED:
                self._count(misses=1, guard_rejections=1)
            else:
                self._count(misses=1)
            return CacheResult(None, tuple(trace))
        hit = self._hit(found.entry, CacheLayer.SEMANTIC, found.lookup.similarity)
        return CacheResult(hit, tuple(trace))

    def _hit(self, entry: CacheEntry, layer: CacheLayer, similarity: float) -> CachedAnswer:
        self._table.touch(entry)
        if layer is CacheLayer.EXACT:
            self._count(
                exact_hits=1, cost_saved_usd=entry.cost_usd, tokens_saved=entry.completion_tokens
            )
        else:
            self._count(
                semantic_hits=1, cost_saved_usd=entry.cost_usd, tokens_saved=entry.completion_tokens
            )
        return CachedAnswer(
            entry_id=str(entry.entry_id),
            text=entry.text,
            model=entry.model,
            completion_tokens=entry.completion_tokens,
            cost_usd=entry.cost_usd,
            finish_reason=entry.finish_reason,
            layer=layer,
            similarity=similarity,
        )

    def _redis_hit(self, answer: RedisAnswer) -> CacheResult:
        self._count(
            exact_hits=1, cost_saved_usd=answer.cost_usd, tokens_saved=answer.completion_tokens
        )
        hit = CachedAnswer(
            entry_id=answer.entry_id,
            text=answer.text,
            model=answer.model,
            completion_tokens=answer.completion_tokens,
            cost_usd=answer.cost_usd,
            finish_reason=FinishReason(answer.finish_reason),
            layer=CacheLayer.EXACT,
            similarity=1.0,
        )
        lookup = CacheLookup(
            CacheLayer.EXACT, CacheOutcome.HIT, 1.0, answer.entry_id, detail="redis"
        )
        return CacheResult(hit, (lookup,))

    # -- store ---------------------------------------------------------------------------

    async def store(
        self,
        request: GenerateRequest,
        model: str,
        text: str,
        completion_tokens: int,
        cost_usd: float,
        finish_reason: FinishReason,
    ) -> None:
        """Cache a completed answer (no-op when the policy or request says not to)."""
        if not self.should_store(request, text, finish_reason):
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(
            self._executor,
            self._store_safe,
            request,
            model,
            text,
            completion_tokens,
            cost_usd,
            finish_reason,
        )

    def store_sync(
        self,
        request: GenerateRequest,
        model: str,
        text: str,
        completion_tokens: int,
        cost_usd: float,
        finish_reason: FinishReason,
    ) -> None:
        """Blocking :meth:`store` (benchmarks, tests, threads); runs on the cache's pool."""
        if self.should_store(request, text, finish_reason):
            self._executor.submit(
                self._store_safe, request, model, text, completion_tokens, cost_usd, finish_reason
            ).result()

    def should_store(self, request: GenerateRequest, text: str, finish: FinishReason) -> bool:
        return (
            request.cache.mode in _STORE_MODES
            and not self._cacheable(request)
            and finish is not FinishReason.CACHED
            and bool(text)
            and not self._closed
        )

    def _store_safe(
        self,
        request: GenerateRequest,
        model: str,
        text: str,
        completion_tokens: int,
        cost_usd: float,
        finish_reason: FinishReason,
    ) -> None:
        """:meth:`_store_sync`; a failing cache write is logged, never raised to the caller."""
        try:
            self._store_sync(request, model, text, completion_tokens, cost_usd, finish_reason)
        except Exception:
            logger.exception("response cache store failed; the answer was not cached")
            self._count(store_errors=1)

    def _store_sync(
        self,
        request: GenerateRequest,
        model: str,
        text: str,
        completion_tokens: int,
        cost_usd: float,
        finish_reason: FinishReason,
    ) -> None:
        keys = request_keys(request, model, embed_text=self.config.embed_text)
        ttl = request.cache.ttl_s if request.cache.ttl_s is not None else self.config.ttl_s
        now = time.time()
        vector = None
        embedder = self._embedder
        if (
            embedder is not None
            and self.config.semantic_enabled
            and not semantic_skip_reason(keys.query, embedder)
        ):
            vector = embedder.embed(keys.query)
        entry = CacheEntry(
            entry_id=next(self._ids),
            partition=keys.partition,
            exact_key=keys.exact,
            query=keys.query,
            text=text,
            model=model,
            completion_tokens=int(completion_tokens),
            cost_usd=float(cost_usd),
            finish_reason=finish_reason,
            created_at=now,
            expires_at=now + ttl if ttl > 0 else 0.0,
            vector=vector,
        )
        gone = self._table.put(entry)
        stored = all(g.entry_id != entry.entry_id for g in gone)
        for g in gone:
            self._index.remove(g.partition, g.entry_id)
        if self._store is not None:
            dropped = [g.entry_id for g in gone if g.entry_id != entry.entry_id]
            self._persist(entry if stored else None, dropped)
        if stored and vector is not None:
            self._index.add(entry.partition, entry.entry_id, vector)
        if self._redis is not None and stored:
            self._redis.put(
                keys.exact,
                RedisAnswer(
                    entry_id=str(entry.entry_id),
                    text=text,
                    model=model,
                    completion_tokens=entry.completion_tokens,
                    cost_usd=entry.cost_usd,
                    finish_reason=finish_reason.value,
                ),
                ttl,
            )
        replaced = sum(1 for g in gone if g.exact_key == entry.exact_key and g is not entry)
        self._count(
            stores=1 if stored else 0, evictions=len(gone) - replaced - (0 if stored else 1)
        )
        self._stores_since_sweep += 1
        if self._stores_since_sweep >= 256:
            self._stores_since_sweep = 0
            self.sweep_expired()

    def _persist(self, entry: CacheEntry | None, dropped: list[int]) -> None:
        """Write ``entry`` (when kept) to SQLite and delete ``dropped`` there.

        A failed write (disk full, read-only, I/O error) is logged and counted, never
        raised: memory is the cache, SQLite its copy for the next start. An entry that
        could not be written is served from memory like any other until a restart."""
        assert self._store is not None
        if entry is not None:
            try:
                self._store.put(entry)
            except (sqlite3.Error, OSError) as exc:
                self._write_failed(
                    exc, "the answer is cached in memory only and will not survive a restart"
                )
        self._delete_rows(dropped)

    def _delete_rows(self, entry_ids: list[int]) -> None:
        """Delete the rows of entries gone from memory (a failure is logged and counted)."""
        if self._store is None or not entry_ids:
            return
        try:
            self._store.delete(entry_ids)
        except (sqlite3.Error, OSError) as exc:
            self._write_failed(
                exc,
                f"{len(entry_ids)} entries gone from memory are still on disk (a restart "
                "may load them again, within the limits)",
            )

    def _write_failed(self, exc: Exception, consequence: str) -> None:
        assert self._store is not None
        logger.error(
            "response cache: writing to %s failed (%s: %s); %s",
            self._store.path,
            type(exc).__name__,
            exc,
            consequence,
        )
        self._count(store_errors=1)

    def sweep_expired(self) -> int:
        """Drop expired entries from memory, index and store; return how many."""
        dead = self._table.expire()
        self._forget(dead)
        return len(dead)

    def _drop_expired(self, found: list[CacheEntry], now: float) -> None:
        """Drop the expired entries a lookup found (each once, even when found twice)."""
        self._forget(self._table.pop_expired(found, now))

    def _forget(self, dead: list[CacheEntry]) -> None:
        """Remove entries already out of the table from the index and store; count them."""
        for entry in dead:
            self._index.remove(entry.partition, entry.entry_id)
        self._delete_rows([e.entry_id for e in dead])
        if dead:
            self._count(expirations=len(dead))

    # -- reporting and shutdown ----------------------------------------------------------

    def stats(self) -> CacheStats:
        """Measured counters, with the current entry count and size."""
        with self._lock:
            counters = self._counters
        return replace(
            counters,
            entries=len(self._table),
            bytes=self._table.bytes,
            redis_errors=self._redis.errors if self._redis is not None else 0,
            exact_backend="redis"
            if self._redis is not None and self._redis.available
            else "memory",
            index_device="gpu" if self._index.gpu else "cpu",
            embedder_backend=self._embedder.backend if self._embedder is not None else "",
        )

    @property
    def embedder(self) -> Embedder | None:
        """The embedder (None when the semantic layer is off)."""
        return self._embedder

    def close(self) -> None:
        """Finish pending work and close the store and Redis."""
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(wait=True)
        if self._store is not None:
            self._store.close()
        if self._redis is not None:
            self._redis.close()


__all__ = [
    "CacheResult",
    "CacheStats",
    "CachedAnswer",
    "ResponseCache",
    "replay_chunks",
    "require_hit",
    "validate_policy",
]
