"""A request's prompt or messages as each provider takes them, and where Anthropic's prompt
cache breakpoints go.

Anthropic caches a prompt prefix up to a block marked ``cache_control`` (at most four such
breakpoints a request). optiserve marks the stable prefixes automatically: the system
prompt (its last block: one breakpoint covers every system block), and the first user turn
when it is long (at least ``prompt_cache_min_tokens``, estimated), since a long first turn
is usually a document or a few-shot block that later turns repeat. Shorter turns are not
marked: a cache write costs more than plain input (1.25x for 5 minutes, 2x for an hour),
and the provider ignores breakpoints below its own minimum length anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from optiserve.domain.errors import InvalidRequest
from optiserve.domain.pricing import prompt_token_estimate
from optiserve.domain.types import GenerateRequest
from optiserve.models.remote.config import PromptCacheTtl

#: Anthropic accepts at most this many cache_control breakpoints per request.
MAX_CACHE_BREAKPOINTS = 4


def openai_messages(request: GenerateRequest) -> list[dict[str, str]]:
    """Chat completions ``messages``: the conversation as is, or the prompt as one user
    turn."""
    if request.messages:
        return [{"role": m.role, "content": m.content} for m in request.messages]
    return [{"role": "user", "content": request.prompt}]


@dataclass(frozen=True)
class AnthropicPrompt:
    """The ``system`` blocks and ``messages`` of an Anthropic messages request."""

    system: list[dict[str, Any]]
    messages: list[dict[str, Any]]

    @property
    def breakpoints(self) -> int:
        """cache_control markers placed."""
        blocks = self.system + [b for m in self.messages for b in _blocks(m)]
        return sum(1 for b in blocks if "cache_control" in b)


def anthropic_prompt(
    request: GenerateRequest, *, cache_min_tokens: int, cache_ttl: PromptCacheTtl
) -> AnthropicPrompt:
    """System messages become ``system`` blocks (in order, wherever they were in the
    conversation: Anthropic has no system turn), the rest stay turns; cache breakpoints
    as the module docstring says."""
    marker: dict[str, str] = {"type": "ephemeral"}
    if cache_ttl == "1h":
        marker["ttl"] = "1h"
    turns = request.messages or ()
    system: list[dict[str, Any]] = [
        {"type": "text", "text": m.content} for m in turns if m.role == "system" and m.content
    ]
    messages: list[dict[str, Any]] = [
        {"role": m.role, "content": m.content} for m in turns if m.role != "system"
    ]
    if not turns:
        messages = [{"role": "user", "content": request.prompt}]
    if not messages:
        raise InvalidRequest(
            "an Anthropic model needs at least one user message besides the system prompt; "
            "add a user message"
        )
    if system:
        system[-1]["cache_control"] = dict(marker)
    first_user = next((m for m in messages if m["role"] == "user"), None)
    if first_user is not None and _long(first_user["content"], cache_min_tokens):
        first_user["content"] = [
            {"type": "text", "text": first_user["content"], "cache_control": dict(marker)}
        ]
    prompt = AnthropicPrompt(system, messages)
    assert prompt.breakpoints <= MAX_CACHE_BREAKPOINTS
    return prompt


def _long(text: str, min_tokens: int) -> bool:
    """True when ``text`` is worth a cache breakpoint (empty text cannot carry one)."""
    return bool(text) and prompt_token_estimate(text) >= min_tokens


def _blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message["content"]
    return content if isinstance(content, list) else []
