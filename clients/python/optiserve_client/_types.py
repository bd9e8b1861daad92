"""Result objects the client returns (plain dataclasses, no protobuf)."""

from __future__ import annotations

from dataclasses import dataclass, field

from optiserve_client.v1 import optiserve_pb2 as pb


@dataclass(frozen=True)
class Usage:
    """Token counts."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


@dataclass(frozen=True)
class Timings:
    """Server-measured durations in milliseconds."""

    queued_ms: float
    time_to_first_token_ms: float
    total_ms: float
    decode_tokens_per_s: float


@dataclass(frozen=True)
class Completion:
    """A complete answer (or the summary of a stream, with the streamed text)."""

    request_id: str
    text: str
    finish_reason: str
    model: str
    provider: str
    usage: Usage
    timings: Timings
    cost_usd: float
    cost_saved_usd: float
    route_reason: str
    cache: list[dict[str, object]] = field(default_factory=list)

    @classmethod
    def from_proto(cls, request_id: str, text: str, s: pb.ResponseSummary) -> Completion:
        """Build from a wire summary."""
        return cls(
            request_id=request_id,
            text=text,
            finish_reason=pb.FinishReason.Name(s.finish_reason)
            .removeprefix("FINISH_REASON_")
            .lower(),
            model=s.model,
            provider=s.provider,
            usage=Usage(s.usage.prompt_tokens, s.usage.completion_tokens, s.usage.cached_tokens),
            timings=Timings(
                s.timings.queued_ms,
                s.timings.time_to_first_token_ms,
                s.timings.total_ms,
                s.timings.decode_tokens_per_s,
            ),
            cost_usd=s.cost_usd,
            cost_saved_usd=s.cost_saved_usd,
            route_reason=s.trace.route_reason,
            cache=[
                {
                    "layer": pb.CacheLayer.Name(c.layer).removeprefix("CACHE_LAYER_").lower(),
                    "outcome": pb.CacheOutcome.Name(c.outcome)
                    .removeprefix("CACHE_OUTCOME_")
                    .lower(),
                    "similarity": c.similarity,
                    "entry_id": c.entry_id,
                    "guard_verdict": c.guard_verdict,
                }
                for c in s.trace.cache
            ],
        )


@dataclass(frozen=True)
class Chunk:
    """One streamed piece: ``text`` and, on the last one, ``completion`` (full text)."""

    text: str
    completion: Completion | None = None


@dataclass(frozen=True)
class Model:
    """A servable model."""

    name: str
    kind: str
    provider: str
    source: str
    demo: bool
    default: bool
    context_length: int
    description: str
    #: The largest max_new_tokens the model accepts, and what an unset one means.
    max_new_tokens_cap: int = 0
    default_max_new_tokens: int = 0
    #: True when the model honours a json_schema.
    structured_output: bool = False
    #: "none", a dtype, or a Quantize variant's method; its bits and weight bytes.
    quantization: str = "none"
    quant_bits: int = 0
    size_bytes: int = 0

    @classmethod
    def from_proto(cls, m: pb.ModelInfo) -> Model:
        """Build from a wire ModelInfo."""
        return cls(
            name=m.name,
            kind=pb.ModelKind.Name(m.kind).removeprefix("MODEL_KIND_").lower(),
            provider=m.provider,
            source=m.source,
            demo=m.demo,
            default=m.default,
            context_length=m.context_length,
            description=m.description,
            max_new_tokens_cap=m.max_new_tokens_cap,
            default_max_new_tokens=m.default_max_new_tokens,
            structured_output=m.structured_output,
            quantization=m.quantization,
            quant_bits=m.quant_bits,
            size_bytes=m.size_bytes,
        )
