"""The service: the one object the transport calls.

Every Generate and StreamGenerate goes down the same road: validate, exact cache, semantic
cache, model, usage; ``generate`` is ``stream`` collected. ``list_models``, ``usage`` and
``drain`` are the rest of what the rpc layer may ask. Nothing here knows gRPC.

A miss's answer is written to the cache *after* its last chunk has gone out: the write
(embedding, SQLite) runs as a background task, at most ``max_pending_stores`` at a time;
when that many are pending, further writes are dropped and counted
(``dropped_stores``), never waited for. :meth:`Service.drain` waits for the pending ones.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, replace
from typing import cast

from optiserve.accounting.request import RequestAccount
from optiserve.accounting.usage import ModelUsage, UsageTracker
from optiserve.cache import CachedAnswer, CacheStats, ResponseCache, replay_chunks, require_hit
from optiserve.cache.response_cache import validate_policy
from optiserve.domain.errors import FailedPrecondition, Unavailable
from optiserve.domain.types import (
    CacheLookup,
    DecisionTrace,
    FinishReason,
    GenerateRequest,
    GenerateResult,
    ModelInfo,
    ModelKind,
    ResponseSummary,
    StreamEnd,
    StreamEvent,
    TextDelta,
    Timings,
    Usage,
)
from optiserve.domain.validation import validate_request
from optiserve.models.base import BackendDelta, BackendFinish, BackendStart
from optiserve.models.catalogue import ModelCatalogue

log = logging.getLogger(__name__)

CACHE_PROVIDER = "cache"


@dataclass(frozen=True)
class UsageReport:
    """What GetUsage answers: per-model rows, their total, uptime and the cache's counters."""

    models: list[ModelUsage]
    total: ModelUsage
    uptime_s: float
    #: None when the server runs without a cache.
    cache: CacheStats | None
    #: Cache writes dropped because too many were pending.
    dropped_stores: int = 0


