"""A mock LLM provider on 127.0.0.1 that the real ``openai`` and ``anthropic`` SDKs talk to.

It speaks the OpenAI chat completions API (``POST /v1/chat/completions``) and the Anthropic
messages API (``POST /v1/messages``), plain JSON and server-sent events, over HTTP/1.1 with
keep-alive, on asyncio streams in a background thread (64 concurrent connections are
nothing to it). Usage::

    from providers.mock_provider import MockProvider, Reply, Usage

    with MockProvider() as mock:
        client = openai.AsyncOpenAI(base_url=mock.openai_base_url, api_key="k")
        # anthropic.AsyncAnthropic(base_url=mock.anthropic_base_url, api_key="k")
        mock.script(Reply.rate_limited(retry_after=0.2), Reply.ok("hi", usage=Usage(10, 2)))
        ...                                   # the next two requests get these answers
        assert mock.calls == 2
        assert mock.requests[0].body["stream_options"] == {"include_usage": True}

Scripted replies are used one per request, in order, whatever the path; when none is left
the mock answers ``mock.default_reply`` (settable). Replies can also be meant for one model
(the request body's ``model``, i.e. a ModelConfig's ``source``): ``mock.script(...,
model="gpt-x")`` queues them for that model only, ``mock.model_defaults["gpt-x"] = reply``
sets its default, and ``mock.calls_for("gpt-x")`` counts its requests (a fallback chain's
models can share one mock). See :class:`~providers.replies.Reply`
for the behaviours (ok, HTTP errors with Retry-After, reset, hang, garbage, a stream cut
mid-way, usage omitted, delays). Every request is recorded (:class:`RecordedRequest`:
method, path, lower-cased headers, JSON body) unless ``record=False`` (benchmarks).

Run it alone (benchmarks in another process): ``python -m tests.providers.mock_provider
[--port N]`` from the repository root prints ``port N`` and serves the default reply until
killed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import socket
import struct
import threading
from dataclasses import dataclass
from http import HTTPStatus
from types import TracebackType
from typing import Any

from .replies import (
    Reply,
    Usage,
    anthropic_events,
    anthropic_json,
    error_body,
    openai_events,
    openai_json,
)

__all__ = ["MockProvider", "RecordedRequest", "Reply", "Usage"]

_PATHS = {"/v1/chat/completions": "openai", "/v1/messages": "anthropic"}


@dataclass(frozen=True)
class RecordedRequest:
    """One request the mock received."""

    method: str
    path: str
    #: Header names lower-cased.
    headers: dict[str, str]
    #: The JSON body (None when it was not JSON).
    body: Any

    @property
    def api(self) -> str:
        """ "openai", "anthropic" or "" (an unknown path)."""
        return _PATHS.get(self.path, "")


class _Drop(Exception):
    """The scripted behaviour ended the connection."""


class MockProvider:
    """The mock provider server (see the module docstring)."""

    def __init__(self, *, port: int = 0, record: bool = True) -> None:
        self.default_reply = Reply.ok()
        self._wanted_port = port
        self._record = record
        #: Per-model default replies (by the request body's "model").
        self.model_defaults: dict[str, Reply] = {}
        self._script: collections.deque[Reply] = collections.deque()
        self._model_scripts: dict[str, collections.deque[Reply]] = {}
        self._requests: list[RecordedRequest] = []
        self._calls = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> MockProvider:
        """Start serving on 127.0.0.1 (an ephemeral port unless one was given)."""
        self._thread = threading.Thread(target=self._run, name="mock-provider", daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or not self.port:
            raise RuntimeError("the mock provider did not start")
        return self

    def close(self) -> None:
        """Stop serving; hanging replies end, open connections close."""
        if self._loop is None or self._stop is None or self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._loop = None

    def __enter__(self) -> MockProvider:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- addresses ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """The OpenAI SDK's base_url (ends in /v1)."""
        return f"{self.base_url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        """The Anthropic SDK's base_url (no /v1: the SDK adds it)."""
        return self.base_url

    # -- scripting and records -----------------------------------------------------------

    def script(self, *replies: Reply, model: str | None = None) -> None:
        """Queue ``replies`` for the next requests (for ``model``'s only, when given), one
        each, in order."""
        if model is None:
            self._script.extend(replies)
        else:
            self._model_scripts.setdefault(model, collections.deque()).extend(replies)

    @property
    def pending(self) -> int:
        """Scripted replies not used yet (all models)."""
        return len(self._script) + sum(len(q) for q in self._model_scripts.values())

    def calls_for(self, model: str) -> int:
        """Recorded requests for ``model``."""
        return sum(
            1 for r in self.requests if isinstance(r.body, dict) and r.body.get("model") == model
        )

    @property
    def calls(self) -> int:
        """Requests received (recorded or not)."""
        return self._calls

    @property
    def requests(self) -> list[RecordedRequest]:
        """The requests received so far, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    def reset(self) -> None:
        """Forget the records, the call count and any unused scripted replies."""
        with self._lock:
            self._requests.clear()
            self._calls = 0
        self._script.clear()
        self._model_scripts.clear()

    # -- serving ---------------------------------------------------------------------------

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(
            self._connection, "127.0.0.1", self._wanted_port, backlog=1024, limit=1 << 20
        )
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop.wait()
        server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while await self._exchange(reader, writer):
                pass
            writer.close()
        except (_Drop, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.transport.abort()
        except asyncio.CancelledError:
            writer.transport.abort()
        finally:
            self._tasks.discard(task)

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Read one request and answer it; False when the connection should close."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        raw = await reader.readexactly(int(headers.get("content-length", "0")))
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        with self._lock:
            self._calls += 1
            if self._record:
                self._requests.append(RecordedRequest(method, path.split("?")[0], headers, body))
        reply = self._reply_for(body)
        api = _PATHS.get(path.split("?")[0], "")
        if not api or method != "POST" or not isinstance(body, dict):
            await _send_json(writer, 404, error_body("openai", 404, f"no route {method} {path}"))
            return True
        await self._answer(reply, api, body, writer)
        return headers.get("connection", "").lower() != "close"

    def _reply_for(self, body: Any) -> Reply:
        """The model's scripted reply, else the next scripted one, else a default."""
        model = body.get("model", "") if isinstance(body, dict) else ""
        queue = self._model_scripts.get(model)
        if queue:
            return queue.popleft()
        if self._script:
            return self._script.popleft()
        return self.model_defaults.get(model, self.default_reply)

    async def _answer(
        self, reply: Reply, api: str, body: dict[str, Any], writer: asyncio.StreamWriter
    ) -> None:
        if reply.delay_s and reply.kind != "hang":
            await asyncio.sleep(reply.delay_s)
        if reply.kind == "error":
            payload = error_body(api, reply.status, reply.message)
            await _send_json(writer, reply.status, payload, reply.headers)
        elif reply.kind == "reset":
            _reset(writer)
        elif reply.kind == "hang":
            await asyncio.sleep(reply.delay_s)
            raise _Drop
        elif reply.kind == "garbage" and not reply.garbage_in_stream:
            writer.write(b"\x00\xff\xfeNOT HTTP AT ALL\r\n\x13\x37garbage\r\n\r\n")
            await writer.drain()
            raise _Drop
        elif not body.get("stream"):
            answer = openai_json(reply, body) if api == "openai" else anthropic_json(reply, body)
            await _send_json(writer, 200, answer)
        else:
            await _stream(reply, api, body, writer)


