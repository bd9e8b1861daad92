"""Domain types of the Benchmark RPC: the workload, one request's measured sample, a
point's report, progress, and the whole report.

Definitions (the README and the proto say the same):

* latency (E2E): from the request's *scheduled* send time (open loop) or its send time
  (closed loop) to its last byte, on a monotonic clock;
* TTFT: from the same start to the first non-empty text;
* TPOT: (E2E − TTFT) / (n − 1) for a request of n > 1 output tokens;
* ITL: every gap between consecutive text chunks of a stream (TTFT not included);
* goodput: completed requests per second that met every SLO the workload gave
  (TTFT, TPOT, E2E; an SLO of 0 is not set).

Token counts are the server's usage, never a client tokenizer's.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Arrival(enum.Enum):
    """How requests arrive."""

    #: Closed loop: ``concurrency`` workers, each sends its next request when its last ends.
    CLOSED = "closed"
    #: Open loop, exponential gaps (seeded): arrivals independent of completions.
    POISSON = "poisson"
    #: Open loop, equal gaps.
    CONSTANT = "constant"


class LengthDistribution(enum.Enum):
    """How synthetic prompt lengths spread around their mean."""

    FIXED = "fixed"
    UNIFORM = "uniform"  # mean ± spread × mean
    NORMAL = "normal"  # standard deviation spread × mean, at least 1 token


@dataclass(frozen=True)
class Slo:
    """Service-level objectives a request must meet to count toward goodput (0 = none)."""

    ttft_ms: float = 0.0
    tpot_ms: float = 0.0
    e2e_ms: float = 0.0

    def met(self, ttft_ms: float | None, tpot_ms: float | None, e2e_ms: float) -> bool:
        """True when every SLO that is set holds (a missing TTFT/TPOT fails its SLO)."""
        if self.ttft_ms and (ttft_ms is None or ttft_ms > self.ttft_ms):
            return False
        if self.tpot_ms and (tpot_ms is not None and tpot_ms > self.tpot_ms):
            return False
        return not (self.e2e_ms and e2e_ms > self.e2e_ms)


@dataclass(frozen=True)
class Workload:
    """What to measure: every combination of the tuples is one point."""

    #: Models and/or routes.
    targets: tuple[str, ...]
    #: Prompts (inline, or a dataset's); empty = synthetic prompts of ``input_tokens``.
    prompts: tuple[str, ...] = ()
    #: Mean synthetic prompt lengths in tokens (one point each; ignored with ``prompts``).
    input_tokens: tuple[int, ...] = (64,)
    input_distribution: LengthDistribution = LengthDistribution.FIXED
    #: Spread of the synthetic lengths as a fraction of the mean.
    input_spread: float = 0.0
    #: Output lengths (max_new_tokens), one point each.
    output_tokens: tuple[int, ...] = (32,)
    #: Closed-loop concurrency levels (or, in open loop, the most requests in flight).
    concurrency: tuple[int, ...] = (1,)
    #: Open-loop arrival rates in requests/s (one point each; empty = closed loop).
    rates: tuple[float, ...] = ()
    arrival: Arrival = Arrival.CLOSED
    #: Scheduler batch sizes for local models (0 = as configured), one point each.
    batch_sizes: tuple[int, ...] = (0,)
    #: Requests per point (after warm-up); with ``duration_s`` the point ends at whichever
    #: comes first.
    requests: int = 32
    duration_s: float = 0.0
    #: Requests sent before each point's measurement, within its concurrency, not counted.
    warmup_requests: int = 2
    #: Cache on and/or off (one point each): off sends cache mode BYPASS.
    cache: tuple[bool, ...] = (False,)
    #: Fraction of requests in [0, 1] that repeat an earlier prompt of the point.
    repeat_fraction: float = 0.0
    #: Pin the output length: every request produces exactly its max_new_tokens
    #: (min_new_tokens = max_new_tokens, so end-of-sequence cannot end it early; local
    #: models; providers stop where they stop and the report says so).
    pin_output: bool = True
    seed: int = 0
    slo: Slo = field(default_factory=Slo)
    #: Name the point with the most throughput whose p99 latency is within this (0 = none).
    latency_target_p99_ms: float = 0.0


@dataclass(frozen=True)
class Point:
    """One measured combination of a workload."""

    target: str
    input_tokens: int
    output_tokens: int
    concurrency: int
    #: Open-loop rate in requests/s (0 = closed loop).
    rate: float
    batch_size: int
    cache: bool


@dataclass(frozen=True)
class Sample:
    """One request, measured (times in seconds on a monotonic clock)."""

    #: When the schedule said to send it (closed loop: when it was sent).
    scheduled_s: float
    sent_s: float
    #: When the first non-empty text arrived (None: none did).
    first_text_s: float | None
    done_s: float
    #: Arrival times of every text chunk.
    chunk_s: tuple[float, ...]
    #: "OK" or the gRPC status name of the error.
    status: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    cost_saved_usd: float = 0.0
    #: "exact" or "semantic" for a cache hit, "" otherwise.
    cache_layer: str = ""

    @property
    def ok(self) -> bool:
        """True for a completed request."""
        return self.status == "OK"


@dataclass(frozen=True)
class Percentiles:
    """p50/p90/p95/p99 of one metric, in milliseconds (0 when there was no value)."""

    p50: float = 0.0
    p90: float = 0.0
    p95: float = 0.0
    p99: float = 0.0
    mean: float = 0.0
    count: int = 0


@dataclass(frozen=True)
class PointReport:
    """What one point measured."""

    point: Point
    #: Measured requests (warm-up excluded), completed or not.
    requests: int
    errors_by_status: dict[str, int]
    latency_ms: Percentiles
    ttft_ms: Percentiles
    tpot_ms: Percentiles
    itl_ms: Percentiles
    #: Completed requests, and output tokens (generated or served from the cache) per
    #: second, over the point's measured window.
    requests_per_s: float
    output_tokens_per_s: float
    goodput_rps: float
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_usd: float
    cost_saved_usd: float
    cache_hits_exact: int
    cache_hits_semantic: int
    #: Open loop: the requests/s the schedule asked for and what was sent (0 closed loop).
    target_rate: float
    achieved_rate: float
    duration_s: float
    warnings: tuple[str, ...] = ()

    @property
    def errors(self) -> int:
        """Requests that did not complete."""
        return sum(self.errors_by_status.values())

    @property
    def cache_hit_rate(self) -> float:
        """Cache hits (both layers) over measured requests."""
        hits = self.cache_hits_exact + self.cache_hits_semantic
        return hits / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class Recommendation:
    """The point with the most throughput within the latency target."""

    point: int
    reason: str


@dataclass(frozen=True)
class BenchmarkProgress:
    """Where a benchmark is: point ``point`` (1-based) of ``points``, requests done."""

    point: int
    points: int
    done: int
    total: int
    requests_per_s: float
    output_tokens_per_s: float
    elapsed_s: float
    message: str = ""


@dataclass(frozen=True)
class BenchmarkReport:
    """Every point's report, in workload order."""

    points: tuple[PointReport, ...]
    duration_s: float
    recommendation: Recommendation | None = None
