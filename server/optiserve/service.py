"""The service: the one object the transport calls.

Every Generate and StreamGenerate goes down the same road: validate, plan (a named model, or
a route's chain with prompt compression), exact cache, semantic cache, then each model of the
plan in turn until one answers (reserve the budget, stream, settle, one ledger row);
``generate`` is ``stream`` collected. ``list_models``, ``usage`` and
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
from decimal import Decimal
from typing import cast

from optiserve.accounting.budget import Reservation
from optiserve.accounting.ledger import LedgerRow, utc_now
from optiserve.accounting.request import RequestAccount
from optiserve.accounting.spend import Charge, LedgerReport, Spending, charge_for
from optiserve.accounting.usage import ModelUsage, Outcome, UsageTracker
from optiserve.cache import CachedAnswer, CacheStats, ResponseCache, replay_chunks, require_hit
from optiserve.cache.response_cache import validate_policy
from optiserve.domain.errors import (
    BudgetExceeded,
    FailedPrecondition,
    InvalidRequest,
    OptiserveError,
    ResourceExhausted,
    Unavailable,
    status_code_name,
)
from optiserve.domain.pricing import ZERO, BudgetPressure, TokenCounts, prompt_token_bound
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
from optiserve.models.base import Backend, BackendDelta, BackendFinish, BackendStart
from optiserve.routing.planner import Plan, Planner

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
    #: From the usage ledger (None when it is off).
    ledger: LedgerReport | None = None
    #: Ledger rows that could not be written (disk full, read-only).
    ledger_failures: int = 0


class Service:
    """Answers generation requests, lists models, reports usage, drains."""

    def __init__(
        self,
        planner: Planner,
        usage: UsageTracker,
        cache: ResponseCache | None = None,
        *,
        spending: Spending | None = None,
        replay_chunk_chars: int = 32,
        max_pending_stores: int = 256,
    ) -> None:
        self._planner = planner
        self._catalogue = planner.catalogue
        self._spending = spending or Spending(None, None)
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

        Every attempt on a model (and every cache hit) is accounted exactly once: completed
        with its summary, or cut short (client gone, deadline, failure) with the tokens
        produced until then (see :mod:`optiserve.accounting`), and gets one ledger row.
        A failure before any text moves on to the plan's next model (a fallback); a failure
        after text was streamed ends the stream with the error.
        """
        arrived = time.monotonic()
        if self._draining:
            raise Unavailable("the server is shutting down; retry on another replica")
        validate_request(request)
        validate_policy(request.cache)
        pressure = BudgetPressure()
        if self._spending.limited and self._planner.routes(request):
            pressure = await self._spending.pressure(request.tenant)
        plan = self._planner.plan(request, pressure)
        first = self._catalogue.backend(plan.chain[0])
        _check_structured_output(plan.request, plan.chain[0], first.info)
        prepared = _prepared(first, plan.request)
        lookups: tuple[CacheLookup, ...] = ()
        if self._cache is not None:
            result = await self._cache.lookup(prepared, plan.target)
            lookups = result.trace
            answer = require_hit(prepared, result)
            if answer is not None:
                hit = _CacheHit(self._usage, self._spending, answer, prepared, arrived)
                try:
                    for chunk in replay_chunks(answer.text, self._replay_chunk_chars):
                        yield hit.delta(chunk)
                    yield StreamEnd(await hit.complete(lookups))
                except BaseException as exc:
                    hit.account.cut(exc)
                    raise
                return
        # Each model of the plan in turn. The events are yielded here, not by a nested
        # generator, so what the transport throws in (a client that stopped reading) and
        # a closed stream reach the attempt's account directly.
        fallbacks: list[str] = []
        for i, name in enumerate(plan.chain):
            last = i == len(plan.chain) - 1
            backend = self._catalogue.backend(name)
            try:
                attempt_request = prepared if i == 0 else _prepared(backend, plan.request)
                attempt = await self._open_attempt(
                    plan, name, backend.info, attempt_request, arrived
                )
            except OptiserveError as exc:
                if last or not (_may_fall_back(exc, request) or isinstance(exc, InvalidRequest)):
                    raise
                fallbacks.append(f"{name}: {status_code_name(exc)}: {exc.message}")
                continue
            items = backend.stream(attempt_request)
            try:
                async for item in items:
                    if isinstance(item, BackendFinish):
                        trace = DecisionTrace(
                            cache=lookups,
                            route_reason=plan.route_reason,
                            fallbacks=tuple(fallbacks),
                            route=plan.route,
                            compression=plan.compression,
                        )
                        summary = await attempt.complete(item, trace, self._premium(plan))
                        self._store_later(plan.target, attempt_request, attempt.text, item, summary)
                        yield StreamEnd(summary)
                        return
                    delta = attempt.take(item)
                    if delta is not None:
                        yield delta
                raise Unavailable(f"model {name!r} stopped without finishing the answer")
            except BaseException as exc:
                # GeneratorExit (the consumer closed the stream) and CancelledError (the
                # task was cancelled): the client went away or its deadline passed.
                await attempt.cut(exc)
                if (
                    attempt.sent
                    or last
                    or not isinstance(exc, OptiserveError)
                    or not _may_fall_back(exc, request)
                ):
                    raise
                fallbacks.append(f"{name}: {status_code_name(exc)}: {exc.message}")
                log.info(
                    "request %s: %s failed before its first token (%s); falling back to %s",
                    request.request_id,
                    name,
                    status_code_name(exc),
                    plan.chain[i + 1],
                )
            finally:
                # Closed at once when the stream is cut, so the model stops generating.
                close = getattr(items, "aclose", None)
                if close is not None:
                    await close()

    async def _open_attempt(
        self, plan: Plan, name: str, info: ModelInfo, request: GenerateRequest, arrived: float
    ) -> _Attempt:
        """Reserve the worst case of ``request`` on ``info`` (BudgetExceeded when it is
        above the request's max cost or a spending limit) and open its account."""
        max_new = request.sampling.max_new_tokens or 0
        worst = info.prices.worst_case(prompt_token_bound(request.sent_text()), max_new)
        _check_max_cost(request, info, worst)
        reservation = await self._spending.reserve(request.tenant, info, worst)
        account = RequestAccount(self._usage, name, request.deadline)
        return _Attempt(
            self._spending, plan, name, info, request, account, worst, reservation, arrived
        )

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

    def _premium(self, plan: Plan) -> ModelInfo | None:
        """The info of the plan's premium model (for the counterfactual cost), if any."""
        name = plan.route.premium_model
        return self._catalogue.backend(name).info if name else None

    # -- the cache write, off the response path ------------------------------------------

    def _store_later(
        self,
        target: str,
        request: GenerateRequest,
        text: str,
        done: BackendFinish,
        summary: ResponseSummary,
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
                request,
                target,
                text,
                done.completion_tokens,
                summary.cost_usd,
                done.finish_reason,
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
        """Every served model and route, the default marked."""
        return self._planner.models()

    def usage(self, model: str = "") -> UsageReport:
        """Measured usage since start (one model when named), with the cache's counters.

        Raises :class:`ModelNotFound` for a name this server does not serve.
        """
        if model:
            self._catalogue.backend(model)
        rows, total = self._usage.snapshot(model)
        return UsageReport(
            models=rows,
            total=total,
            uptime_s=self._usage.uptime_s(),
            cache=self._cache.stats() if self._cache is not None else None,
            dropped_stores=self._dropped_stores,
            ledger=self._spending.report(),
            ledger_failures=self._spending.ledger_failures,
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
        "structured output needs constrained decoding, not available for local models yet"
        if info.kind is ModelKind.LOCAL
        else "this model does not support structured output"
    )
    raise FailedPrecondition(
        f"model {name!r} cannot honour response_format.json_schema; {why}; omit it or "
        "choose a model that supports it"
    )


def _prepared(backend: Backend, request: GenerateRequest) -> GenerateRequest:
    """``request`` with ``backend``'s sampling defaults, checked to fit it."""
    request = replace(request, sampling=backend.resolve_sampling(request.sampling))
    backend.check_input(request)
    return request


def _may_fall_back(error: OptiserveError, request: GenerateRequest) -> bool:
    """UNAVAILABLE (down, timed out before the first token) and RESOURCE_EXHAUSTED (rate
    limited, queue full, this model over budget) move on to the next model, while the
    request's own deadline has not passed."""
    if not isinstance(error, (Unavailable, ResourceExhausted)):
        return False
    return request.deadline is None or time.monotonic() < request.deadline


def _check_max_cost(request: GenerateRequest, info: ModelInfo, worst: Decimal) -> None:
    """BudgetExceeded when ``info``'s worst case is above ``budget.max_cost_usd``."""
    if request.max_cost_usd is None or worst <= Decimal(str(request.max_cost_usd)):
        return
    raise BudgetExceeded(
        f"budget.max_cost_usd ${request.max_cost_usd:g} is below what model {info.name!r} "
        f"may cost for this prompt and max_new_tokens {request.sampling.max_new_tokens} "
        f"(worst case ${float(worst):.6f}); raise it, lower max_new_tokens or choose a "
        "cheaper model"
    )


def _status_of(error: BaseException, outcome: Outcome) -> str:
    """The ledger status of an attempt ended by ``error``."""
    if outcome is Outcome.CANCELLED:
        return "CANCELLED"
    if outcome is Outcome.DEADLINE_EXCEEDED:
        return "DEADLINE_EXCEEDED"
    return status_code_name(error)


class _Attempt:
    """One model's try at a request: its account, its reservation, its ledger row."""

    def __init__(
        self,
        spending: Spending,
        plan: Plan,
        model: str,
        info: ModelInfo,
        request: GenerateRequest,
        account: RequestAccount,
        worst: Decimal,
        reservation: Reservation | None,
        arrived: float,
    ) -> None:
        self._spending = spending
        self._arrived = arrived
        self._plan = plan
        self._model = model
        self._info = info
        self._request = request
        self.account = account
        self._worst = worst
        self._reservation = reservation
        self._parts: list[str] = []
        self._started = False
        self._measured_start = True

    @property
    def sent(self) -> bool:
        """True once text went out to the client (no fallback after that)."""
        return bool(self._parts)

    @property
    def text(self) -> str:
        """The text sent so far."""
        return "".join(self._parts)

    def take(self, item: BackendStart | BackendDelta) -> TextDelta | None:
        """Account a start or a delta; the text to send, if any."""
        if isinstance(item, BackendStart):
            self.account.started(item.prompt_tokens)
            self._started, self._measured_start = True, item.measured
            return None
        self.account.produced(item.tokens)
        if not item.text:
            return None
        self._parts.append(item.text)
        return TextDelta(item.text)

    async def complete(
        self, done: BackendFinish, trace: DecisionTrace, premium: ModelInfo | None
    ) -> ResponseSummary:
        """The summary of the finished answer; its charge settled and its row committed."""
        charge = charge_for(
            self._info, done.counts, reported=done.usage_reported, reserved=self._worst
        )
        summary = _summary_of(self._model, self._info, done, charge, trace, self._arrived, premium)
        self.account.completed(summary)
        await self._spending.settle(self._reservation, self._row(charge, "OK"))
        return summary

    async def cut(self, error: BaseException) -> None:
        """Account the attempt ended by ``error`` (nothing when it had completed)."""
        outcome = self.account.cut(error)
        if outcome is None:
            return
        log.debug("request %s on %s: %s", self._request.request_id, self._model, outcome.value)
        counts = TokenCounts(
            input_tokens=self.account.prompt_tokens, output_tokens=self.account.completion_tokens
        )
        # A remote call that was accepted and then cut is billed by the provider for what it
        # generated, which it no longer tells us: the reserved worst case is charged.
        reported = self._measured_start or not self._started
        charge = charge_for(self._info, counts, reported=reported, reserved=self._worst)
        await self._spending.settle(
            self._reservation, self._row(charge, _status_of(error, outcome))
        )

    def _row(self, charge: Charge, status: str) -> LedgerRow:
        """The ledger row; dated when its reservation was made, so a request that straddles
        midnight counts on the same day in the ledger as in the budget."""
        reservation = self._reservation
        return LedgerRow(
            at=reservation.made_at if reservation is not None else utc_now(),
            request_id=self._request.request_id,
            tenant=self._request.tenant,
            route=self._plan.route.route,
            model=self._model,
            provider=self._info.provider,
            counts=charge.counts,
            cost_usd=charge.cost_usd,
            cost_saved_usd=ZERO,
            cache_layer="",
            latency_ms=(time.monotonic() - self._arrived) * 1000.0,
            status=status,
            usage_estimated=charge.estimated,
        )


class _CacheHit:
    """A cached answer replayed as a stream: its account and its ledger row."""

    def __init__(
        self,
        usage: UsageTracker,
        spending: Spending,
        answer: CachedAnswer,
        request: GenerateRequest,
        arrived: float,
    ) -> None:
        self.account = RequestAccount(usage, answer.model, request.deadline)
        self._spending = spending
        self._answer = answer
        self._request = request
        self._arrived = arrived
        self._first_at: float | None = None

    def delta(self, chunk: str) -> TextDelta:
        if self._first_at is None:
            self._first_at = time.monotonic()
        return TextDelta(chunk)

    async def complete(self, lookups: tuple[CacheLookup, ...]) -> ResponseSummary:
        answer, end = self._answer, time.monotonic()
        summary = ResponseSummary(
            finish_reason=FinishReason.CACHED,
            usage=Usage(cached_tokens=answer.completion_tokens),
            model=answer.model,
            provider=CACHE_PROVIDER,
            trace=DecisionTrace(cache=lookups, route_reason=f"{answer.layer.value} cache hit"),
            timings=Timings(
                time_to_first_token_ms=((self._first_at or end) - self._arrived) * 1000.0,
                total_ms=(end - self._arrived) * 1000.0,
            ),
            cost_saved_usd=answer.cost_usd,
        )
        self.account.completed(summary, hit=answer.layer)
        row = LedgerRow(
            at=utc_now(),
            request_id=self._request.request_id,
            tenant=self._request.tenant,
            route="",
            model=answer.model,
            provider=CACHE_PROVIDER,
            counts=TokenCounts(),
            cost_usd=ZERO,
            cost_saved_usd=Decimal(str(answer.cost_usd)),
            cache_layer=answer.layer.value,
            latency_ms=summary.timings.total_ms,
            status="OK",
            usage_estimated=False,
        )
        await self._spending.settle(None, row)
        return summary


def _summary_of(
    model: str,
    info: ModelInfo,
    done: BackendFinish,
    charge: Charge,
    trace: DecisionTrace,
    arrived: float,
    premium: ModelInfo | None,
) -> ResponseSummary:
    end = time.monotonic()
    ttft = (done.first_token_at - arrived) * 1000.0 if done.first_token_at else 0.0
    rate = 0.0
    if done.first_token_at and done.last_token_at and done.completion_tokens > 1:
        span = done.last_token_at - done.first_token_at
        rate = (done.completion_tokens - 1) / span if span > 0 else 0.0
    if premium is not None:
        premium_cost = float(premium.prices.cost(charge.counts))
        trace = replace(trace, route=replace(trace.route, premium_cost_usd=premium_cost))
    return ResponseSummary(
        finish_reason=done.finish_reason,
        usage=Usage(
            prompt_tokens=done.prompt_tokens,
            completion_tokens=done.completion_tokens,
            provider_cache_read_tokens=charge.counts.cache_read_tokens,
            provider_cache_write_tokens=charge.counts.cache_write_tokens,
            estimated=charge.estimated,
        ),
        model=model,
        provider=info.provider,
        trace=trace,
        timings=Timings(
            queued_ms=done.queued_ms,
            time_to_first_token_ms=ttft,
            total_ms=(end - arrived) * 1000.0,
            decode_tokens_per_s=rate,
        ),
        cost_usd=float(charge.cost_usd),
    )
