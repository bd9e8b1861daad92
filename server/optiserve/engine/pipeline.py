"""The request pipeline: validate, exact cache, semantic cache, route, generate, account.

Every Generate and StreamGenerate goes down the same road; ``generate`` is ``stream``
collected. The rpc layer calls only this class.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace

from optiserve.backends.base import Completion
from optiserve.cache import CachedAnswer, ResponseCache, replay_chunks, require_hit
from optiserve.cache.response_cache import validate_policy
from optiserve.engine.types import (
    CacheLookup,
    DecisionTrace,
    FinishReason,
    GenerateRequest,
    GenerateResult,
    ResponseSummary,
    StreamEnd,
    StreamEvent,
    TextDelta,
    Timings,
    Usage,
)
from optiserve.engine.validation import validate_request
from optiserve.errors import OptiserveError, Unavailable
from optiserve.routing.catalogue import ModelCatalogue
from optiserve.routing.usage import UsageTracker

log = logging.getLogger(__name__)

CACHE_PROVIDER = "cache"


class Pipeline:
    """Answers generation requests; the one entry point below the transport."""

    def __init__(
        self,
        catalogue: ModelCatalogue,
        usage: UsageTracker,
        cache: ResponseCache | None = None,
        replay_chunk_chars: int = 32,
    ) -> None:
        self.catalogue = catalogue
        self.usage = usage
        self.cache = cache
        self.replay_chunk_chars = replay_chunk_chars
        self.draining = False

    async def stream(self, request: GenerateRequest) -> AsyncIterator[StreamEvent]:
        """Text deltas as they are produced, then one :class:`StreamEnd`."""
        arrived = time.monotonic()
        if self.draining:
            raise Unavailable("the server is shutting down; retry on another replica")
        validate_request(request)
        validate_policy(request.cache)
        name, backend, route_reason = self.catalogue.resolve(request.model)
        request = replace(request, sampling=backend.resolve_sampling(request.sampling))
        lookups: tuple[CacheLookup, ...] = ()
        if self.cache is not None:
            result = await self.cache.lookup(request, name)
            lookups = result.trace
            answer = require_hit(request, result)
            if answer is not None:
                async for event in self._replay(answer, lookups, arrived, route_reason):
                    yield event
                return
        parts: list[str] = []
        try:
            async for item in backend.stream(request):
                if isinstance(item, Completion):
                    summary = _summary(name, backend.info.provider, item, arrived, route_reason)
                    summary = replace(summary, trace=replace(summary.trace, cache=lookups))
                    if self.cache is not None:
                        await self.cache.store(
                            request,
                            name,
                            "".join(parts),
                            item.completion_tokens,
                            item.cost_usd,
                            item.finish_reason,
                        )
                    self.usage.record(name, summary, hit=None)
                    yield StreamEnd(summary)
                elif item:
                    parts.append(item)
                    yield TextDelta(item)
        except OptiserveError:
            self.usage.record_error(name)
            raise

    async def _replay(
        self,
        answer: CachedAnswer,
        lookups: tuple[CacheLookup, ...],
        arrived: float,
        route_reason: str,
    ) -> AsyncIterator[StreamEvent]:
        """A cached answer as a stream: chunks at once, then the summary of the hit."""
        first_at: float | None = None
        for chunk in replay_chunks(answer.text, self.replay_chunk_chars):
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
        self.usage.record(answer.model, summary, hit=answer.layer)
        yield StreamEnd(summary)

    async def generate(self, request: GenerateRequest) -> GenerateResult:
        """The whole answer at once."""
        parts: list[str] = []
        async for event in self.stream(request):
            if isinstance(event, TextDelta):
                parts.append(event.text)
            else:
                return GenerateResult(request.request_id, "".join(parts), event.summary)
        raise Unavailable("the model stopped without finishing the answer")


def _summary(
    model: str, provider: str, done: Completion, arrived: float, route_reason: str
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
