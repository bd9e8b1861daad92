"""The statistics of a benchmark: one percentile function, a point's report from its
samples, and the recommendation. Definitions: :mod:`optiserve.domain.benchmark`."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from optiserve.domain.benchmark import (
    Percentiles,
    Point,
    PointReport,
    Recommendation,
    Sample,
    Slo,
)

#: Below this share of the target rate, an open-loop point warns that it fell behind.
RATE_WARNING = 0.95


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100, clamped) of ``values``; 0.0 for no values.

    Linear interpolation between the closest ranks, computed exactly as
    ``numpy.percentile``'s default ("linear", Hyndman & Fan type 7, including its
    two-sided interpolation), so every figure of a report matches numpy's.
    """
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = (len(ordered) - 1) * (min(100.0, max(0.0, q)) / 100.0)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    a, b = ordered[low], ordered[high]
    t = rank - low
    # numpy interpolates from the nearer end, which keeps the result monotonic in q.
    return b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t


def percentiles(values_s: Sequence[float]) -> Percentiles:
    """p50/p90/p95/p99 and the mean of durations in seconds, reported in milliseconds."""
    ms = [v * 1000.0 for v in values_s]
    if not ms:
        return Percentiles()
    return Percentiles(
        p50=percentile(ms, 50),
        p90=percentile(ms, 90),
        p95=percentile(ms, 95),
        p99=percentile(ms, 99),
        mean=sum(ms) / len(ms),
        count=len(ms),
    )


def latency_s(s: Sample) -> float:
    """E2E latency: from the scheduled start to the last byte."""
    return s.done_s - s.scheduled_s


def ttft_s(s: Sample) -> float | None:
    """Time to the first non-empty text, from the scheduled start (None: no text came)."""
    return None if s.first_text_s is None else s.first_text_s - s.scheduled_s


def output_tokens(s: Sample) -> int:
    """Tokens the request received: generated, or replayed from optiserve's cache."""
    return s.completion_tokens + s.cached_tokens


def tpot_s(s: Sample) -> float | None:
    """(E2E − TTFT) / (n − 1) for n > 1 output tokens, else None."""
    first = ttft_s(s)
    n = output_tokens(s)
    if first is None or n < 2:
        return None
    return (latency_s(s) - first) / (n - 1)


def itl_s(s: Sample) -> list[float]:
    """Every gap between consecutive text chunks (the first chunk's wait is TTFT's)."""
    return [b - a for a, b in zip(s.chunk_s, s.chunk_s[1:], strict=False)]


def met_slo(s: Sample, slo: Slo) -> bool:
    """True for a completed request that met every SLO ``slo`` sets."""
    if not s.ok:
        return False
    first, per_token = ttft_s(s), tpot_s(s)
    return slo.met(
        None if first is None else first * 1000.0,
        None if per_token is None else per_token * 1000.0,
        latency_s(s) * 1000.0,
    )


def achieved_rate(samples: Sequence[Sample]) -> float:
    """Requests/s actually sent: the gaps between the first and last send (n sends span
    n − 1 gaps, so a schedule kept exactly gives its rate back); 0 below two sends."""
    if len(samples) < 2:
        return 0.0
    sends = sorted(s.sent_s for s in samples)
    return (len(sends) - 1) / max(1e-9, sends[-1] - sends[0])


def _warnings(
    point: Point, samples: Sequence[Sample], target_rate: float, achieved: float, pinned: bool
) -> list[str]:
    """What makes a point's figures less than they seem."""
    warnings: list[str] = []
    if target_rate > 0 and len(samples) > 1 and achieved < RATE_WARNING * target_rate:
        warnings.append(
            f"sent {achieved:.2f} requests/s, below {RATE_WARNING:.0%} of the target "
            f"{target_rate:g}/s: requests waited for one of the {point.concurrency} "
            "in-flight slots or the load generator fell behind (latency still counts from "
            "each request's scheduled time, so the wait is in the percentiles)"
        )
    ok = [s for s in samples if s.ok]
    short = [s for s in ok if not s.cache_layer and s.completion_tokens < point.output_tokens]
    if short:
        fewest = min(s.completion_tokens for s in short)
        head = (
            f"{len(short)} of {len(ok)} completed requests (cache hits aside) stopped before "
            f"{point.output_tokens} output tokens (fewest {fewest})"
        )
        if pinned:
            warnings.append(
                f"{head} although the output length was pinned: the model ended early "
                "(providers stop where they stop), so per-token figures cover shorter "
                "outputs than asked"
            )
        else:
            warnings.append(f"{head}; pin the output length to compare like with like")
    return warnings


