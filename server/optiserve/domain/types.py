"""Domain types of a generation request and its answer.

These dataclasses are what the rpc layer converts protobuf messages to and from; nothing
below rpc/ sees a protobuf message.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from optiserve.domain.pricing import Prices


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


class CompressionMode(enum.Enum):
    """Prompt compression a request asks for (the router may turn it on under budget
    pressure)."""

    OFF = "off"
    #: Whitespace runs, repeated lines and boilerplate removed; the meaning is kept.
    LOSSLESS = "lossless"
    #: Also drops low-information words, never inside code, JSON or quoted text.
    LOSSY = "lossy"


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
    #: The lowest model quality score a route may choose (None: any).
    min_quality: float | None = None
    compression: CompressionMode = CompressionMode.OFF
    json_schema: str = ""
    tenant: str = "anonymous"
    #: Absolute deadline on the ``time.monotonic()`` clock, if the caller set one.
    deadline: float | None = None

    def sent_text(self) -> str:
        """All the text the request sends a model: the prompt, or every turn with its role
        (the role stands in for the chat template's framing of the turn), and the
        json_schema (sent to providers as a response format or a tool). Its UTF-8 size
        bounds the prompt tokens (:func:`~optiserve.domain.pricing.prompt_token_bound`)."""
        if self.messages:
            text = "".join(f"{m.role}: {m.content}\n" for m in self.messages)
        else:
            text = self.prompt
        return text + self.json_schema


class FinishReason(enum.Enum):
    """Why generation ended."""

    EOS = "eos"
    LENGTH = "length"
    STOP_SEQUENCE = "stop_sequence"
    CACHED = "cached"


@dataclass(frozen=True)
class Usage:
    """Token counts measured by the serving model (its tokenizer, or the provider's reply).

    ``prompt_tokens`` is the whole prompt, including the provider prompt-cache reads and
    writes counted apart. ``cached_tokens`` are answer tokens served from optiserve's own
    cache. ``estimated`` is True when the provider reported no usage: the request was then
    charged its reserved worst case.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    provider_cache_read_tokens: int = 0
    provider_cache_write_tokens: int = 0
    estimated: bool = False


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
class RouteTrace:
    """How a route chose its model (empty when the request named a model)."""

    route: str = ""
    #: The rule that decided, in words (e.g. "cheapest model of tier >= balanced that fits").
    rule: str = ""
    #: The prompt features the complexity score was computed from, by name.
    features: tuple[tuple[str, float], ...] = ()
    complexity: float = 0.0
    #: The tier the score asked for.
    tier: str = ""
    #: Spend over the tightest budget limit when the decision was made (0..1+).
    budget_pressure: float = 0.0
    #: What the same tokens would have cost on the route's most capable model.
    premium_model: str = ""
    premium_cost_usd: float = 0.0


@dataclass(frozen=True)
class CompressionTrace:
    """What prompt compression did (``mode`` "off" when it did not run)."""

    mode: str = "off"
    tokens_before: int = 0
    tokens_after: int = 0
    #: Why it was skipped or switched on, in words ("" when asked for and run).
    note: str = ""


@dataclass(frozen=True)
class DecisionTrace:
    """How the server decided to answer."""

    cache: tuple[CacheLookup, ...] = ()
    route_reason: str = ""
    #: Models tried before the one that answered, each with why it was left
    #: ("model: UNAVAILABLE: ...").
    fallbacks: tuple[str, ...] = ()
    route: RouteTrace = field(default_factory=RouteTrace)
    compression: CompressionTrace = field(default_factory=CompressionTrace)


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


class Tier(enum.Enum):
    """A model's price/capability class, in increasing order of cost."""

    LOCAL = "local"
    CHEAP = "cheap"
    BALANCED = "balanced"
    PREMIUM = "premium"

    @property
    def rank(self) -> int:
        """0 for local up to 3 for premium."""
        return _TIER_RANK[self]


_TIER_RANK = {Tier.LOCAL: 0, Tier.CHEAP: 1, Tier.BALANCED: 2, Tier.PREMIUM: 3}


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
    prices: Prices = field(default_factory=Prices)
    #: The provider's own id of the model ("" for local models).
    provider_model: str = ""
    tier: Tier = Tier.LOCAL
    #: Quality score in [0, 1] from the configuration (higher is more capable).
    quality: float = 0.0
    quantization: str = "none"
    default: bool = False
    #: The largest max_new_tokens accepted, and what an unset one means (0: not known).
    max_new_tokens_cap: int = 0
    default_max_new_tokens: int = 0
    #: True when the model honours a request's json_schema.
    structured_output: bool = False
    #: For a route: the models it may choose, in fallback order.
    route_models: tuple[str, ...] = ()
    #: A Quantize variant: bits per weight, bytes of its weight files, what it was made
    #: from (0, 0, "" for other models).
    quant_bits: int = 0
    size_bytes: int = 0
    variant_of: str = ""
