"""The server's own pipeline as a benchmark target: requests go through the Service
(cache, router, models, budgets, ledger) exactly as a StreamGenerate call's do, minus
gRPC. ``optiserve bench --client-side`` measures the same workload over the network."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator

from optiserve.benchmarking.runner import BenchOutcome, BenchRequest
from optiserve.domain.types import (
    CacheMode,
    CacheOutcome,
    CachePolicy,
    GenerateRequest,
    ResponseSummary,
    SamplingParams,
    TextDelta,
)
from optiserve.models.catalogue import ModelCatalogue
from optiserve.models.local.backend import LocalHFBackend
from optiserve.service import Service


def outcome_of(summary: ResponseSummary) -> BenchOutcome:
    """What a benchmark keeps of a completed request's summary (the server's usage)."""
    hits = [c.layer.value for c in summary.trace.cache if c.outcome is CacheOutcome.HIT]
    return BenchOutcome(
        prompt_tokens=summary.usage.prompt_tokens,
        completion_tokens=summary.usage.completion_tokens,
        cached_tokens=summary.usage.cached_tokens,
        cost_usd=summary.cost_usd,
        cost_saved_usd=summary.cost_saved_usd,
        cache_layer=hits[0] if hits else "",
    )


class PipelineTarget:
    """Sends benchmark requests through ``service`` as ``tenant``."""

    def __init__(self, service: Service, catalogue: ModelCatalogue, tenant: str) -> None:
        self._service = service
        self._catalogue = catalogue
        self._tenant = tenant
        self._run = uuid.uuid4().hex[:8]
        self._ids = itertools.count(1)
        #: Batch sizes changed by this run, to restore: model -> its configured size.
        self._restore: dict[str, int] = {}

    async def send(self, r: BenchRequest) -> AsyncIterator[str | BenchOutcome]:
        """Text chunks, then the outcome; errors raise the domain error."""
        request = GenerateRequest(
            request_id=f"bench-{self._run}-{next(self._ids)}",
            prompt=r.prompt,
            model=r.target,
            sampling=SamplingParams(
                max_new_tokens=r.max_new_tokens, min_new_tokens=r.min_new_tokens
            ),
            cache=CachePolicy(mode=CacheMode.DEFAULT if r.cache else CacheMode.BYPASS),
            tenant=self._tenant,
        )
        events = self._service.stream(request)
        try:
            async for event in events:
                if isinstance(event, TextDelta):
                    yield event.text
                else:
                    yield outcome_of(event.summary)
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    async def set_batch_size(self, target: str, size: int) -> None:
        """The scheduler batch size of local model ``target``; 0 puts back its configured
        size (routes and remote models have none to set: unchanged)."""
        if not self._catalogue.has(target):
            return
        backend = self._catalogue.backend(target)
        if not isinstance(backend, LocalHFBackend):
            return
        if size == 0:
            if target in self._restore:
                backend.set_max_batch_size(self._restore.pop(target))
            return
        old = backend.set_max_batch_size(size)
        self._restore.setdefault(target, old)

    def restore(self) -> None:
        """Put back every batch size this run changed."""
        for target, size in self._restore.items():
            backend = self._catalogue.backend(target)
            if isinstance(backend, LocalHFBackend):
                backend.set_max_batch_size(size)
        self._restore.clear()
