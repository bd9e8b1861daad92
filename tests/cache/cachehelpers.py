"""Request builders shared by the cache tests."""

from __future__ import annotations

import socket

from optiserve.domain.types import (
    CacheMode,
    CachePolicy,
    ChatMessage,
    GenerateRequest,
    SamplingParams,
)


def chat(
    question: str,
    *,
    tenant: str = "t1",
    system: str = "You are helpful.",
    history: tuple[ChatMessage, ...] = (),
    mode: CacheMode = CacheMode.DEFAULT,
    threshold: float | None = None,
    ttl_s: float | None = None,
    temperature: float = 0.0,
    max_new_tokens: int | None = 32,
    json_schema: str = "",
) -> GenerateRequest:
    """A chat request with a system prompt, optional history and a last user turn."""
    messages = (ChatMessage("system", system), *history, ChatMessage("user", question))
    return GenerateRequest(
        request_id="r",
        messages=messages,
        tenant=tenant,
        sampling=SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens),
        cache=CachePolicy(mode=mode, semantic_threshold=threshold, ttl_s=ttl_s),
        json_schema=json_schema,
    )


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
