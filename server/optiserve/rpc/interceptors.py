"""Server interceptors: request ids, and the one error -> status mapping.

Both wrap the method handler's behaviour, so they see domain exceptions raised anywhere
below the servicer and turn them into a gRPC status with the domain message.
"""

from __future__ import annotations

import contextvars
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from optiserve.domain.errors import InvalidRequest, OptiserveError, status_code_name
from optiserve.rpc.handlers import Call, wrap_handler

log = logging.getLogger(__name__)

REQUEST_ID_KEY = "x-request-id"
RETRY_AFTER_KEY = "retry-after-s"
current_request_id: contextvars.ContextVar[str] = contextvars.ContextVar(
    "current_request_id", default=""
)


def _metadata(context: grpc.aio.ServicerContext, key: str) -> str:
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return str(v)
    return ""


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


class RequestIdInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Takes ``x-request-id`` from the call (or makes one) and echoes it in the headers."""

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: Any
    ) -> Any:
        """Wrap the handler so the request id is set for its whole execution."""

        async def begin(context: grpc.aio.ServicerContext) -> None:
            request_id = _metadata(context, REQUEST_ID_KEY) or uuid.uuid4().hex
            current_request_id.set(request_id)
            await context.send_initial_metadata(((REQUEST_ID_KEY, request_id),))

        def around(call: Call) -> Call:
            async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await begin(context)
                return await call(request, context)

            return run

        return wrap_handler(await continuation(details), around)


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException, method: str) -> None:
    code_name = status_code_name(exc)
    if isinstance(exc, OptiserveError):
        message = exc.message
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
