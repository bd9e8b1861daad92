"""The decision trace as trailing metadata: ``x-optiserve-trace``, compact JSON.

For clients that read headers only (proxies, gateways, curl-like tools). It carries the
answer's model and provider, the cache lookups, the route and why it was chosen, the
fallbacks and what compression did; the full trace is in the response's summary.

gRPC metadata is small (8 KiB for all of a call's headers by default) and its values must
be printable ASCII: every string is cut to :data:`MAX_STRING` characters, at most
:data:`MAX_FALLBACKS` fallbacks are listed, the JSON escapes everything outside ASCII
(``ensure_ascii``), and a value still over :data:`MAX_CHARS` keeps only the model, the
provider and the cache outcomes (with ``"truncated": true``).

Keys (absent when empty): ``model``, ``provider``, ``finish``, ``cache`` (a list of
``{"layer", "outcome"}``, with ``"similarity"`` and ``"detail"`` when set), ``route``,
``rule``, ``tier``, ``reason``, ``fallbacks``, ``compression`` (``{"mode", "before",
"after"}`` when it ran).
"""

from __future__ import annotations

import json
from typing import Any

from optiserve.domain.types import ResponseSummary

TRACE_KEY = "x-optiserve-trace"
MAX_STRING = 160
MAX_FALLBACKS = 4
MAX_CHARS = 2048


def _cut(text: str) -> str:
    return text if len(text) <= MAX_STRING else text[: MAX_STRING - 3] + "..."


def _cache(summary: ResponseSummary, full: bool) -> list[dict[str, Any]]:
    lookups = []
    for c in summary.trace.cache:
        item: dict[str, Any] = {"layer": c.layer.value, "outcome": c.outcome.value}
        if full and c.similarity:
            item["similarity"] = round(c.similarity, 4)
        if full and c.detail:
            item["detail"] = _cut(c.detail)
        lookups.append(item)
    return lookups


def _dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=True, separators=(",", ":"))


def trace_header(summary: ResponseSummary) -> str:
    """The ``x-optiserve-trace`` value of ``summary`` (at most :data:`MAX_CHARS`)."""
    trace = summary.trace
    route = trace.route
    data: dict[str, Any] = {
        "model": _cut(summary.model),
        "provider": _cut(summary.provider),
        "finish": summary.finish_reason.value,
        "cache": _cache(summary, full=True),
        "route": _cut(route.route),
        "rule": _cut(route.rule),
        "tier": _cut(route.tier),
        "reason": _cut(trace.route_reason),
        "fallbacks": [_cut(f) for f in trace.fallbacks[:MAX_FALLBACKS]],
    }
    if len(trace.fallbacks) > MAX_FALLBACKS:
        data["fallbacks_more"] = len(trace.fallbacks) - MAX_FALLBACKS
    if trace.compression.mode != "off":
        data["compression"] = {
            "mode": _cut(trace.compression.mode),
            "before": trace.compression.tokens_before,
            "after": trace.compression.tokens_after,
        }
    text = _dumps({k: v for k, v in data.items() if v not in ("", [])})
    if len(text) <= MAX_CHARS:
        return text
    short = {
        "model": summary.model[:64],
        "provider": summary.provider[:64],
        "cache": _cache(summary, full=False),
        "truncated": True,
    }
    return _dumps(short)
