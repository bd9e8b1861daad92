"""The statistics of a benchmark: the one percentile function against numpy, the metric
definitions on hand-made samples, goodput, counts, warnings and the recommendation."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest

from optiserve.benchmarking.stats import (
    achieved_rate,
    itl_s,
    percentile,
    percentiles,
    recommend,
    summarize,
    tpot_s,
    ttft_s,
)
from optiserve.domain.benchmark import Percentiles, Point, PointReport, Sample, Slo

POINT = Point(
    target="m", input_tokens=8, output_tokens=5, concurrency=2, rate=0.0, batch_size=0, cache=False
)


def sample(
    scheduled: float,
    first: float | None,
    done: float,
    *,
    tokens: int = 5,
    chunks: tuple[float, ...] = (),
    status: str = "OK",
    sent: float | None = None,
    layer: str = "",
) -> Sample:
    """A hand-made sample (times in seconds)."""
    return Sample(
        scheduled_s=scheduled,
        sent_s=scheduled if sent is None else sent,
        first_text_s=first,
        done_s=done,
        chunk_s=chunks or (() if first is None else (first,)),
        status=status,
        prompt_tokens=8 if status == "OK" else 0,
        completion_tokens=tokens if status == "OK" else 0,
        cached_tokens=8 if layer else 0,
        cost_usd=0.01 if status == "OK" else 0.0,
        cache_layer=layer,
    )


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 10, 11, 99, 100, 101, 257, 1000])
def test_percentile_matches_numpy(size: int) -> None:
    rng = random.Random(size)
    for _ in range(5):
        values = [rng.lognormvariate(0, 1.5) for _ in range(size)]
        qs = [0, 1, 25, 50, 90, 95, 99, 99.9, 100] + [rng.uniform(0, 100) for _ in range(20)]
        for q in qs:
            ours, theirs = percentile(values, q), float(np.percentile(values, q))
            assert ours == pytest.approx(theirs, rel=1e-12, abs=1e-15), (size, q)


def test_percentile_of_nothing_is_zero_and_of_one_value_is_that_value() -> None:
    assert percentile([], 99) == 0.0
    assert percentiles([]) == Percentiles()
    assert percentile([3.5], 0) == percentile([3.5], 50) == percentile([3.5], 100) == 3.5


def test_percentiles_are_ordered_in_milliseconds() -> None:
    rng = random.Random(7)
    for size in (1, 2, 10, 1000):
        values = [rng.expovariate(5.0) for _ in range(size)]
        p = percentiles(values)
        assert p.p50 <= p.p90 <= p.p95 <= p.p99
        assert p.count == size
        assert p.mean == pytest.approx(1000 * sum(values) / size)
        assert p.p99 == pytest.approx(1000 * float(np.percentile(values, 99)))


def test_ttft_tpot_itl_and_latency_follow_their_definitions() -> None:
    s = sample(10.0, 10.3, 10.7, tokens=5, chunks=(10.3, 10.4, 10.6), sent=10.1)
    assert ttft_s(s) == pytest.approx(0.3)  # from the scheduled time, not the send
    assert tpot_s(s) == pytest.approx((0.7 - 0.3) / 4)
    assert itl_s(s) == pytest.approx([0.1, 0.2])  # the first chunk's wait is TTFT's
    report = summarize(POINT, [s], Slo())
    assert report.latency_ms.p50 == pytest.approx(700)
    assert report.ttft_ms.p50 == pytest.approx(300)
    assert report.tpot_ms.p50 == pytest.approx(100)
    assert report.itl_ms.count == 2
    assert report.itl_ms.p50 == pytest.approx(150)
    # one output token: no TPOT; no text at all: no TTFT
    assert tpot_s(sample(0.0, 0.1, 0.1, tokens=1)) is None
    assert ttft_s(sample(0.0, None, 0.2, tokens=0)) is None


def test_goodput_counts_completed_requests_meeting_every_slo_over_the_window() -> None:
    samples = [
        sample(0.0, 0.1, 0.5),  # meets both
        sample(0.0, 0.3, 0.5),  # TTFT too slow
        sample(0.5, 0.6, 1.9),  # E2E too slow
        sample(0.5, 0.6, 1.0),  # meets both
        sample(1.0, None, 1.2, status="UNAVAILABLE"),  # failed: never good
    ]
    report = summarize(POINT, samples, Slo(ttft_ms=200, e2e_ms=1000), window=(0.0, 2.0))
    assert report.goodput_rps == pytest.approx(2 / 2.0)
    assert report.requests_per_s == pytest.approx(4 / 2.0)
    assert report.duration_s == pytest.approx(2.0)
    # default window: the first scheduled send to the last completion
    assert summarize(POINT, samples, Slo()).duration_s == pytest.approx(1.9)
    assert summarize(POINT, samples, Slo()).goodput_rps == pytest.approx(4 / 1.9)


def test_counts_add_up_and_tokens_come_from_the_samples() -> None:
    samples = [
        sample(0.0, 0.1, 0.2),
        sample(0.0, 0.1, 0.3, layer="exact"),
        sample(0.1, 0.2, 0.3, layer="semantic"),
        sample(0.1, None, 0.2, status="RESOURCE_EXHAUSTED"),
        sample(0.2, None, 0.3, status="RESOURCE_EXHAUSTED"),
        sample(0.2, None, 0.4, status="DEADLINE_EXCEEDED"),
    ]
    r = summarize(POINT, samples, Slo())
    assert r.requests == 6
    assert r.errors_by_status == {"RESOURCE_EXHAUSTED": 2, "DEADLINE_EXCEEDED": 1}
    assert r.requests - r.errors == r.latency_ms.count == 3
    assert (r.cache_hits_exact, r.cache_hits_semantic) == (1, 1)
    assert r.cache_hit_rate == pytest.approx(2 / 6)
    assert (r.prompt_tokens, r.completion_tokens, r.cached_tokens) == (24, 15, 16)
    assert r.cost_usd == pytest.approx(0.03)


def test_an_open_loop_that_fell_behind_says_so() -> None:
    point = replace(POINT, rate=10.0)
    on_time = [sample(i / 10, i / 10 + 0.01, i / 10 + 0.05) for i in range(20)]
    kept = summarize(point, on_time, Slo(), target_rate=10.0)
    assert kept.achieved_rate == pytest.approx(10.0)
    assert not kept.warnings
    late = [replace(s, sent_s=s.scheduled_s * 2) for s in on_time]  # sent at half the rate
    behind = summarize(point, late, Slo(), target_rate=10.0)
    assert achieved_rate(late) == pytest.approx(5.0)
    assert behind.achieved_rate == pytest.approx(5.0)
    assert any("below 95% of the target 10/s" in w for w in behind.warnings)
    assert summarize(POINT, on_time, Slo()).achieved_rate == 0.0  # closed loop: none


def test_outputs_shorter_than_pinned_are_warned_about_but_cache_hits_are_not() -> None:
    samples = [sample(0.0, 0.1, 0.5, tokens=5), sample(0.0, 0.1, 0.3, tokens=2)]
    r = summarize(POINT, samples, Slo())
    assert len(r.warnings) == 1
    assert "1 of 2 completed requests" in r.warnings[0]
    assert "pinned" in r.warnings[0]
    unpinned = summarize(POINT, samples, Slo(), pinned=False)
    assert "pin the output length" in unpinned.warnings[0]
    hit = [sample(0.0, 0.1, 0.5, tokens=5), sample(0.0, 0.1, 0.2, tokens=2, layer="exact")]
    assert not summarize(POINT, hit, Slo()).warnings


def _report(
    p99_ms: float, tokens_per_s: float, rps: float, errors: int = 0, **point: object
) -> PointReport:
    """A point's report with the figures the recommendation looks at."""
    base = summarize(replace(POINT, **point), [sample(0.0, 0.1, 0.2)], Slo())  # type: ignore[arg-type]
    return replace(
        base,
        latency_ms=replace(base.latency_ms, p99=p99_ms),
        output_tokens_per_s=tokens_per_s,
        requests_per_s=rps,
        errors_by_status={"UNAVAILABLE": errors} if errors else {},
    )


def test_recommend_picks_the_most_throughput_within_the_target_without_errors() -> None:
    reports = [
        _report(100, 50, 5, concurrency=1),
        _report(200, 90, 8, concurrency=4, batch_size=8),
        _report(250, 90, 9, concurrency=8, batch_size=8),  # tie on tokens/s: more requests/s
        _report(900, 300, 20, concurrency=32),  # over the target
        _report(150, 500, 30, errors=1, concurrency=16),  # errors
    ]
    rec = recommend(reports, 300)
    assert rec is not None
    assert rec.point == 2
    assert "concurrency 8" in rec.reason and "batch size 8" in rec.reason
    assert "90.0 output tokens/s" in rec.reason and "250.0 ms" in rec.reason
    assert recommend(reports, 50) is None


def test_recommend_names_the_rate_of_an_open_loop_point() -> None:
    rec = recommend([_report(100, 50, 5, rate=4.0, concurrency=16)], 200)
    assert rec is not None and rec.point == 0
    assert "rate 4 requests/s" in rec.reason and "16 in flight" in rec.reason