async def _send_json(
    writer: asyncio.StreamWriter,
    status: int,
    payload: dict[str, Any],
    headers: tuple[tuple[str, str], ...] = (),
) -> None:
    data = json.dumps(payload).encode()
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers)
    writer.write(
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(data)}\r\n{extra}\r\n".encode()
        + data
    )
    await writer.drain()


async def _stream(
    reply: Reply, api: str, body: dict[str, Any], writer: asyncio.StreamWriter
) -> None:
    """Send ``reply`` as server-sent events in a chunked body."""
    head, tail = openai_events(reply, body) if api == "openai" else anthropic_events(reply, body)
    if reply.kind == "garbage":
        name = b"" if api == "openai" else b"event: content_block_delta\n"
        head, tail = [*head[:1], name + b"data: {this is not json\n\n"], []
    elif reply.kind == "cut":
        # The opening events (role chunk; message_start and content_block_start) plus
        # cut_after text events, and no final event.
        opening = 1 if api == "openai" else 2
        head, tail = head[: opening + reply.cut_after], []
    writer.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
        b"transfer-encoding: chunked\r\n\r\n"
    )
    events = head + tail
    if reply.chunk_delay_s:
        for event in events:
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
            await asyncio.sleep(reply.chunk_delay_s)
    else:
        data = b"".join(events)
        writer.write(b"%x\r\n%s\r\n" % (len(data), data))
    if reply.kind == "cut" and not reply.clean_end:
        await writer.drain()
        raise _Drop
    writer.write(b"0\r\n\r\n")
    await writer.drain()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0) instead of an orderly shutdown."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raise _Drop


def main(argv: list[str] | None = None) -> None:
    """Serve the default reply until killed (prints ``port N`` once listening)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    with MockProvider(port=args.port, record=False) as mock:
        print(f"port {mock.port}", flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
