"""Server interceptors: the one error -> status mapping, and the chain the server runs.

:func:`server_interceptors` gives them in order, outermost first: errors (so it sees
every domain exception raised below it, the others' included, and turns it into a gRPC
status with the domain message), request ids, authentication (so admission counts the
key's tenant), admission, bounded stream writes. When given, the observer (metrics and
access log, rpc/observe.py) goes outside them all, so it sees the status every call ends
with.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from optiserve.domain.errors import InvalidRequest, OptiserveError, status_code_name
from optiserve.rpc.auth import AuthInterceptor
from optiserve.rpc.handlers import Call, StreamWriteInterceptor, wrap_handler
from optiserve.rpc.limits import AdmissionInterceptor
from optiserve.rpc.observe import ObserveInterceptor
from optiserve.rpc.request_ids import RequestIdInterceptor, current_request_id

log = logging.getLogger(__name__)

RETRY_AFTER_KEY = "retry-after-s"
#: Longest status message sent (it travels in a header; clients refuse large ones).
MAX_MESSAGE_CHARS = 2000


def server_interceptors(
    auth: AuthInterceptor,
    admission: AdmissionInterceptor,
    stream_write_timeout_s: float,
    observe: ObserveInterceptor | None = None,
) -> list[grpc.aio.ServerInterceptor]:
    """The interceptors of the server, outermost first (the order matters)."""
    return [
        *([observe] if observe is not None else []),
        ErrorInterceptor(),
        RequestIdInterceptor(),
        auth,
        admission,
        StreamWriteInterceptor(stream_write_timeout_s),
    ]


class _Malformed:
    """Stands in for a request whose bytes did not parse, so the error can be reported."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _tolerant(decode: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def run(data: bytes) -> Any:
        try:
            return decode(data)
        except Exception as exc:
            return _Malformed(exc)

    return run


def _check_parsed(request: Any) -> None:
    if isinstance(request, _Malformed):
        raise InvalidRequest(
            f"the request bytes are not a valid protobuf message for this method "
            f"({request.error}); send a message built from proto/optiserve/v1"
        )


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException, method: str) -> None:
    code_name = status_code_name(exc)
    if isinstance(exc, OptiserveError):
        message = exc.message
        if code_name == "INTERNAL":
            message = f"{message} (request id {current_request_id.get()})"
        if exc.retry_after_s is not None:
            context.set_trailing_metadata(((RETRY_AFTER_KEY, f"{exc.retry_after_s:g}"),))
        log.info(
            "request failed",
            extra={
                "method": method,
                "code": code_name,
                "error": message,
                "request_id": current_request_id.get(),
            },
        )
    else:
        message = f"internal error (request id {current_request_id.get()}); see the server log"
        log.exception(
            "unhandled error", extra={"method": method, "request_id": current_request_id.get()}
        )
    if len(message) > MAX_MESSAGE_CHARS:
        message = f"{message[:MAX_MESSAGE_CHARS]}... (cut from {len(message)} characters)"
    await context.abort(getattr(grpc.StatusCode, code_name), message)


class ErrorInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Maps domain errors to status codes through :data:`optiserve.domain.errors.STATUS_CODES`."""

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: Any
    ) -> Any:
        """Wrap the handler so every exception becomes a clean gRPC status."""
        method = details.method

        def around(call: Call) -> Call:
            async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    _check_parsed(request)
                    return await call(request, context)
                except Exception as exc:
                    if _is_abort(exc):
                        raise
                    await _abort(context, exc, method)

            return run

        return wrap_handler(await continuation(details), around, deserializer=_tolerant)


def _is_abort(exc: BaseException) -> bool:
    # grpc.aio raises AbortError out of context.abort(); it must pass through untouched.
    return type(exc).__name__ == "AbortError"
