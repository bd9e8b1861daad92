"""Measured usage counters per model (in memory, since server start).

Every request that reached a model (or was answered from the cache) is counted once in
``requests`` and, unless it completed, in exactly one of ``cancelled``,
``deadline_exceeded`` or ``errors``; the tokens it produced (those of a cut-short answer
included) are in the token counts either way.
"""

from __future__ import annotations

import enum
import threading
import time
from dataclasses import dataclass, fields, replace

from optiserve.domain.types import CacheLayer, ResponseSummary


class Outcome(enum.Enum):
    """How a request that reached a model ended."""

    OK = "ok"
    #: The client cancelled or went away before the answer was complete.
    CANCELLED = "cancelled"
    #: The request's deadline passed before the answer was complete.
    DEADLINE_EXCEEDED = "deadline_exceeded"
    #: Any other failure.
    ERROR = "error"


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
    cancelled: int = 0
    deadline_exceeded: int = 0

    def plus(self, other: ModelUsage) -> ModelUsage:
        """Field-wise sum (keeps this model name)."""
        sums = {
            f.name: getattr(self, f.name) + getattr(other, f.name)
            for f in fields(self)
            if f.name != "model"
        }
        return ModelUsage(model=self.model, **sums)


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

    def record_cut(
        self, model: str, outcome: Outcome, *, prompt_tokens: int = 0, completion_tokens: int = 0
    ) -> None:
        """Count one request that did not complete, with the tokens it produced until then."""
        if outcome is Outcome.OK:
            raise ValueError("a completed request is counted by record(), with its summary")
        delta = ModelUsage(
            model=model,
            requests=1,
            errors=int(outcome is Outcome.ERROR),
            cancelled=int(outcome is Outcome.CANCELLED),
            deadline_exceeded=int(outcome is Outcome.DEADLINE_EXCEEDED),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )
        self._add(model, delta)

    def record_error(self, model: str) -> None:
        """Count one failed request (no tokens)."""
        self.record_cut(model, Outcome.ERROR)

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
