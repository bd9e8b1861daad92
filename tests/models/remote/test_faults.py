"""Provider faults through the real SDKs: each maps to its status, retries are bounded and
honour Retry-After, a failure after text is never retried, and the key never shows."""

from __future__ import annotations

import logging
import time

import pytest

from optiserve.domain.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidRequest,
    OptiserveError,
    RateLimited,
    Unauthenticated,
    Unavailable,
)
from optiserve.models.base import BackendEvent
from optiserve.models.remote.pools import ProviderPools
from providers.mock_provider import MockProvider, Reply, Usage

from .helpers import KEY_ENV, SECRET, Backends, collect, request, timed

KINDS = ["openai", "anthropic"]


@pytest.mark.parametrize("kind", KINDS)
async def test_retry_after_is_honoured(backends: Backends, mock: MockProvider, kind: str) -> None:
    mock.script(Reply.rate_limited(retry_after=0.3), Reply.ok("finally"))
    outcome, took = await timed(collect(backends(kind), request()))
    assert outcome.text == "finally"
    assert mock.calls == 2
    assert took >= 0.3  # no call went out before the provider said it may


async def test_retry_after_ms_is_honoured(backends: Backends, mock: MockProvider) -> None:
    mock.script(Reply.error(429, "slow down", retry_after_ms=250), Reply.ok("ok"))
    outcome, took = await timed(collect(backends("openai"), request()))
    assert outcome.text == "ok" and took >= 0.25


@pytest.mark.parametrize("kind", KINDS)
async def test_rate_limited_after_the_retries_are_spent(
    backends: Backends, mock: MockProvider, kind: str
) -> None:
    mock.default_reply = Reply.rate_limited(retry_after=0.05)
    with pytest.raises(RateLimited, match="rate-limiting") as caught:
        await collect(backends(kind, max_retries=2), request())
    assert mock.calls == 3  # 1 + max_retries, never more
    assert caught.value.retry_after_s == pytest.approx(0.05)


async def test_a_long_retry_after_fails_at_once(backends: Backends, mock: MockProvider) -> None:
    """A wait longer than backoff_max_s is not slept through: the route can fall back."""
    mock.script(Reply.rate_limited(retry_after=30))
    with pytest.raises(RateLimited) as caught:
        await collect(backends("openai", backoff_max_s=1.0), request())
    assert mock.calls == 1
    assert caught.value.retry_after_s == 30


async def test_a_retry_that_would_outlast_the_deadline_is_not_made(
    backends: Backends, mock: MockProvider
) -> None:
    mock.script(Reply.rate_limited(retry_after=0.5))
    req = request(deadline=time.monotonic() + 0.3)
    with pytest.raises(RateLimited):
        await collect(backends("openai"), req)
    assert mock.calls == 1


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "fault",
    [
        Reply.server_error(500),
        Reply.server_error(503),
        Reply.reset(),
        Reply.garbage(),
        Reply.garbage(in_stream=True),
        Reply.cut("", after_chunks=0),
    ],
    ids=["500", "503", "reset", "garbage", "garbage-in-stream", "cut-before-text"],
)
async def test_a_failure_before_text_is_retried(
    backends: Backends, mock: MockProvider, kind: str, fault: Reply
) -> None:
    mock.script(fault, Reply.ok("recovered", usage=Usage(10, 1)))
    outcome = await collect(backends(kind), request())
    assert outcome.text == "recovered"
    assert outcome.finish.prompt_tokens == 10
    assert mock.calls == 2


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (Reply.server_error(500), r"failed \(500"),
        (Reply.reset(), "cannot reach provider"),
        (Reply.garbage(), "cannot reach provider"),
        (Reply.garbage(in_stream=True), "cannot be parsed"),
    ],
    ids=["500", "reset", "garbage", "garbage-in-stream"],
)
async def test_persistent_faults_are_unavailable_after_bounded_calls(
    backends: Backends, mock: MockProvider, kind: str, fault: Reply, message: str
) -> None:
    mock.default_reply = fault
    with pytest.raises(Unavailable, match=message):
        await collect(backends(kind, max_retries=1), request())
    assert mock.calls == 2


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("clean_end", [False, True], ids=["dropped", "clean-http-end"])
async def test_a_cut_after_text_is_unavailable_and_not_retried(
    backends: Backends, mock: MockProvider, kind: str, clean_end: bool
) -> None:
    mock.script(Reply.cut("partial answer here", after_chunks=2, clean_end=clean_end))
    events: list[BackendEvent] = []
    with pytest.raises(Unavailable, match="ended before its final event"):
        await collect(backends(kind), request(), into=events)
    assert mock.calls == 1
    texts = [getattr(e, "text", None) for e in events[1:]]
    assert texts == ["partial ", "answer "]  # what the client saw before the error