def summarize(
    point: Point,
    samples: Sequence[Sample],
    slo: Slo,
    target_rate: float = 0.0,
    window: tuple[float, float] | None = None,
    *,
    pinned: bool = True,
) -> PointReport:
    """A point's report from its measured samples (warm-up excluded by the caller).

    Latency, TTFT, TPOT and ITL come from completed requests. Throughput and goodput are
    over ``window`` (default: the first scheduled send to the last completion). The
    achieved rate (open loop, ``target_rate`` > 0) is :func:`achieved_rate`. ``pinned``
    says whether the requests asked for exactly ``point.output_tokens`` (it words the
    warning when outputs came back shorter).
    """
    ok = [s for s in samples if s.ok]
    if window is None and samples:
        window = (min(s.scheduled_s for s in samples), max(s.done_s for s in samples))
    span = max(1e-9, window[1] - window[0]) if window is not None else 0.0

    def per_s(count: float) -> float:
        return count / span if span else 0.0

    completion = sum(s.completion_tokens for s in samples)
    achieved = achieved_rate(samples) if target_rate > 0 else 0.0
    return PointReport(
        point=point,
        requests=len(samples),
        errors_by_status=dict(Counter(s.status for s in samples if not s.ok)),
        latency_ms=percentiles([latency_s(s) for s in ok]),
        ttft_ms=percentiles([t for s in ok if (t := ttft_s(s)) is not None]),
        tpot_ms=percentiles([t for s in ok if (t := tpot_s(s)) is not None]),
        itl_ms=percentiles([g for s in ok for g in itl_s(s)]),
        requests_per_s=per_s(len(ok)),
        output_tokens_per_s=per_s(sum(output_tokens(s) for s in ok)),
        goodput_rps=per_s(sum(1 for s in ok if met_slo(s, slo))),
        prompt_tokens=sum(s.prompt_tokens for s in samples),
        completion_tokens=completion,
        cached_tokens=sum(s.cached_tokens for s in samples),
        cost_usd=sum(s.cost_usd for s in samples),
        cost_saved_usd=sum(s.cost_saved_usd for s in samples),
        cache_hits_exact=sum(1 for s in ok if s.cache_layer == "exact"),
        cache_hits_semantic=sum(1 for s in ok if s.cache_layer == "semantic"),
        target_rate=target_rate,
        achieved_rate=achieved,
        duration_s=span,
        warnings=tuple(_warnings(point, samples, target_rate, achieved, pinned)),
    )


def recommend(reports: Sequence[PointReport], p99_target_ms: float) -> Recommendation | None:
    """The point with the most output tokens/s (then requests/s) whose p99 latency is
    within ``p99_target_ms`` and which had no errors; None when none qualifies."""
    fits = [
        (i, r)
        for i, r in enumerate(reports)
        if r.errors == 0 and r.requests and r.latency_ms.p99 <= p99_target_ms
    ]
    if not fits:
        return None
    i, best = max(fits, key=lambda ir: (ir[1].output_tokens_per_s, ir[1].requests_per_s))
    p = best.point
    load = (
        f"rate {p.rate:g} requests/s (at most {p.concurrency} in flight)"
        if p.rate
        else f"concurrency {p.concurrency}"
    )
    batch = f"batch size {p.batch_size}" if p.batch_size else "the configured batch size"
    return Recommendation(
        point=i,
        reason=(
            f"{p.target} at {load} with {batch}: {best.output_tokens_per_s:.1f} output "
            f"tokens/s and {best.requests_per_s:.2f} requests/s with p99 latency "
            f"{best.latency_ms.p99:.1f} ms <= {p99_target_ms:g} ms (the most throughput of "
            f"the {len(fits)} of {len(reports)} points within the target)"
        ),
    )
