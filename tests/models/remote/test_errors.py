"""The error table of errors.py, for the cases the mock provider does not reach."""

from __future__ import annotations

import anthropic
import httpx2
import openai
import pytest

from optiserve.domain.errors import (
    Internal,
    InvalidRequest,
    RateLimited,
    Unauthenticated,
    Unavailable,
)
from optiserve.models.remote.config import ProviderConfig
from optiserve.models.remote.errors import Failure, ProviderErrors

KEY = "sk-live-abcdef"
PROVIDER = ProviderConfig(name="acme", kind="openai", api_key=KEY)


def response(status: int, **headers: str) -> httpx2.Response:
    return httpx2.Response(status, headers=headers, request=httpx2.Request("POST", "http://x"))


def classify(exc: BaseException, *, mid_stream: bool = False) -> Failure:
    return ProviderErrors(PROVIDER, KEY).classify(exc, deadline_passed=False, mid_stream=mid_stream)


@pytest.mark.parametrize("status", [408, 409])
def test_conflict_and_request_timeout_are_retried(status: int) -> None:
    exc = openai.APIStatusError("busy", response=response(status), body=None)
    failure = classify(exc)
    assert isinstance(failure.error, Unavailable) and failure.retryable
    assert not failure.replica_fault


def test_an_error_event_inside_a_stream_is_unavailable() -> None:
    """Anthropic sends overloaded_error as an event of a 200 stream."""
    body = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    exc = anthropic.APIStatusError(str(body), response=response(200), body=body)
    failure = classify(exc, mid_stream=True)
    assert isinstance(failure.error, Unavailable) and failure.retryable
    assert "Overloaded" in failure.error.message


def test_a_config_file_key_is_named_as_such_and_redacted() -> None:
    exc = openai.AuthenticationError(f"bad {KEY}", response=response(403), body=None)
    failure = classify(exc)
    assert isinstance(failure.error, Unauthenticated)
    assert "(from the config file)" in failure.error.message
    bad = openai.BadRequestError(
        "x", response=response(422), body={"message": f"{KEY} is not a model"}
    )
    error = classify(bad).error
    assert isinstance(error, InvalidRequest)
    assert error.message == "provider 'acme' refused the request (422): [redacted] is not a model"


def test_429_carries_retry_after() -> None:
    exc = openai.RateLimitError("slow", response=response(429, **{"retry-after": "7"}), body=None)
    failure = classify(exc)
    assert isinstance(failure.error, RateLimited) and failure.error.retry_after_s == 7.0


def test_anything_else_is_internal_and_no_fault_of_the_replica(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failure = classify(TypeError(f"create() got an unexpected keyword argument {KEY!r}"))
    assert isinstance(failure.error, Internal)
    assert not failure.retryable and not failure.replica_fault
    assert KEY not in failure.error.message
    assert "failed unexpectedly" in caplog.text
