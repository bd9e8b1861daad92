"""Typed client exceptions, one per gRPC status the server uses.

OptiserveClientError
├── InvalidArgument      INVALID_ARGUMENT
├── NotFound             NOT_FOUND
├── FailedPrecondition   FAILED_PRECONDITION
├── ResourceExhausted    RESOURCE_EXHAUSTED (``retry_after_s`` when the server hints)
├── DeadlineExceeded     DEADLINE_EXCEEDED
├── Unavailable          UNAVAILABLE
├── Unauthenticated      UNAUTHENTICATED
├── PermissionDenied     PERMISSION_DENIED
├── Unimplemented        UNIMPLEMENTED
└── InternalError        INTERNAL and anything else
"""

from __future__ import annotations

import grpc


class OptiserveClientError(Exception):
    """A call failed; ``code`` is the gRPC status name, ``message`` the server's words."""

    def __init__(self, code: str, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s


class InvalidArgument(OptiserveClientError):
    """The request was invalid; the message names the field and the allowed range."""


class NotFound(OptiserveClientError):
    """Unknown model, or an only-if-cached miss."""


class FailedPrecondition(OptiserveClientError):
    """The request is valid but this model or server cannot do what it asks (e.g. a
    json_schema for a model without structured output); retrying will not help."""


class ResourceExhausted(OptiserveClientError):
    """A limit was hit (queue, budget, rate, message size); retry after ``retry_after_s``."""


class DeadlineExceeded(OptiserveClientError):
    """The deadline passed."""


class Unavailable(OptiserveClientError):
    """The server or provider cannot serve now (shutting down, down)."""


class Unauthenticated(OptiserveClientError):
    """Missing or wrong credentials."""


class PermissionDenied(OptiserveClientError):
    """The key is valid but may not do this (it lacks a scope, e.g. quantize)."""


class Unimplemented(OptiserveClientError):
    """The server does not implement this verb yet."""


class InternalError(OptiserveClientError):
    """A server bug or an unexpected status."""


_BY_CODE: dict[grpc.StatusCode, type[OptiserveClientError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
}


def from_rpc_error(error: grpc.RpcError) -> OptiserveClientError:
    """The typed exception for a failed call."""
    code = error.code()
    retry: float | None = None
    for key, value in error.trailing_metadata() or ():
        if key == "retry-after-s":
            retry = float(value)
    cls = _BY_CODE.get(code, InternalError)
    return cls(code.name, error.details() or "", retry)
