"""Measured usage counters per model (in memory, since server start)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace

from optiserve.domain.types import CacheLayer, ResponseSummary


@dataclass(frozen=True)
class ModelUsage:
    """Counters for one model (or the total)."""

    model: str
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    cost_saved_usd: float = 0.0
    exact_hits: int = 0
    semantic_hits: int = 0

    def plus(self, other: ModelUsage) -> ModelUsage:
        """Field-wise sum (keeps this model name)."""
        return ModelUsage(
            model=self.model,
            requests=self.requests + other.requests,
            errors=self.errors + other.errors,
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
            cost_usd=self.cost_usd + other.cost_usd,
            cost_saved_usd=self.cost_saved_usd + other.cost_saved_usd,
            exact_hits=self.exact_hits + other.exact_hits,
            semantic_hits=self.semantic_hits + other.semantic_hits,
        )


class UsageTracker:
    """Thread-safe per-model counters of what was served."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_model: dict[str, ModelUsage] = {}
        self.started = time.monotonic()

    def record(self, model: str, summary: ResponseSummary, hit: CacheLayer | None) -> None:
        """Count one answered request."""
        delta = ModelUsage(
            model=model,
            requests=1,
            prompt_tokens=summary.usage.prompt_tokens,
            completion_tokens=summary.usage.completion_tokens,
            cached_tokens=summary.usage.cached_tokens,
            cost_usd=summary.cost_usd,
            cost_saved_usd=summary.cost_saved_usd,
            exact_hits=int(hit is CacheLayer.EXACT),
            semantic_hits=int(hit is CacheLayer.SEMANTIC),
        )
        self._add(model, delta)

    def record_error(self, model: str) -> None:
        """Count one failed request."""
        self._add(model, ModelUsage(model=model, requests=1, errors=1))

    def _add(self, model: str, delta: ModelUsage) -> None:
        with self._lock:
            self._by_model[model] = self._by_model.get(model, ModelUsage(model)).plus(delta)

    def snapshot(self, model: str = "") -> tuple[list[ModelUsage], ModelUsage]:
        """Per-model rows (one model if named) and their total."""
        with self._lock:
            rows = [u for m, u in sorted(self._by_model.items()) if not model or m == model]
        total = ModelUsage(model="")
        for row in rows:
            total = total.plus(row)
        return rows, replace(total, model="")

    def uptime_s(self) -> float:
        """Seconds since the tracker was created."""
        return time.monotonic() - self.started
