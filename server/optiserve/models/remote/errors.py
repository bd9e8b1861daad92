"""What a failed upstream call means: the OpenAI and Anthropic SDK exceptions (and the raw
``httpx2`` and JSON errors their streams let through) turned into optiserve's domain errors.

=============================================  ==================  =========  ===========
upstream failure                               domain error        retried    replica
                                                                              fault
=============================================  ==================  =========  ===========
429                                            RateLimited         yes        no
                                               (retry_after_s)
5xx, connection refused / reset, garbage,      Unavailable         yes        yes
a stream cut before its final event
timeout (connect or between events)            Unavailable, or     yes        yes
                                               DeadlineExceeded
                                               once the request's
                                               deadline passed
408, 409, an error event inside a stream       Unavailable         yes        no
401 / 403                                      Unauthenticated     no         no
400 / 404 / 413 / 422 and other 4xx            InvalidRequest      no         no
                                               (the provider's
                                               message)
anything else (a bug here or in the SDK)       Internal            no         no
=============================================  ==================  =========  ===========

Whether a failure is retried also depends on when it happened: once text reached the
client nothing is (see :mod:`~optiserve.models.remote.upstream`). The API key never appears
in a message: the provider's messages are redacted, a rejected key gets a fixed message
naming only where the key came from, and the caller raises the domain error outside the
``except`` block, so no SDK exception (whose request carries the key's header) rides along
as its cause or context.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx2
import openai

from optiserve.domain.errors import (
    DeadlineExceeded,
    Internal,
    InvalidRequest,
    OptiserveError,
    RateLimited,
    Unauthenticated,
    Unavailable,
)
from optiserve.models.remote.config import ProviderConfig
from optiserve.models.remote.retry import retry_after_s

log = logging.getLogger(__name__)

_STATUS_ERRORS = (openai.APIStatusError, anthropic.APIStatusError)
_TIMEOUTS = (openai.APITimeoutError, anthropic.APITimeoutError, httpx2.TimeoutException)
_CONNECTION_ERRORS = (
    openai.APIConnectionError,
    anthropic.APIConnectionError,
    httpx2.TransportError,
    ConnectionError,
)
_GARBAGE = (json.JSONDecodeError, UnicodeDecodeError, httpx2.DecodingError)


class StreamCut(Exception):
    """The upstream stream ended (cleanly or not) before its final event."""


class NonConformingAnswer(Exception):
    """The provider's structured answer does not match the request's json_schema."""


@dataclass(frozen=True)
class Failure:
    """An upstream failure, classified."""

    error: OptiserveError
    #: Worth another call (429, 5xx, connection trouble, timeouts, garbage, cuts).
    retryable: bool
    #: Counts against the replica's health (the server, not the request, is at fault).
    replica_fault: bool
    #: What the provider asked us to wait (Retry-After / retry-after-ms), if anything.
    retry_after_s: float | None = None


class ProviderErrors:
    """Classifies the failures of one provider's calls; knows the key only to redact it."""

    def __init__(self, provider: ProviderConfig, key: str) -> None:
        self._name = provider.name
        self._key_source = (
            f"from env {provider.key_env}" if not provider.api_key else "from the config file"
        )
        self._key = key

    def redact(self, text: str) -> str:
        """``text`` with the key (if it occurs) replaced."""
        return text.replace(self._key, "[redacted]") if self._key else text

    def missing_key(self) -> str:
        """Why a call cannot be made without a key (for FailedPrecondition)."""
        return self._key_source

    def classify(self, exc: BaseException, *, deadline_passed: bool, mid_stream: bool) -> Failure:
        """The domain meaning of ``exc`` (an exception from an SDK call, or from its stream
        once the provider accepted the call: ``mid_stream``)."""
        name = self._name
        if mid_stream and isinstance(exc, _CONNECTION_ERRORS) and not isinstance(exc, _TIMEOUTS):
            exc = StreamCut(_cause(exc))
        if isinstance(exc, _STATUS_ERRORS):
            return self._status(exc.status_code, exc.response.headers, exc)
        if isinstance(exc, _TIMEOUTS):
            if deadline_passed:
                error: OptiserveError = DeadlineExceeded(
                    f"the request's deadline passed while waiting for provider {name!r}"
                )
                return Failure(error, retryable=False, replica_fault=False)
            error = Unavailable(
                f"provider {name!r} did not answer in time (timeout); try again or another model"
            )
            return Failure(error, retryable=True, replica_fault=True)
        if isinstance(exc, StreamCut):
            error = Unavailable(
                f"the stream from provider {name!r} ended before its final event "
                f"({self.redact(str(exc))}); the answer is incomplete"
            )
            return Failure(error, retryable=True, replica_fault=True)
        if isinstance(exc, _CONNECTION_ERRORS):
            cause = self.redact(_cause(exc))
            error = Unavailable(f"cannot reach provider {name!r}: {cause}; try again later")
            return Failure(error, retryable=True, replica_fault=True)
        if isinstance(exc, _GARBAGE):
            error = Unavailable(
                f"provider {name!r} sent an answer that cannot be parsed "
                f"({type(exc).__name__}); try again later"
            )
            return Failure(error, retryable=True, replica_fault=True)
        if isinstance(exc, (openai.APIError, anthropic.APIError)):  # e.g. an error event
            error = Unavailable(f"provider {name!r} failed: {self.redact(_message(exc, exc.body))}")
            return Failure(error, retryable=True, replica_fault=True)
        # Not a provider fault: a bug here or in the SDK. Logged with its traceback (no SDK
        # API error gets this far, so no provider message, let alone the key, is in it).
        log.error("provider %r call failed unexpectedly", name, exc_info=exc)
        error = Internal(
            f"calling provider {name!r} failed inside the server: {type(exc).__name__}: "
            f"{self.redact(str(exc))}"
        )
        return Failure(error, retryable=False, replica_fault=False)

    def _status(
        self, status: int, headers: httpx2.Headers, exc: openai.APIError | anthropic.APIError
    ) -> Failure:
        name = self._name
        if status in (401, 403):
            error: OptiserveError = Unauthenticated(
                f"provider {name!r} rejected its API key ({self._key_source}); check the key"
            )
            return Failure(error, retryable=False, replica_fault=False)
        message = self.redact(_message(exc, exc.body))
        if status == 429:
            wait = retry_after_s(headers)
            error = RateLimited(
                f"provider {name!r} is rate-limiting requests (429: {message}); retry later",
                retry_after_s=wait,
            )
            return Failure(error, retryable=True, replica_fault=False, retry_after_s=wait)
        if status >= 500 or status < 400 or status in (408, 409):
            error = Unavailable(f"provider {name!r} failed ({status}: {message}); try again later")
            wait = retry_after_s(headers)
            return Failure(error, retryable=True, replica_fault=status >= 500, retry_after_s=wait)
        error = InvalidRequest(f"provider {name!r} refused the request ({status}): {message}")
        return Failure(error, retryable=False, replica_fault=False)


def _message(exc: BaseException, body: object) -> str:
    """The provider's own error message, from its error body when it has one."""
    if isinstance(body, dict):
        inner: Any = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])
        if isinstance(body.get("message"), str):
            return str(body["message"])
    return str(exc)


def _cause(exc: BaseException) -> str:
    """The most specific description of a connection failure (the SDKs wrap the httpx2
    error, whose text says what happened, in a generic "Connection error.")."""
    inner = exc.__cause__ or exc.__context__
    while inner is not None and not str(inner) and (inner.__cause__ or inner.__context__):
        inner = inner.__cause__ or inner.__context__
    detail = str(inner) if inner is not None and str(inner) else str(exc)
    return f"{type(inner or exc).__name__}: {detail}" if detail else type(inner or exc).__name__