class Service:
    """Answers generation requests, lists models, reports usage, drains."""

    def __init__(
        self,
        catalogue: ModelCatalogue,
        usage: UsageTracker,
        cache: ResponseCache | None = None,
        *,
        replay_chunk_chars: int = 32,
        max_pending_stores: int = 256,
    ) -> None:
        self._catalogue = catalogue
        self._usage = usage
        self._cache = cache
        self._replay_chunk_chars = replay_chunk_chars
        self._max_pending_stores = max_pending_stores
        self._pending_stores: set[asyncio.Task[None]] = set()
        self._dropped_stores = 0
        self._draining = False

    # -- generation ----------------------------------------------------------------------

    async def stream(self, request: GenerateRequest) -> AsyncIterator[StreamEvent]:
        """Text deltas as they are produced, then one :class:`StreamEnd`.

        Every request that reaches a model (or is answered from the cache) is accounted
        exactly once: completed with its summary, or cut short (client gone, deadline,
        failure) with the tokens produced until then (see :mod:`optiserve.accounting`).
        """
        arrived = time.monotonic()
        if self._draining:
            raise Unavailable("the server is shutting down; retry on another replica")
        validate_request(request)
        validate_policy(request.cache)
        name, backend, route_reason = self._catalogue.resolve(request.model)
        _check_structured_output(request, name, backend.info)
        request = replace(request, sampling=backend.resolve_sampling(request.sampling))
        backend.check_input(request)
        lookups: tuple[CacheLookup, ...] = ()
        answer: CachedAnswer | None = None
        if self._cache is not None:
            result = await self._cache.lookup(request, name)
            lookups = result.trace
            answer = require_hit(request, result)
        account = RequestAccount(self._usage, answer.model if answer else name, request.deadline)
        try:
            if answer is not None:
                async for event in self._replay(answer, lookups, arrived, account):
                    yield event
                return
            parts: list[str] = []
            items = backend.stream(request)
            try:
                async for item in items:
                    if isinstance(item, BackendStart):
                        account.started(item.prompt_tokens)
                    elif isinstance(item, BackendDelta):
                        account.produced(item.tokens)
                        if item.text:
                            parts.append(item.text)
                            yield TextDelta(item.text)
                    else:
                        summary = _summary(name, backend.info.provider, item, arrived, route_reason)
                        summary = replace(summary, trace=replace(summary.trace, cache=lookups))
                        account.completed(summary)
                        self._store_later(request, name, "".join(parts), item)
                        yield StreamEnd(summary)
            finally:
                # Closed at once when the stream is cut, so the model stops generating.
                close = getattr(items, "aclose", None)
                if close is not None:
                    await close()
            if not account.closed:
                raise Unavailable(f"model {name!r} stopped without finishing the answer")
        except BaseException as exc:
            # GeneratorExit (the consumer closed the stream) and CancelledError (the task
            # was cancelled): the client went away or its deadline passed.
            outcome = account.cut(exc)
            if outcome is not None:
                log.debug("request %s on %s: %s", request.request_id, name, outcome.value)
            raise

    async def generate(self, request: GenerateRequest) -> GenerateResult:
        """The whole answer at once."""
        parts: list[str] = []
        events = cast(AsyncGenerator[StreamEvent, None], self.stream(request))
        try:
            async for event in events:
                if isinstance(event, TextDelta):
                    parts.append(event.text)
                else:
                    return GenerateResult(request.request_id, "".join(parts), event.summary)
        finally:
            await events.aclose()
        raise Unavailable("the model stopped without finishing the answer")

    async def _replay(
        self,
        answer: CachedAnswer,
        lookups: tuple[CacheLookup, ...],
        arrived: float,
        account: RequestAccount,
    ) -> AsyncIterator[StreamEvent]:
        """A cached answer as a stream: chunks at once, then the summary of the hit."""
        first_at: float | None = None
        for chunk in replay_chunks(answer.text, self._replay_chunk_chars):
            if first_at is None:
                first_at = time.monotonic()
            yield TextDelta(chunk)
        end = time.monotonic()
        summary = ResponseSummary(
            finish_reason=FinishReason.CACHED,
            usage=Usage(cached_tokens=answer.completion_tokens),
            model=answer.model,
            provider=CACHE_PROVIDER,
            trace=DecisionTrace(cache=lookups, route_reason=f"{answer.layer.value} cache hit"),
            timings=Timings(
                time_to_first_token_ms=((first_at or end) - arrived) * 1000.0,
                total_ms=(end - arrived) * 1000.0,
            ),
            cost_saved_usd=answer.cost_usd,
        )
        account.completed(summary, hit=answer.layer)
        yield StreamEnd(summary)

    # -- the cache write, off the response path ------------------------------------------

    def _store_later(
        self, request: GenerateRequest, model: str, text: str, done: BackendFinish
    ) -> None:
        """Write the answer to the cache in a background task (dropped when too many wait)."""
        cache = self._cache
        if cache is None or not cache.should_store(request, text, done.finish_reason):
            return
        if len(self._pending_stores) >= self._max_pending_stores:
            self._dropped_stores += 1
            log.warning(
                "cache write dropped: %d writes pending (limit %d)",
                len(self._pending_stores),
                self._max_pending_stores,
            )
            return
        task = asyncio.get_running_loop().create_task(
            cache.store(
                request, model, text, done.completion_tokens, done.cost_usd, done.finish_reason
            ),
            name=f"cache-store-{request.request_id}",
        )
        self._pending_stores.add(task)
        task.add_done_callback(self._pending_stores.discard)

    @property
    def pending_stores(self) -> int:
        """Cache writes not finished yet."""
        return len(self._pending_stores)

    # -- the rest of the contract --------------------------------------------------------

    def list_models(self) -> list[ModelInfo]:
        """Every served model, the default marked."""
        return self._catalogue.models()

    def usage(self, model: str = "") -> UsageReport:
        """Measured usage since start (one model when named), with the cache's counters.

        Raises :class:`ModelNotFound` for a name this server does not serve.
        """
        if model:
            self._catalogue.resolve(model)
        rows, total = self._usage.snapshot(model)
        return UsageReport(
            models=rows,
            total=total,
            uptime_s=self._usage.uptime_s(),
            cache=self._cache.stats() if self._cache is not None else None,
            dropped_stores=self._dropped_stores,
        )

    @property
    def draining(self) -> bool:
        """True once :meth:`drain` was called: new requests get UNAVAILABLE."""
        return self._draining

    async def drain(self, timeout_s: float) -> None:
        """Refuse new requests, then wait up to ``timeout_s`` for pending cache writes."""
        self._draining = True
        late = await self.wait_for_stores(timeout_s)
        if late:
            log.warning("drain: %d cache writes still pending after %.1fs", late, timeout_s)

    async def wait_for_stores(self, timeout_s: float | None = None) -> int:
        """Wait until the cache writes pending now have finished (at most ``timeout_s``);
        return how many are still pending."""
        pending = list(self._pending_stores)
        if not pending:
            return 0
        timeout = None if timeout_s is None else max(0.0, timeout_s)
        _, late = await asyncio.wait(pending, timeout=timeout)
        return len(late)


def _check_structured_output(request: GenerateRequest, name: str, info: ModelInfo) -> None:
    """FailedPrecondition when the request has a json_schema its model cannot honour
    (before the cache: a schema never gets an answer the model could not have given)."""
    if not request.json_schema or info.structured_output:
        return
    why = (
        "structured output is not supported for local models yet"
        if info.kind is ModelKind.LOCAL
        else "this model does not support structured output"
    )
    raise FailedPrecondition(
        f"model {name!r} cannot honour response_format.json_schema; {why}; omit it or "
        "choose a model that supports it"
    )


def _summary(
    model: str, provider: str, done: BackendFinish, arrived: float, route_reason: str
) -> ResponseSummary:
    end = time.monotonic()
    ttft = (done.first_token_at - arrived) * 1000.0 if done.first_token_at else 0.0
    rate = 0.0
    if done.first_token_at and done.last_token_at and done.completion_tokens > 1:
        span = done.last_token_at - done.first_token_at
        rate = (done.completion_tokens - 1) / span if span > 0 else 0.0
    return ResponseSummary(
        finish_reason=done.finish_reason,
        usage=Usage(prompt_tokens=done.prompt_tokens, completion_tokens=done.completion_tokens),
        model=model,
        provider=provider,
        trace=DecisionTrace(route_reason=route_reason),
        timings=Timings(
            queued_ms=done.queued_ms,
            time_to_first_token_ms=ttft,
            total_ms=(end - arrived) * 1000.0,
            decode_tokens_per_s=rate,
        ),
        cost_usd=done.cost_usd,
    )
