"""The trace header stays small and printable ASCII, whatever the trace holds."""

from __future__ import annotations

import json

from optiserve.domain.types import (
    CacheLayer,
    CacheLookup,
    CacheOutcome,
    CompressionTrace,
    DecisionTrace,
    FinishReason,
    ResponseSummary,
    RouteTrace,
    Usage,
)
from optiserve.rpc.trace_header import MAX_CHARS, MAX_FALLBACKS, MAX_STRING, trace_header


def _summary(trace: DecisionTrace, model: str = "m") -> ResponseSummary:
    return ResponseSummary(
        finish_reason=FinishReason.EOS, usage=Usage(), model=model, provider="p", trace=trace
    )


def _printable(value: str) -> bool:
    return all(" " <= c <= "~" for c in value)


def test_a_full_trace_is_compact_json() -> None:
    trace = DecisionTrace(
        cache=(CacheLookup(CacheLayer.EXACT, CacheOutcome.MISS),),
        route_reason="cheapest that fits",
        fallbacks=("a: UNAVAILABLE: down",),
        route=RouteTrace(route="auto", rule="tier >= fast", tier="fast"),
        compression=CompressionTrace(mode="auto", tokens_before=100, tokens_after=60),
    )
    value = trace_header(_summary(trace))
    assert value == json.dumps(json.loads(value), separators=(",", ":"))  # no padding
    assert json.loads(value) == {
        "model": "m",
        "provider": "p",
        "finish": "eos",
        "cache": [{"layer": "exact", "outcome": "miss"}],
        "route": "auto",
        "rule": "tier >= fast",
        "tier": "fast",
        "reason": "cheapest that fits",
        "fallbacks": ["a: UNAVAILABLE: down"],
        "compression": {"mode": "auto", "before": 100, "after": 60},
    }


def test_long_and_unicode_strings_are_cut_and_escaped() -> None:
    trace = DecisionTrace(
        route_reason="é\u2028\x7f\n" * 500,
        fallbacks=tuple(f"model-{i}: UNAVAILABLE: " + "x" * 1000 for i in range(10)),
    )
    value = trace_header(_summary(trace, model="модель"))
    assert _printable(value) and len(value) <= MAX_CHARS
    data = json.loads(value)
    assert data["model"] == "модель"
    assert len(data["reason"]) == MAX_STRING
    assert len(data["fallbacks"]) == MAX_FALLBACKS and data["fallbacks_more"] == 10 - MAX_FALLBACKS


def test_a_trace_over_the_limit_keeps_model_and_cache() -> None:
    lookups = tuple(
        CacheLookup(CacheLayer.SEMANTIC, CacheOutcome.REJECTED, 0.9, detail="\u00e9" * 500)
        for _ in range(20)
    )
    value = trace_header(_summary(DecisionTrace(cache=lookups)))
    assert _printable(value) and len(value) <= MAX_CHARS
    data = json.loads(value)
    assert data["truncated"] is True and data["model"] == "m"
    assert data["cache"][0] == {"layer": "semantic", "outcome": "rejected"}