@pytest.mark.parametrize("kind", KINDS)
async def test_a_hang_is_unavailable_quickly(
    backends: Backends, mock: MockProvider, kind: str
) -> None:
    mock.default_reply = Reply.hang()
    backend = backends(kind, timeout_s=0.3, max_retries=0)
    started = time.monotonic()
    with pytest.raises(Unavailable, match="did not answer in time"):
        await collect(backend, request())
    assert time.monotonic() - started < 1.0
    assert mock.calls == 1


async def test_a_hang_past_the_requests_deadline_is_deadline_exceeded(
    backends: Backends, mock: MockProvider
) -> None:
    mock.default_reply = Reply.hang()
    started = time.monotonic()
    req = request(deadline=started + 0.3)
    with pytest.raises(DeadlineExceeded, match="deadline passed"):
        await collect(backends("openai", timeout_s=10.0), req)
    assert time.monotonic() - started < 1.5
    assert mock.calls == 1


async def test_a_deadline_already_passed_calls_nothing(
    backends: Backends, mock: MockProvider
) -> None:
    with pytest.raises(DeadlineExceeded):
        await collect(backends("openai"), request(deadline=time.monotonic() - 1))
    assert mock.calls == 0


@pytest.mark.parametrize("kind", KINDS)
async def test_a_rejected_key_is_unauthenticated_without_the_key(
    backends: Backends, mock: MockProvider, kind: str
) -> None:
    mock.script(Reply.bad_key(echoed_key=SECRET))
    with pytest.raises(Unauthenticated) as caught:
        await collect(backends(kind), request())
    assert str(caught.value) == (
        f"provider 'mock-{kind}' rejected its API key (from env {KEY_ENV}); check the key"
    )
    assert caught.value.__cause__ is None and caught.value.__context__ is None
    assert mock.calls == 1  # not retried


@pytest.mark.parametrize("kind", KINDS)
async def test_a_bad_request_carries_the_providers_message(
    backends: Backends, mock: MockProvider, kind: str
) -> None:
    mock.script(Reply.bad_request("max_tokens: 999999 > 8192, the maximum for this model"))
    with pytest.raises(InvalidRequest, match=r"\(400\): max_tokens: 999999 > 8192, the max"):
        await collect(backends(kind), request())
    assert mock.calls == 1


@pytest.mark.parametrize("kind", KINDS)
async def test_a_missing_key_is_failed_precondition_naming_the_variable(
    backends: Backends, mock: MockProvider, kind: str
) -> None:
    backends.env = {}
    backend = backends(kind)  # loads: the server starts and lists the model
    assert backend.info.name == "m"
    with pytest.raises(FailedPrecondition, match=f"set the environment variable {KEY_ENV}"):
        await collect(backend, request())
    assert mock.calls == 0


async def test_a_keyless_openai_compatible_server_gets_no_authorization(
    backends: Backends, mock: MockProvider
) -> None:
    backends.env = {}
    await collect(backends("openai_compatible"), request())
    assert "authorization" not in mock.requests[0].headers
    await backends.pools.aclose()
    backends.pools, backends.env = ProviderPools(), {KEY_ENV: SECRET}
    await collect(backends("openai_compatible"), request())
    assert mock.requests[1].headers["authorization"] == f"Bearer {SECRET}"


async def test_the_key_never_appears_in_errors_or_logs(
    backends: Backends, mock: MockProvider, caplog: pytest.LogCaptureFixture
) -> None:
    """Every fault, with the provider echoing the key where it can: no message, log record
    (message, arguments or extra fields) or exception chain contains it."""
    caplog.set_level(logging.DEBUG)
    faults = [
        Reply.bad_key(echoed_key=SECRET),
        Reply.bad_request(f"unknown parameter; your key {SECRET} is fine"),
        Reply.error(500, f"internal error for key {SECRET}"),
        Reply.error(429, f"key {SECRET} is over its limit", retry_after=0.01),
        Reply.reset(),
        Reply.garbage(),
        Reply.cut("abc def", after_chunks=1),
        Reply.hang(),
    ]
    errors: list[OptiserveError] = []
    for kind in KINDS:
        backend = backends(kind, timeout_s=0.15, max_retries=1)
        for fault in faults:
            mock.default_reply = fault
            try:
                await collect(backend, request())
            except OptiserveError as exc:
                errors.append(exc)
    assert len(errors) == 2 * len(faults)
    for error in errors:
        assert error.__cause__ is None and error.__context__ is None
        assert SECRET not in str(error) and SECRET not in repr(error)
    assert any("retrying provider" in r.getMessage() for r in caplog.records)
    for record in caplog.records:
        assert SECRET not in record.getMessage()
        assert SECRET not in repr(record.__dict__)
