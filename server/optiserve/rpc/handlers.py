"""Every kind of gRPC method handler in one shape, so an interceptor wraps them all alike.

grpc.aio serves a method in several forms: unary-unary and stream-unary behaviours return
the response; unary-stream and stream-stream behaviours are either async generators (grpc
writes what they yield) or coroutines that write through ``context.write()`` and return
None (grpc's own health ``Watch`` is one). :func:`as_call` turns any of them into a
:data:`Call`, a coroutine function that returns the response, or for streamed responses
writes every message itself and returns None. grpc runs a coroutine function with streamed
responses in its reader/writer mode, so a wrapped handler works whatever the inner one was.

Messages yielded by an async generator are written here, each write bounded by
``write_timeout_s``: when a client stops reading (its HTTP/2 flow-control window stays
shut), the generator is closed (which stops the model behind it) and the call ends with
DEADLINE_EXCEEDED instead of holding its slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from optiserve.domain.errors import DeadlineExceeded

Call = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]

#: (request_streaming, response_streaming) -> the factory of that kind of handler.
_FACTORIES: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


async def _write(context: grpc.aio.ServicerContext, message: Any, timeout_s: float | None) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            await context.write(message)
    except TimeoutError:
        raise DeadlineExceeded(
            f"the client did not read the stream for {timeout_s:g} s; the server stopped "
            "generating and ended the call. Read responses as they arrive (the server's "
            "server.stream_write_timeout_s sets how long it waits)"
        ) from None


async def write_all(
    messages: AsyncIterator[Any], context: grpc.aio.ServicerContext, timeout_s: float | None
) -> None:
    """Write every message of ``messages``; close it however the writing ends.

    A write that times out is thrown into ``messages`` (so what produces them, down to
    the usage account, learns why it was cut), then raised.
    """
    try:
        async for message in messages:
            try:
                await _write(context, message, timeout_s)
            except DeadlineExceeded as exc:
                throw = getattr(messages, "athrow", None)
                if throw is not None:
                    with contextlib.suppress(Exception):
                        await throw(exc)
                raise
    finally:
        close = getattr(messages, "aclose", None)
        if close is not None:
            await close()


def as_call(
    behaviour: Callable[..., Any], streams_responses: bool, write_timeout_s: float | None = None
) -> Call:
    """``behaviour`` (any handler form, see the module docstring) as a :data:`Call`."""

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        result = behaviour(request, context)
        if hasattr(result, "__aiter__"):
            await write_all(result, context, write_timeout_s)
            return None
        if inspect.isawaitable(result):
            result = await result
        if streams_responses and result is not None:  # a plain generator (a sync servicer)
            for message in result:
                await _write(context, message, write_timeout_s)
            return None
        return result

    return call


def wrap_handler(
    handler: grpc.RpcMethodHandler | None,
    around: Callable[[Call], Call],
    *,
    deserializer: Callable[[Callable[[bytes], Any]], Callable[[bytes], Any]] | None = None,
    write_timeout_s: float | None = None,
) -> grpc.RpcMethodHandler | None:
    """``handler`` (of any kind) with its behaviour wrapped by ``around``, and its request
    deserializer by ``deserializer`` (unary requests only). None stays None (no such
    method)."""
    if handler is None:
        return None
    decode = handler.request_deserializer
    if deserializer is not None and decode is not None and not handler.request_streaming:
        decode = deserializer(decode)
    behaviour = (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )
    kind = (bool(handler.request_streaming), bool(handler.response_streaming))
    call = around(as_call(behaviour, kind[1], write_timeout_s))
    return _FACTORIES[kind](
        call, request_deserializer=decode, response_serializer=handler.response_serializer
    )


class StreamWriteInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Writes what streaming handlers yield, each write bounded by ``write_timeout_s``.

    It must be the innermost interceptor: it is the one that sees the servicer's own
    generators (the outer ones see coroutines that write for themselves).
    """

    def __init__(self, write_timeout_s: float) -> None:
        self.write_timeout_s = write_timeout_s

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: Any
    ) -> Any:
        """The handler as a coroutine whose writes are bounded."""
        return wrap_handler(
            await continuation(details), lambda call: call, write_timeout_s=self.write_timeout_s
        )
