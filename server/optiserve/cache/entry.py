"""The records of the response cache: a stored entry, an answer served from it, statistics."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from optiserve.domain.types import CacheLayer, CacheLookup, FinishReason


@dataclass
class CacheEntry:
    """One cached answer with what is needed to find, verify, expire and evict it."""

    entry_id: int
    partition: str
    exact_key: str
    #: The question text that was embedded (the guard compares against it).
    query: str
    text: str
    model: str
    completion_tokens: int
    cost_usd: float
    finish_reason: FinishReason
    created_at: float
    #: Wall-clock expiry (``time.time()``); 0 = never.
    expires_at: float = 0.0
    vector: npt.NDArray[np.float32] | None = field(default=None, repr=False)
    hits: int = 0

    @property
    def size_bytes(self) -> int:
        """Bytes this entry counts against ``max_bytes`` (texts plus vector)."""
        vec = 0 if self.vector is None else int(self.vector.nbytes)
        return len(self.text.encode("utf-8")) + len(self.query.encode("utf-8")) + vec + 200

    def expired(self, now: float) -> bool:
        """True when the entry's TTL has passed."""
        return self.expires_at > 0 and now >= self.expires_at


@dataclass(frozen=True)
class CachedAnswer:
    """An answer served from the cache.

    ``cost_usd`` is the measured cost of the original generation: what this hit saved.
    ``completion_tokens`` is what the original generation produced; a hit generates 0 new
    tokens (report it as ``Usage.cached_tokens``).
    """

    entry_id: str
    text: str
    model: str
    completion_tokens: int
    cost_usd: float
    finish_reason: FinishReason
    layer: CacheLayer
    similarity: float


@dataclass(frozen=True)
class CacheResult:
    """A lookup's answer (None on a miss) and its decision trace."""

    entry: CachedAnswer | None
    trace: tuple[CacheLookup, ...] = ()


@dataclass(frozen=True)
class CacheStats:
    """Measured counters since start (entries and bytes are current values)."""

    exact_hits: int = 0
    semantic_hits: int = 0
    misses: int = 0
    #: Semantic matches above the threshold that the guard refused.
    guard_rejections: int = 0
    #: Lookups not attempted (bypass, refresh, non-zero temperature, disabled).
    skipped: int = 0
    stores: int = 0
    #: Stores that failed (logged; the request was still answered).
    store_errors: int = 0
    evictions: int = 0
    #: Entries dropped past their TTL: found by a lookup (the trace says so) or swept.
    expirations: int = 0
    entries: int = 0
    bytes: int = 0
    #: Cost of the original generations of every hit (USD).
    cost_saved_usd: float = 0.0
    #: Completion tokens not generated thanks to hits.
    tokens_saved: int = 0
    redis_errors: int = 0
    #: "redis" when the shared exact layer is in use, else "memory".
    exact_backend: str = "memory"
    #: "cpu" or "gpu" (FAISS) and the embedder backend ("onnx"/"torch"/"").
    index_device: str = "cpu"
    embedder_backend: str = ""

    @property
    def hits(self) -> int:
        """Hits of every layer."""
        return self.exact_hits + self.semantic_hits
