"""What every remote backend does the same way: the Backend protocol around one provider
call, with bounded retries, replica choice, structured-output checks and usage.

A provider backend (:mod:`.openai_backend`, :mod:`.anthropic_backend`) only says how to
build its SDK client and how to turn one streamed call into :data:`.events.UpstreamEvent`
values; :class:`RemoteBackend` does the rest. Every call is streamed, also for Generate (the
service collects the stream), so usage always comes the same way.

Retries: a call that fails before any text reached the caller is retried per
:class:`~.retry.RetryPolicy` (at most ``1 + max_retries`` calls per request), each on the
least-loaded healthy replica this request has not tried yet. Once text was yielded nothing
is retried: the failure is raised and the caller sees the answer cut. A stream that ends
without its final event is a failure (:class:`~.errors.StreamCut`), never a clean finish.

Structured output: the answer is held back, validated, and yielded as one delta. A
non-conforming answer is retried once (that call counts against the same bound), then the
request fails UNAVAILABLE with the validation error. The finish then carries the tokens of
every completed call, summed: each of them was paid for.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import Any, Generic

import httpx2

from optiserve.domain.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidRequest,
    OptiserveError,
    Unavailable,
)
from optiserve.domain.pricing import TokenCounts, prompt_token_bound, prompt_token_estimate
from optiserve.domain.types import (
    FinishReason,
    GenerateRequest,
    ModelInfo,
    ModelKind,
    SamplingParams,
)
from optiserve.models.base import BackendDelta, BackendEvent, BackendFinish, BackendStart
from optiserve.models.config import ModelConfig
from optiserve.models.remote.config import ProviderConfig
from optiserve.models.remote.errors import Failure, ProviderErrors, StreamCut
from optiserve.models.remote.events import Accepted, Text, UpstreamEvent, Usage
from optiserve.models.remote.pools import ProviderPool, ProviderPools
from optiserve.models.remote.replicas import ClientT, Replica
from optiserve.models.remote.retry import RetryPolicy
from optiserve.models.remote.structured import AnswerSchema

log = logging.getLogger(__name__)


@dataclass
class _Call:
    """What one upstream call produced."""

    pieces: list[str] = field(default_factory=list)
    #: The provider accepted the call (a failure from now on cuts its stream).
    accepted: bool = False
    #: True once a piece was yielded to the caller (the call can no longer be retried).
    sent: bool = False
    usage: TokenCounts | None = None
    reason: FinishReason | None = None
    first_at: float | None = None
    last_at: float | None = None

    def add(self, text: str) -> None:
        now = time.monotonic()
        self.pieces.append(text)
        self.first_at = self.first_at or now
        self.last_at = now


@dataclass
class _Run:
    """One request across its calls."""

    schema: AnswerSchema | None
    #: prompt_token_bound of the request's text.
    bound: int
    tried: list[Replica[Any]] = field(default_factory=list)
    #: Calls that completed (with their final event), for the finish's counts.
    done: list[_Call] = field(default_factory=list)
    started: bool = False
    #: A non-conforming structured answer was already retried.
    rechecked: bool = False


class RemoteBackend(ABC, Generic[ClientT]):
    """A model served by a remote provider (see the module docstring)."""

    #: True when a structured answer streams as a tool input (Anthropic), not as text.
    structured_as_tool_input = False

    def __init__(
        self, model: ModelConfig, provider: ProviderConfig, key: str, pools: ProviderPools
    ) -> None:
        self._model = model
        self._provider = provider
        self._key = key
        self._pools = pools
        self._errors = ProviderErrors(provider, key)
        self._policy = RetryPolicy.of(provider)
        self._pool: ProviderPool[ClientT] | None = None

    # -- provider specifics ----------------------------------------------------------------

    @abstractmethod
    def _client(self, base_url: str | None, http: httpx2.AsyncClient) -> ClientT:
        """The SDK client for one base URL (None: the SDK's default) over the shared pool,
        with the SDK's own retries off."""

    @abstractmethod
    def _call(
        self,
        client: ClientT,
        request: GenerateRequest,
        schema: AnswerSchema | None,
        timeout: httpx2.Timeout,
    ) -> AsyncGenerator[UpstreamEvent, None]:
        """One streamed call: Accepted, then Text / Usage / Final events in the order the
        provider sends them. Closing the iterator closes the call."""

    @property
    def _needs_key(self) -> bool:
        """False for providers that take no key (an OpenAI-compatible server)."""
        return True

    # -- Backend protocol ----------------------------------------------------------------

    @property
    def info(self) -> ModelInfo:
        """What ListModels shows."""
        m, p = self._model, self._provider
        return ModelInfo(
            name=m.name,
            kind=ModelKind.REMOTE,
            provider=p.name,
            source=m.source,
            provider_model=m.source,
            context_length=m.context_length,
            description=m.description,
            prices=m.prices,
            tier=m.tier_value,
            quality=m.quality,
            max_new_tokens_cap=m.max_new_tokens_cap,
            default_max_new_tokens=m.default_max_new_tokens,
            structured_output=True,
        )

    def load(self) -> None:
        """Join the provider's pooled client (no network I/O). Without a key nothing is
        built: the model is listed and its requests fail FAILED_PRECONDITION."""
        if self._pool is None and (self._key or not self._needs_key):
            self._pool = self._pools.open(self._provider, self._client)

    def close(self) -> None:
        """Leave the provider's pool; the provider's last model closes it (best effort from
        any thread, see :mod:`~optiserve.models.remote.pools`)."""
        if self._pool is not None:
            self._pool = None
            self._pools.release(self._provider)

    def resolve_sampling(self, params: SamplingParams) -> SamplingParams:
        """Fill max_new_tokens with the model's default and check the cap.

        A provider cannot be held to a minimum length, so min_new_tokens is 0: the model's
        ``default_min_new_tokens`` does not apply, and a request that sets it above 0
        explicitly is refused (FAILED_PRECONDITION) rather than silently not honoured.
        """
        m = self._model
        max_new = params.max_new_tokens
        if max_new is None:
            max_new = m.default_max_new_tokens
        elif max_new > m.max_new_tokens_cap:
            raise InvalidRequest(
                f"sampling.max_new_tokens must be in [1, {m.max_new_tokens_cap}] for model "
                f"{m.name!r}, got {max_new}"
            )
        min_new = params.min_new_tokens
        if min_new is not None and min_new > max_new:
            raise InvalidRequest(
                f"sampling.min_new_tokens must be in [0, {max_new}] (at most max_new_tokens) "
                f"for model {m.name!r}, got {min_new}"
            )
        if min_new:
            raise FailedPrecondition(
                f"sampling.min_new_tokens={min_new} cannot be honoured by model {m.name!r}: "
                f"provider {self._provider.name!r} has no minimum answer length; leave "
                "min_new_tokens unset or 0, or use a local model"
            )
        return replace(params, max_new_tokens=max_new, min_new_tokens=0)

    def check_input(self, request: GenerateRequest) -> None:
        """Refuse a prompt that cannot fit even by a typical count: estimated prompt tokens
        plus max_new_tokens above the context length (the provider counts exactly)."""
        context = self._model.context_length
        if not context:
            return
        max_new = request.sampling.max_new_tokens or 0
        estimate = prompt_token_estimate(request.sent_text())
        if estimate + max_new > context:
            raise InvalidRequest(
                f"the prompt (about {estimate} tokens) plus max_new_tokens ({max_new}) exceeds "
                f"the context length of model {self._model.name!r} ({context}); shorten the "
                "prompt or lower max_new_tokens"
            )

    async def stream(self, request: GenerateRequest) -> AsyncIterator[BackendEvent]:
        """Stream the answer (see the module docstring and the Backend protocol)."""
        pool = self._ready_pool()
        pool.bind_loop()
        run = _Run(
            schema=AnswerSchema.parse(request.json_schema) if request.json_schema else None,
            bound=prompt_token_bound(request.sent_text()),
        )
        while True:
            replica = pool.replicas.pick(run.tried)
            run.tried.append(replica)
            call = _Call()
            failure: Failure | None = None
            verdict: bool | None = None
            pool.replicas.started(replica)
            try:
                # aclosing: a caller that stops early closes the provider's stream now.
                async with aclosing(self._relay(replica.client, request, run, call)) as relay:
                    async for event in relay:
                        yield event
                verdict = True
            except OptiserveError:  # ours (a deadline, a prompt the provider cannot take)
                raise
            except Exception as exc:
                failure = self._errors.classify(
                    exc, deadline_passed=_passed(request.deadline), mid_stream=call.accepted
                )
                verdict = False if failure.replica_fault else None
            finally:
                pool.replicas.finished(replica, ok=verdict)
            if failure is not None:
                # Raised here, outside the except block: the SDK's exception (whose request
                # holds the key's header) is not even the domain error's __context__.
                wait = self._retry_wait(failure, call, run, request.deadline)
                if wait is None:
                    raise failure.error
                self._log_retry(replica, failure.error.message, len(run.tried), wait)
                await asyncio.sleep(wait)
                continue
            run.done.append(call)
            if run.schema is None:
                yield self._finish(run, first=call.first_at, last=call.last_at)
                return
            answer, problem = run.schema.check(
                "".join(call.pieces), tool_input=self.structured_as_tool_input
            )
            if problem is None:
                now = time.monotonic()
                yield BackendDelta(answer, len(call.pieces))
                yield self._finish(run, first=now, last=now)
                return
            if run.rechecked or len(run.tried) >= self._policy.max_calls:
                raise Unavailable(
                    f"provider answer does not match response_format.json_schema: {problem} "
                    f"(provider {self._provider.name!r}, {len(run.done)} answers checked)"
                )
            run.rechecked = True
            self._log_retry(replica, f"non-conforming answer: {problem}", len(run.tried), 0.0)

    async def _relay(
        self, client: ClientT, request: GenerateRequest, run: _Run, call: _Call
    ) -> AsyncGenerator[BackendEvent, None]:
        """One upstream call as backend events (the start once per request; text at once
        unless a structured answer is held back), recorded in ``call``. Raises StreamCut
        when the call ends without its final event."""
        events = self._call(client, request, run.schema, self._timeout(request))
        try:
            async for event in events:
                if not run.started:
                    run.started = True
                    yield BackendStart(prompt_tokens=run.bound, measured=False)
                if isinstance(event, Accepted):
                    call.accepted = True
                elif isinstance(event, Text):
                    call.add(event.text)
                    if run.schema is None:
                        call.sent = True
                        yield BackendDelta(event.text, 1)
                elif isinstance(event, Usage):
                    call.usage = event.counts
                else:
                    call.reason = event.reason
        finally:
            await events.aclose()
        if call.reason is None:
            raise StreamCut(f"{len(call.pieces)} text chunks received")

    # -- helpers ---------------------------------------------------------------------------

    def _ready_pool(self) -> ProviderPool[ClientT]:
        if self._needs_key and not self._key:
            env = self._provider.key_env
            raise FailedPrecondition(
                f"provider {self._provider.name!r} has no API key: set the environment "
                f"variable {env} (or api_key in its [[providers]] entry) and restart"
            )
        if self._pool is None:
            raise Unavailable(f"model {self._model.name!r} is not loaded (server starting?)")
        return self._pool

    def _timeout(self, request: GenerateRequest) -> httpx2.Timeout:
        """The call's timeouts: the provider's, shortened to the request's deadline."""
        read, connect = self._provider.timeout_s, self._provider.connect_timeout_s
        if request.deadline is not None:
            left = request.deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExceeded(
                    f"the request's deadline passed before provider {self._provider.name!r} "
                    "was called"
                )
            read, connect = min(read, left), min(connect, left)
        return httpx2.Timeout(read, connect=connect)

    def _retry_wait(
        self, failure: Failure, call: _Call, run: _Run, deadline: float | None
    ) -> float | None:
        """Seconds to wait before the next call, or None: fail now (not retryable, text
        already sent, calls spent, or the wait would outlast the deadline)."""
        if not failure.retryable or call.sent:
            return None
        return self._policy.wait_s(
            len(run.tried), failure.retry_after_s, deadline, time.monotonic()
        )

    def _finish(self, run: _Run, *, first: float | None, last: float | None) -> BackendFinish:
        """The finish: the summed counts of the completed calls (a call without usage
        counts the prompt's bound and the chunks it sent, and marks the usage as not
        reported)."""
        calls = run.done
        total = TokenCounts()
        for call in calls:
            counts = call.usage or TokenCounts(
                input_tokens=run.bound, output_tokens=len(call.pieces)
            )
            total = _add(total, counts)
        reason = calls[-1].reason
        assert reason is not None
        return BackendFinish(
            finish_reason=reason,
            prompt_tokens=total.prompt_tokens,
            completion_tokens=total.output_tokens,
            queued_ms=0.0,
            first_token_at=first,
            last_token_at=last,
            cache_read_tokens=total.cache_read_tokens,
            cache_write_5m_tokens=total.cache_write_5m_tokens,
            cache_write_1h_tokens=total.cache_write_1h_tokens,
            usage_reported=all(call.usage is not None for call in calls),
        )

    def _log_retry(self, replica: Replica[ClientT], why: str, call: int, wait: float) -> None:
        log.info(
            "retrying provider %r after call %d of %d (%s) in %.3f s",
            self._provider.name,
            call,
            self._policy.max_calls,
            why,
            wait,
            extra={
                "provider": self._provider.name,
                "model": self._model.name,
                "replica": replica.url,
                "attempt": call,
                "wait_s": round(wait, 3),
            },
        )


def _passed(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


def _add(a: TokenCounts, b: TokenCounts) -> TokenCounts:
    return TokenCounts(
        input_tokens=a.input_tokens + b.input_tokens,
        output_tokens=a.output_tokens + b.output_tokens,
        cache_read_tokens=a.cache_read_tokens + b.cache_read_tokens,
        cache_write_5m_tokens=a.cache_write_5m_tokens + b.cache_write_5m_tokens,
        cache_write_1h_tokens=a.cache_write_1h_tokens + b.cache_write_1h_tokens,
    )
