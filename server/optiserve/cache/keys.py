"""Cache keys: the partition a request belongs to and its exact-match hash.

A *partition* holds everything that must be equal for two requests to share an answer:
tenant, model, every sampling parameter, the response format (JSON schema), and the whole
conversation except the last user turn (so the system prompt and the history are in it).
The *exact key* is the partition plus the last user turn verbatim. The *semantic text* is
what the embedder sees: the last user turn (or every user turn, when configured).

Keys are SHA-256 digests of a canonical JSON document (sorted keys, no whitespace), so two
equal requests always hash alike and unequal ones practically never do.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from optiserve.domain.types import ChatMessage, GenerateRequest

#: Bump when the canonical form changes, so old persisted keys stop matching.
KEY_VERSION = 2


@dataclass(frozen=True)
class RequestKeys:
    """The keys of one request."""

    partition: str
    exact: str
    #: The text the semantic layer embeds and the guard compares.
    query: str


def _digest(document: Any) -> str:
    raw = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def _split(request: GenerateRequest) -> tuple[list[list[str]], str, list[str]]:
    """(conversation with the last user turn blanked, last user turn, all user turns)."""
    if not request.messages:
        return [], request.prompt, [request.prompt]
    messages: tuple[ChatMessage, ...] = request.messages
    last = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    context = [
        [m.role, "" if i == last else m.content] + (["<query>"] if i == last else [])
        for i, m in enumerate(messages)
    ]
    query = messages[last].content if last >= 0 else ""
    users = [m.content for m in messages if m.role == "user"]
    return context, query, users


def request_keys(
    request: GenerateRequest, model: str, *, embed_text: str = "last_user"
) -> RequestKeys:
    """The partition, exact key and semantic query text of ``request`` served by ``model``.

    ``model`` is the resolved model or route that serves the request (not the possibly
    empty name in the request).
    """
    context, query, users = _split(request)
    partition = _digest(
        {
            "v": KEY_VERSION,
            "tenant": request.tenant,
            "model": model,
            "kind": "chat" if request.messages else "prompt",
            # Every sampling field, so a new one is part of the key without a change here.
            "sampling": asdict(request.sampling),
            "json_schema": request.json_schema,
            "context": context,
        }
    )
    exact = _digest({"partition": partition, "query": query})
    text = "\n".join(users) if embed_text == "all_user" else query
    return RequestKeys(partition=partition, exact=exact, query=text)
