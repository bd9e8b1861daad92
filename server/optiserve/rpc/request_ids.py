"""Request ids: checked, chosen once per call, and used everywhere.

A call may carry an id in two places: the ``x-request-id`` header and the ``request_id``
field of its message. Both are checked (at most :data:`MAX_CHARS` printable ASCII
characters, 0x21-0x7e); then one id is chosen, by this precedence:

1. the message's ``request_id`` when it is set,
2. else the ``x-request-id`` header,
3. else a new random id.

The chosen id is the one in the response's ``x-request-id`` header, in the response body
(unary response; the first and last chunk of a stream), and in the server's logs.
"""

from __future__ import annotations

import contextvars
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import Message

from optiserve.domain.errors import InvalidRequest
from optiserve.rpc.handlers import Call, wrap_handler

REQUEST_ID_KEY = "x-request-id"
REQUEST_ID_FIELD = "request_id"
MAX_CHARS = 128
ALLOWED = f"at most {MAX_CHARS} printable ASCII characters (0x21-0x7e: no spaces or controls)"

current_request_id: contextvars.ContextVar[str] = contextvars.ContextVar(
    "current_request_id", default=""
)


def check_request_id(value: str, where: str) -> str:
    """``value`` when it is a valid id; InvalidRequest naming ``where`` otherwise."""
    if len(value) > MAX_CHARS:
        raise InvalidRequest(f"{where} is {len(value)} characters long; {ALLOWED} are allowed")
    for position, char in enumerate(value):
        if not "\x21" <= char <= "\x7e":
            raise InvalidRequest(
                f"{where} has {char!r} at position {position}; {ALLOWED} are allowed"
            )
    return value


def choose_request_id(body: str, header: str) -> str:
    """The call's id, by the precedence in the module docstring (both already checked)."""
    return body or header or uuid.uuid4().hex


def _header(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY:
            return str(value)
    return ""


def _body(request: Any) -> str:
    if isinstance(request, Message) and REQUEST_ID_FIELD in request.DESCRIPTOR.fields_by_name:
        return str(getattr(request, REQUEST_ID_FIELD))
    return ""


class RequestIdInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Checks both ids, chooses one, sets :data:`current_request_id` for the call and
    sends the id in the response headers."""

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: Any
    ) -> Any:
        """Wrap the handler so the request id is set for its whole execution."""

        def around(call: Call) -> Call:
            async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
                header = check_request_id(_header(context), f"the {REQUEST_ID_KEY} header")
                body = check_request_id(_body(request), f"the message's {REQUEST_ID_FIELD}")
                request_id = choose_request_id(body, header)
                current_request_id.set(request_id)
                await context.send_initial_metadata(((REQUEST_ID_KEY, request_id),))
                return await call(request, context)

            return run

        return wrap_handler(await continuation(details), around)
