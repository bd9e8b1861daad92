"""Benchmark messages <-> domain types (domain/benchmark.py)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from optiserve.domain.benchmark import (
    Arrival,
    BenchmarkProgress,
    BenchmarkReport,
    LengthDistribution,
    PointReport,
    Slo,
    Workload,
)
from optiserve.domain.errors import InvalidRequest
from optiserve.domain.validation import check_name
from optiserve_client.v1 import optiserve_pb2 as pb

T = TypeVar("T")

_ARRIVALS = {
    pb.ARRIVAL_PROCESS_CLOSED: Arrival.CLOSED,
    pb.ARRIVAL_PROCESS_POISSON: Arrival.POISSON,
    pb.ARRIVAL_PROCESS_CONSTANT: Arrival.CONSTANT,
}
_DISTRIBUTIONS = {
    pb.INPUT_DISTRIBUTION_FIXED: LengthDistribution.FIXED,
    pb.INPUT_DISTRIBUTION_UNIFORM: LengthDistribution.UNIFORM,
    pb.INPUT_DISTRIBUTION_NORMAL: LengthDistribution.NORMAL,
}
#: Defaults of the fields an empty list or a zero leaves unset.
DEFAULT_REQUESTS = 32
DEFAULT_WARMUP = 2


def _enum(field: str, value: int, table: Mapping[Any, T], name: Callable[[int], str]) -> T:
    if value not in table:
        allowed = ", ".join(f"{name(k)} ({k})" for k in table)
        raise InvalidRequest(f"{field} {value} is unknown; allowed: {allowed}")
    return table[value]


def workload_from_proto(msg: pb.BenchmarkRequest) -> Workload:
    """The domain workload (defaults filled in; ranges are the Benchmarker's to check)."""
    arrival = _enum("arrival", msg.arrival, _ARRIVALS, pb.ArrivalProcess.Name)
    distribution = _enum(
        "input_distribution", msg.input_distribution, _DISTRIBUTIONS, pb.InputDistribution.Name
    )
    for i, target in enumerate(msg.models):
        check_name(f"models[{i}]", target)
    return Workload(
        targets=tuple(msg.models),
        prompts=tuple(msg.prompts),
        input_tokens=tuple(msg.prompt_lengths) or (64,),
        input_distribution=distribution,
        input_spread=msg.input_spread,
        output_tokens=tuple(msg.max_new_tokens) or (32,),
        concurrency=tuple(msg.concurrency) or (1,),
        rates=tuple(msg.arrival_rates),
        arrival=arrival,
        batch_sizes=tuple(msg.batch_sizes) or (0,),
        requests=msg.requests_per_point or DEFAULT_REQUESTS,
        duration_s=msg.duration_s,
        warmup_requests=(
            msg.warmup_requests if msg.HasField("warmup_requests") else DEFAULT_WARMUP
        ),
        cache=tuple(msg.cache) or (False,),
        repeat_fraction=msg.repeat_fraction,
        pin_output=msg.pin_output_length,
        seed=msg.seed,
        slo=Slo(ttft_ms=msg.slo_ttft_ms, tpot_ms=msg.slo_tpot_ms, e2e_ms=msg.slo_e2e_ms),
        latency_target_p99_ms=msg.latency_target_p99_ms,
    )


def point_to_proto(r: PointReport) -> pb.BenchmarkPoint:
    """One point's report on the wire."""
    p = r.point
    return pb.BenchmarkPoint(
        model=p.target,
        prompt_length=p.input_tokens,
        max_new_tokens=p.output_tokens,
        concurrency=p.concurrency,
        batch_size=p.batch_size,
        rate=p.rate,
        cache=p.cache,
        requests=r.requests,
        errors=r.errors,
        errors_by_status=r.errors_by_status,
        latency_p50_ms=r.latency_ms.p50,
        latency_p90_ms=r.latency_ms.p90,
        latency_p95_ms=r.latency_ms.p95,
        latency_p99_ms=r.latency_ms.p99,
        latency_mean_ms=r.latency_ms.mean,
        ttft_p50_ms=r.ttft_ms.p50,
        ttft_p90_ms=r.ttft_ms.p90,
        ttft_p99_ms=r.ttft_ms.p99,
        ttft_mean_ms=r.ttft_ms.mean,
        tpot_p50_ms=r.tpot_ms.p50,
        tpot_p99_ms=r.tpot_ms.p99,
        itl_p50_ms=r.itl_ms.p50,
        itl_p99_ms=r.itl_ms.p99,
        tokens_per_s=r.output_tokens_per_s,
        requests_per_s=r.requests_per_s,
        goodput_rps=r.goodput_rps,
        prompt_tokens=r.prompt_tokens,
        completion_tokens=r.completion_tokens,
        cached_tokens=r.cached_tokens,
        cost_usd=r.cost_usd,
        cost_saved_usd=r.cost_saved_usd,
        cache_hits=r.cache_hits_exact + r.cache_hits_semantic,
        cache_hits_exact=r.cache_hits_exact,
        cache_hits_semantic=r.cache_hits_semantic,
        cache_hit_rate=r.cache_hit_rate,
        target_rate=r.target_rate,
        achieved_rate=r.achieved_rate,
        duration_s=r.duration_s,
        warnings=list(r.warnings),
    )


def benchmark_event_to_proto(event: BenchmarkProgress | BenchmarkReport) -> pb.BenchmarkEvent:
    """Progress (point i of n, requests done, current throughput) or the report."""
    if isinstance(event, BenchmarkProgress):
        e = event
        return pb.BenchmarkEvent(
            progress=pb.Progress(
                stage=f"point {e.point}/{e.points}",
                fraction=min(1.0, e.done / e.total) if e.total else 0.0,
                message=e.message,
                step=e.point,
                steps=e.points,
                elapsed_s=e.elapsed_s,
                done=e.done,
                total=e.total,
                requests_per_s=e.requests_per_s,
                output_tokens_per_s=e.output_tokens_per_s,
            )
        )
    report = pb.BenchmarkReport(
        points=[point_to_proto(p) for p in event.points], duration_s=event.duration_s
    )
    if event.recommendation is not None:
        report.recommendation.point_index = event.recommendation.point
        report.recommendation.reason = event.recommendation.reason
    return pb.BenchmarkEvent(report=report)
