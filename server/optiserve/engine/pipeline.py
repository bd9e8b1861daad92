"""The request pipeline: validate, (cache), route, generate, account.

Every Generate and StreamGenerate goes down the same road; ``generate`` is ``stream``
collected. The rpc layer calls only this class.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from optiserve.backends.base import Completion
from optiserve.engine.types import (
    DecisionTrace,
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


class Pipeline:
    """Answers generation requests; the one entry point below the transport."""

    def __init__(self, catalogue: ModelCatalogue, usage: UsageTracker) -> None:
        self.catalogue = catalogue
        self.usage = usage
        self.draining = False

    async def stream(self, request: GenerateRequest) -> AsyncIterator[StreamEvent]:
        """Text deltas as they are produced, then one :class:`StreamEnd`."""
        arrived = time.monotonic()
        if self.draining:
            raise Unavailable("the server is shutting down; retry on another replica")
        validate_request(request)
        name, backend, route_reason = self.catalogue.resolve(request.model)
        params = backend.resolve_sampling(request.sampling)
        try:
            async for event in backend.stream(request, params):
                if isinstance(event, Completion):
                    summary = _summary(name, backend.info.provider, event, arrived, route_reason)
                    self.usage.record(name, summary, hit=None)
                    yield StreamEnd(summary)
                elif event:
                    yield TextDelta(event)
        except OptiserveError:
            self.usage.record_error(name)
            raise

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
