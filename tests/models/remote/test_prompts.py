"""Prompts as each provider gets them, and Anthropic's cache_control placement, read from the
bodies the mock provider recorded."""

from __future__ import annotations

from typing import Any

import pytest

from optiserve.domain.errors import InvalidRequest
from optiserve.models.remote.prompts import MAX_CACHE_BREAKPOINTS
from providers.mock_provider import MockProvider

from .helpers import Backends, collect, request

LONG = "Here is the contract to review. " * 200  # ~1,600 estimated tokens
EPHEMERAL = {"type": "ephemeral"}


def breakpoints(body: dict[str, Any]) -> list[str]:
    """Where the cache_control markers are: "system[i]" or "messages[i]"."""
    found = [f"system[{i}]" for i, b in enumerate(body.get("system", [])) if "cache_control" in b]
    for i, message in enumerate(body["messages"]):
        content = message["content"]
        if isinstance(content, list) and any("cache_control" in b for b in content):
            found.append(f"messages[{i}]")
    return found


async def test_the_system_prompt_gets_cache_control(backends: Backends, mock: MockProvider) -> None:
    messages = (("system", "You are terse."), ("system", "Answer in French."), ("user", "Hi"))
    await collect(backends("anthropic"), request(messages=messages))
    body = mock.requests[0].body
    assert body["system"] == [
        {"type": "text", "text": "You are terse."},
        {"type": "text", "text": "Answer in French.", "cache_control": EPHEMERAL},
    ]
    assert body["messages"] == [{"role": "user", "content": "Hi"}]  # short: not marked


async def test_a_long_first_user_turn_gets_cache_control(
    backends: Backends, mock: MockProvider
) -> None:
    messages = (
        ("system", "You review contracts."),
        ("user", LONG),
        ("assistant", "Done. Questions?"),
        ("user", LONG + " And the annex."),
    )
    await collect(backends("anthropic", prompt_cache_min_tokens=1024), request(messages=messages))
    body = mock.requests[0].body
    assert breakpoints(body) == ["system[0]", "messages[0]"]
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": LONG, "cache_control": EPHEMERAL}
    ]
    assert len(breakpoints(body)) <= MAX_CACHE_BREAKPOINTS


@pytest.mark.parametrize(("min_tokens", "marked"), [(1024, []), (10, ["messages[0]"])])
async def test_the_first_turn_threshold_is_configurable(
    backends: Backends, mock: MockProvider, min_tokens: int, marked: list[str]
) -> None:
    prompt = "word " * 100  # ~125 estimated tokens
    await collect(backends("anthropic", prompt_cache_min_tokens=min_tokens), request(prompt))
    assert breakpoints(mock.requests[0].body) == marked


async def test_the_one_hour_ttl(backends: Backends, mock: MockProvider) -> None:
    messages = (("system", "Stable instructions."), ("user", LONG))
    await collect(backends("anthropic", prompt_cache_ttl="1h"), request(messages=messages))
    body = mock.requests[0].body
    marker = {"type": "ephemeral", "ttl": "1h"}
    assert body["system"][0]["cache_control"] == marker
    assert body["messages"][0]["content"][0]["cache_control"] == marker


async def test_openai_gets_the_conversation_as_is(backends: Backends, mock: MockProvider) -> None:
    messages = (("system", "Be brief."), ("user", LONG), ("assistant", "Ok."), ("user", "Go"))
    await collect(backends("openai"), request(messages=messages))
    assert mock.requests[0].body["messages"] == [{"role": r, "content": c} for r, c in messages]
    await collect(backends("openai"), request("Just a prompt"))
    assert mock.requests[1].body["messages"] == [{"role": "user", "content": "Just a prompt"}]


async def test_anthropic_needs_a_user_turn(backends: Backends, mock: MockProvider) -> None:
    with pytest.raises(InvalidRequest, match="at least one user message"):
        await collect(backends("anthropic"), request(messages=(("system", "Only this"),)))
    assert mock.calls == 0
