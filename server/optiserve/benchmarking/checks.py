"""A workload's fields against the configured caps: INVALID_ARGUMENT naming the field and
its allowed range, RESOURCE_EXHAUSTED for a workload over the totals. The server checks
every Benchmark request with it; ``optiserve bench --client-side`` checks its own."""

from __future__ import annotations

import math
from collections.abc import Sequence

from optiserve.benchmarking.config import BenchmarkConfig
from optiserve.benchmarking.runner import points
from optiserve.domain.benchmark import Arrival, Workload
from optiserve.domain.errors import InvalidRequest, ResourceExhausted


def _each_in(
    field: str, values: Sequence[float], low: float, high: float, *, open_low: bool = False
) -> None:
    for v in values:
        bad = (v <= low if open_low else v < low) or v > high or math.isnan(v)
        if bad:
            bracket = "(" if open_low else "["
            raise InvalidRequest(f"{field} must be in {bracket}{low:g}, {high:g}], got {v:g}")


def check_workload(w: Workload, c: BenchmarkConfig) -> None:
    """Refuse a workload outside ``c``'s caps (see the module docstring)."""
    if not w.targets:
        raise InvalidRequest("models must name at least one model or route to measure")
    _each_in("concurrency", w.concurrency, 1, c.max_concurrency)
    _each_in("arrival_rates", w.rates, 0, c.max_rate, open_low=True)
    _each_in("prompt_lengths", w.input_tokens, 1, c.max_prompt_length)
    _each_in("max_new_tokens", w.output_tokens, 1, c.max_new_tokens)
    _each_in("batch_sizes", w.batch_sizes, 0, c.max_concurrency)
    _each_in("requests_per_point", [w.requests], 1, c.max_requests_per_point)
    _each_in("duration_s", [w.duration_s], 0, c.max_duration_s)
    _each_in("warmup_requests", [w.warmup_requests], 0, c.max_requests_per_point)
    _each_in("repeat_fraction", [w.repeat_fraction], 0, 1)
    _each_in("input_spread", [w.input_spread], 0, 1)
    for name, slo in (
        ("slo_ttft_ms", w.slo.ttft_ms),
        ("slo_tpot_ms", w.slo.tpot_ms),
        ("slo_e2e_ms", w.slo.e2e_ms),
        ("latency_target_p99_ms", w.latency_target_p99_ms),
    ):
        _each_in(name, [slo], 0, 86_400_000)
    if w.rates and w.arrival is Arrival.CLOSED:
        raise InvalidRequest(
            "arrival_rates need an open-loop arrival (ARRIVAL_PROCESS_POISSON or "
            "ARRIVAL_PROCESS_CONSTANT); the closed loop is paced by concurrency"
        )
    if not w.rates and w.arrival is not Arrival.CLOSED:
        raise InvalidRequest(
            f"arrival {w.arrival.value} needs arrival_rates (requests/s, in (0, {c.max_rate:g}])"
        )
    if len(w.prompts) > c.max_prompts:
        raise InvalidRequest(f"prompts holds {len(w.prompts)}, at most {c.max_prompts}")
    if any(not p.strip() for p in w.prompts):
        raise InvalidRequest("prompts must not hold empty strings")
    # Counted before the grid is built: lists of thousands of entries each multiply into
    # more points than memory holds.
    count = _point_count(w)
    if count > c.max_points:
        raise ResourceExhausted(
            f"the workload has {count} points, over this server's "
            f"benchmark.max_points ({c.max_points}); measure fewer combinations"
        )
    grid = points(w)
    total = len(grid) * (w.requests + w.warmup_requests)
    if total > c.max_total_requests:
        raise ResourceExhausted(
            f"the workload sends {total} requests ({len(grid)} points × "
            f"({w.requests} + {w.warmup_requests} warm-up)), over this server's "
            f"benchmark.max_total_requests ({c.max_total_requests})"
        )


def _point_count(w: Workload) -> int:
    """``len(points(w))`` without building the points."""
    lengths = 1 if w.prompts else len(w.input_tokens)
    loads = len(w.concurrency) * (len(w.rates) if w.rates else 1)
    return math.prod(
        (len(w.targets), len(w.cache), len(w.batch_sizes), lengths, len(w.output_tokens), loads)
    )
