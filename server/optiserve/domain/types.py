"""Domain types of a generation request and its answer.

These dataclasses are what the rpc layer converts protobuf messages to and from; nothing
below rpc/ sees a protobuf message.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ChatMessage:
    """One turn of a conversation."""

    role: str
    content: str


@dataclass(frozen=True)
class SamplingParams:
    """How to sample; ``max_new_tokens=None`` and ``min_new_tokens=None`` take the model's
    defaults.

    Before ``min_new_tokens`` tokens are generated, end-of-sequence tokens (and single-token
    stops such as an end-of-turn token) cannot be chosen: their logits are masked, so the
    model picks its best other token (like vLLM's ``min_tokens``). Stop strings still apply.
    """

    max_new_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    min_new_tokens: int | None = None

    @property
    def greedy(self) -> bool:
        """True when sampling reduces to argmax."""
        return self.temperature == 0.0


class CacheMode(enum.Enum):
    """What the cache may do for a request."""

    DEFAULT = "default"
    BYPASS = "bypass"
    REFRESH = "refresh"
    ONLY_IF_CACHED = "only_if_cached"


@dataclass(frozen=True)
class CachePolicy:
    """Per-request cache policy; None fields take the server's settings."""

    mode: CacheMode = CacheMode.DEFAULT
    semantic_threshold: float | None = None
    ttl_s: float | None = None


@dataclass(frozen=True)
class GenerateRequest:
    """A request for one completion (exactly one of ``prompt`` / ``messages`` is set)."""

    request_id: str
    prompt: str = ""
    messages: tuple[ChatMessage, ...] = ()
    model: str = ""
    sampling: SamplingParams = field(default_factory=SamplingParams)
    cache: CachePolicy = field(default_factory=CachePolicy)
    max_cost_usd: float | None = None
    json_schema: str = ""
    tenant: str = "anonymous"
    #: Absolute deadline on the ``time.monotonic()`` clock, if the caller set one.
    deadline: float | None = None


class FinishReason(enum.Enum):
    """Why generation ended."""

    EOS = "eos"
    LENGTH = "length"
    STOP_SEQUENCE = "stop_sequence"
    CACHED = "cached"


@dataclass(frozen=True)
class Usage:
    """Token counts measured by the serving model's tokenizer."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


class CacheLayer(enum.Enum):
    """A cache layer."""

    EXACT = "exact"
    SEMANTIC = "semantic"


class CacheOutcome(enum.Enum):
    """What a cache lookup found."""

    HIT = "hit"
    MISS = "miss"
    SKIPPED = "skipped"
    REJECTED = "rejected"


@dataclass(frozen=True)
class CacheLookup:
    """One cache lookup in the decision trace."""

    layer: CacheLayer
    outcome: CacheOutcome
    similarity: float = 0.0
    entry_id: str = ""
    guard_verdict: str = ""
    detail: str = ""


@dataclass(frozen=True)
class DecisionTrace:
    """How the server decided to answer."""

    cache: tuple[CacheLookup, ...] = ()
    route_reason: str = ""
    fallbacks: tuple[str, ...] = ()


@dataclass(frozen=True)
class Timings:
    """Measured durations in milliseconds (decode rate in tokens per second)."""

    queued_ms: float = 0.0
    time_to_first_token_ms: float = 0.0
    total_ms: float = 0.0
    decode_tokens_per_s: float = 0.0


@dataclass(frozen=True)
class ResponseSummary:
    """Everything about a completion except its text."""

    finish_reason: FinishReason
    usage: Usage
    model: str
    provider: str
    trace: DecisionTrace = field(default_factory=DecisionTrace)
    timings: Timings = field(default_factory=Timings)
    cost_usd: float = 0.0
    cost_saved_usd: float = 0.0


@dataclass(frozen=True)
class GenerateResult:
    """A complete answer."""

    request_id: str
    text: str
    summary: ResponseSummary


@dataclass(frozen=True)
class TextDelta:
    """A piece of streamed text."""

    text: str


@dataclass(frozen=True)
class StreamEnd:
    """The last event of a stream."""

    summary: ResponseSummary


StreamEvent = TextDelta | StreamEnd


class ModelKind(enum.Enum):
    """Where a model runs."""

    LOCAL = "local"
    REMOTE = "remote"
    ROUTE = "route"


@dataclass(frozen=True)
class ModelInfo:
    """A servable model, as ListModels shows it."""

    name: str
    kind: ModelKind
    provider: str
    source: str
    context_length: int
    demo: bool = False
    description: str = ""
    input_price_per_mtok: float = 0.0
    output_price_per_mtok: float = 0.0
    quantization: str = "none"
    default: bool = False
    #: The largest max_new_tokens accepted, and what an unset one means (0: not known).
    max_new_tokens_cap: int = 0
    default_max_new_tokens: int = 0
    #: True when the model honours a request's json_schema.
    structured_output: bool = False
