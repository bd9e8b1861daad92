"""What the mock provider answers: scripted :class:`Reply` values and their OpenAI and
Anthropic wire forms (JSON bodies and server-sent events).

Token figures are given provider-neutrally in :class:`Usage` (``prompt_tokens`` is the whole
prompt) and written the way each provider counts them: OpenAI's ``prompt_tokens`` includes
``prompt_tokens_details.cached_tokens``; Anthropic's ``input_tokens`` excludes the cache
reads and writes, which it reports apart (``cache_read_input_tokens``,
``cache_creation_input_tokens`` and ``cache_creation.ephemeral_{5m,1h}_input_tokens``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import Any, Literal

ReplyKind = Literal["ok", "error", "reset", "hang", "garbage", "cut"]
Finish = Literal["stop", "length", "stop_sequence"]

_WORDS = re.compile(r"\s*\S+\s*|\s+")


@dataclass(frozen=True)
class Usage:
    """Token counts of a reply; ``prompt_tokens`` is the whole prompt, cache reads and
    writes included (each provider's wire form is derived from it, see the module doc)."""

    prompt_tokens: int
    completion_tokens: int
    cache_read_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0

    @property
    def anthropic_input_tokens(self) -> int:
        """Anthropic's ``input_tokens``: the prompt tokens that touched no cache."""
        cached = self.cache_read_tokens + self.cache_write_5m_tokens + self.cache_write_1h_tokens
        return self.prompt_tokens - cached


@dataclass(frozen=True)
class Reply:
    """One scripted answer of the mock provider (build it with the class methods).

    ``ok``: ``text`` in ``chunks`` (default: one chunk per word) with ``usage`` (None =
    computed: a quarter of the request's message characters, one token per chunk), unless
    ``omit_usage``. ``error``: HTTP ``status`` with the provider's error body carrying
    ``message`` and extra ``headers`` (Retry-After). ``reset``: the connection is reset
    without an answer. ``hang``: nothing is sent for ``delay_s`` seconds, then the
    connection closes. ``garbage``: bytes that are not HTTP (or, with ``garbage_in_stream``,
    a 200 stream whose event is not JSON). ``cut``: the stream sends ``cut_after`` text
    chunks, then the connection drops (or, with ``clean_end``, the body ends properly) with
    no final event. ``delay_s`` waits before answering; ``chunk_delay_s`` between events.
    """

    kind: ReplyKind = "ok"
    text: str = "Hello from the mock provider."
    chunks: tuple[str, ...] = ()
    usage: Usage | None = None
    omit_usage: bool = False
    finish: Finish = "stop"
    status: int = 200
    message: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    delay_s: float = 0.0
    chunk_delay_s: float = 0.0
    cut_after: int = 0
    clean_end: bool = False
    garbage_in_stream: bool = False

    # -- constructors --------------------------------------------------------------------

    @classmethod
    def ok(cls, text: str = "Hello from the mock provider.", **fields: Any) -> Reply:
        """A complete answer (``usage=Usage(...)``, ``omit_usage``, ``finish``, ``chunks``,
        ``delay_s``, ``chunk_delay_s``)."""
        return cls(kind="ok", text=text, **fields)

    @classmethod
    def error(
        cls,
        status: int,
        message: str,
        *,
        retry_after: float | None = None,
        retry_after_ms: float | None = None,
    ) -> Reply:
        """An HTTP error with the provider's error body (and Retry-After headers)."""
        headers: list[tuple[str, str]] = []
        if retry_after is not None:
            headers.append(("retry-after", f"{retry_after:g}"))
        if retry_after_ms is not None:
            headers.append(("retry-after-ms", f"{retry_after_ms:g}"))
        return cls(kind="error", status=status, message=message, headers=tuple(headers))

    @classmethod
    def rate_limited(cls, retry_after: float | None = None) -> Reply:
        """429 with an optional Retry-After (seconds)."""
        return cls.error(429, "Rate limit reached; slow down.", retry_after=retry_after)

    @classmethod
    def server_error(cls, status: int = 500) -> Reply:
        """A 5xx answer."""
        return cls.error(status, "The server had an error while processing your request.")

    @classmethod
    def bad_key(cls, echoed_key: str = "") -> Reply:
        """401, echoing ``echoed_key`` in the message the way some providers do."""
        return cls.error(401, f"Incorrect API key provided: {echoed_key}.")

    @classmethod
    def bad_request(cls, message: str) -> Reply:
        """400 with the provider's ``message``."""
        return cls.error(400, message)

    @classmethod
    def reset(cls) -> Reply:
        """The connection is reset after the request is read."""
        return cls(kind="reset")

    @classmethod
    def hang(cls, seconds: float = 3600.0) -> Reply:
        """Nothing is sent for ``seconds`` (the mock's close ends it sooner)."""
        return cls(kind="hang", delay_s=seconds)

    @classmethod
    def garbage(cls, *, in_stream: bool = False) -> Reply:
        """Bytes that are not HTTP, or a 200 stream whose event is not JSON."""
        return cls(kind="garbage", garbage_in_stream=in_stream)

    @classmethod
    def cut(cls, text: str, *, after_chunks: int = 1, clean_end: bool = False) -> Reply:
        """A stream that ends after ``after_chunks`` text chunks without its final event."""
        return cls(kind="cut", text=text, cut_after=after_chunks, clean_end=clean_end)

    # -- derived -------------------------------------------------------------------------

    @property
    def pieces(self) -> tuple[str, ...]:
        """The text as streamed, chunk by chunk."""
        if self.chunks:
            return self.chunks
        return tuple(_WORDS.findall(self.text)) or ("",)

    def usage_for(self, body: dict[str, Any]) -> Usage:
        """The usage reported for ``body`` (the scripted one, or computed)."""
        if self.usage is not None:
            return self.usage
        chars = len(json.dumps(body.get("messages", ""))) + len(json.dumps(body.get("system", "")))
        return Usage(prompt_tokens=max(1, chars // 4), completion_tokens=len(self.pieces))

    def with_(self, **fields: Any) -> Reply:
        """A copy with ``fields`` changed."""
        return replace(self, **fields)


# -- OpenAI chat completions ---------------------------------------------------------------

_OPENAI_FINISH = {"stop": "stop", "length": "length", "stop_sequence": "stop"}


def openai_usage(usage: Usage) -> dict[str, Any]:
    """OpenAI's usage object (prompt_tokens includes the cached tokens)."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cache_read_tokens},
    }


def openai_json(reply: Reply, body: dict[str, Any]) -> dict[str, Any]:
    """A non-streamed chat completion."""
    answer: dict[str, Any] = {
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": 0,
        "model": body.get("model", ""),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.text},
                "finish_reason": _OPENAI_FINISH[reply.finish],
            }
        ],
    }
    if not reply.omit_usage:
        answer["usage"] = openai_usage(reply.usage_for(body))
    return answer


def openai_events(reply: Reply, body: dict[str, Any]) -> tuple[list[bytes], list[bytes]]:
    """A streamed chat completion: (the events up to the last text chunk, the final ones:
    the finish_reason chunk, the usage chunk when ``stream_options.include_usage``, and
    ``[DONE]``)."""

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        event = {
            "id": "chatcmpl-mock",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": body.get("model", ""),
            "choices": [choice] if delta or finish else [],
            **extra,
        }
        return b"data: " + json.dumps(event).encode() + b"\n\n"

    head = [chunk({"role": "assistant", "content": ""})]
    head += [chunk({"content": piece}) for piece in reply.pieces]
    tail = [chunk({}, _OPENAI_FINISH[reply.finish])]
    include = (body.get("stream_options") or {}).get("include_usage")
    if include and not reply.omit_usage:
        tail.append(chunk({}, usage=openai_usage(reply.usage_for(body))))
    tail.append(b"data: [DONE]\n\n")
    return head, tail


# -- Anthropic messages -------------------------------------------------------------------

_ANTHROPIC_FINISH = {"stop": "end_turn", "length": "max_tokens", "stop_sequence": "stop_sequence"}


def anthropic_usage(usage: Usage) -> dict[str, Any]:
    """Anthropic's usage object (input_tokens excludes the cache reads and writes)."""
    return {
        "input_tokens": usage.anthropic_input_tokens,
        "output_tokens": usage.completion_tokens,
        "cache_read_input_tokens": usage.cache_read_tokens,
        "cache_creation_input_tokens": usage.cache_write_5m_tokens + usage.cache_write_1h_tokens,
        "cache_creation": {
            "ephemeral_5m_input_tokens": usage.cache_write_5m_tokens,
            "ephemeral_1h_input_tokens": usage.cache_write_1h_tokens,
        },
    }


def _forced_tool(body: dict[str, Any]) -> str:
    """The tool a request forces (its answer is then that tool's input), or ""."""
    choice = body.get("tool_choice") or {}
    return str(choice.get("name", "")) if choice.get("type") == "tool" else ""


#: The stop sequence a "stop_sequence" finish reports.
MOCK_STOP_SEQUENCE = "STOP"


def _stop(reply: Reply, tool: str) -> tuple[str, str | None]:
    """Anthropic's (stop_reason, stop_sequence) for ``reply``."""
    if tool and reply.finish == "stop":
        return "tool_use", None
    sequence = MOCK_STOP_SEQUENCE if reply.finish == "stop_sequence" else None
    return _ANTHROPIC_FINISH[reply.finish], sequence


def anthropic_json(reply: Reply, body: dict[str, Any]) -> dict[str, Any]:
    """A non-streamed message (a tool_use block when the request forces a tool)."""
    tool = _forced_tool(body)
    if tool:
        block: dict[str, Any] = {
            "type": "tool_use",
            "id": "toolu_mock",
            "name": tool,
            "input": json.loads(reply.text),
        }
    else:
        block = {"type": "text", "text": reply.text}
    stop_reason, stop_sequence = _stop(reply, tool)
    answer: dict[str, Any] = {
        "id": "msg_mock",
        "type": "message",
        "role": "assistant",
        "model": body.get("model", ""),
        "content": [block],
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
    }
    if not reply.omit_usage:
        answer["usage"] = anthropic_usage(reply.usage_for(body))
    return answer


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps({'type': event, **data})}\n\n".encode()


def anthropic_events(reply: Reply, body: dict[str, Any]) -> tuple[list[bytes], list[bytes]]:
    """A streamed message: (message_start, content_block_start and the deltas; then
    content_block_stop, message_delta with output_tokens, message_stop)."""
    tool = _forced_tool(body)
    usage = None if reply.omit_usage else reply.usage_for(body)
    message: dict[str, Any] = {
        "id": "msg_mock",
        "type": "message",
        "role": "assistant",
        "model": body.get("model", ""),
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
    }
    if usage is not None:
        message["usage"] = {**anthropic_usage(usage), "output_tokens": 1}
    if tool:
        block: dict[str, Any] = {"type": "tool_use", "id": "toolu_mock", "name": tool, "input": {}}
        deltas = [{"type": "input_json_delta", "partial_json": p} for p in reply.pieces]
    else:
        block = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": p} for p in reply.pieces]
    head = [
        _sse("message_start", {"message": message}),
        _sse("content_block_start", {"index": 0, "content_block": block}),
    ]
    head += [_sse("content_block_delta", {"index": 0, "delta": d}) for d in deltas]
    stop_reason, stop_sequence = _stop(reply, tool)
    final: dict[str, Any] = {
        "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
    }
    if usage is not None:
        final["usage"] = {"output_tokens": usage.completion_tokens}
    tail = [
        _sse("content_block_stop", {"index": 0}),
        _sse("message_delta", final),
        _sse("message_stop", {}),
    ]
    return head, tail


def error_body(api: str, status: int, message: str) -> dict[str, Any]:
    """The provider's error body for ``status``."""
    if api == "anthropic":
        kinds = {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_error"}
        return {
            "type": "error",
            "error": {"type": kinds.get(status, "api_error"), "message": message},
        }
    kinds = {400: "invalid_request_error", 401: "invalid_api_key", 429: "rate_limit_exceeded"}
    return {
        "error": {
            "message": message,
            "type": kinds.get(status, "server_error"),
            "param": None,
            "code": kinds.get(status),
        }
    }
