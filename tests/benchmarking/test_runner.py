"""The load driver against a fake ``send`` (no network, no model): concurrency, open loop
without coordinated omission, warm-up, repeats, errors, batch sizes, progress and
cancellation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from optiserve.benchmarking.runner import (
    BenchOutcome,
    BenchRequest,
    points,
    run_workload,
    status_of,
)
from optiserve.domain.benchmark import Arrival, BenchmarkProgress, Workload
from optiserve.domain.errors import InvalidRequest


class StatusError(Exception):
    """Like a client library's error: a ``status`` string."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


class FakeServer:
    """Streams ``max_new_tokens`` one-word chunks ``gap_s`` apart; answers a prompt it saw
    before from its "cache" when the request allows; can stall every request that arrives
    within a window until the window ends, or fail prompts that contain a marker."""

    def __init__(self, gap_s: float = 0.001, stall: tuple[float, float] | None = None) -> None:
        self.gap_s = gap_s
        self.stall = stall
        self.in_flight = 0
        self.max_in_flight = 0
        self.requests: list[BenchRequest] = []
        self.seen: set[str] = set()
        self.fail: dict[str, Exception] = {}

    async def send(self, r: BenchRequest) -> AsyncIterator[str | BenchOutcome]:
        self.requests.append(r)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            now = time.monotonic()
            if self.stall is not None and self.stall[0] <= now < self.stall[1]:
                await asyncio.sleep(self.stall[1] - now)
            for marker, error in self.fail.items():
                if marker in r.prompt:
                    raise error
            hit = r.cache and r.prompt in self.seen
            self.seen.add(r.prompt)
            n = r.max_new_tokens
            for _ in range(1 if hit else n):
                if not hit:
                    await asyncio.sleep(self.gap_s)
                yield "word " * (n if hit else 1)
            yield BenchOutcome(
                prompt_tokens=len(r.prompt.split()),
                completion_tokens=n,
                cached_tokens=len(r.prompt.split()) if hit else 0,
                cost_usd=0.0 if hit else 0.001,
                cost_saved_usd=0.001 if hit else 0.0,
                cache_layer="exact" if hit else "",
            )
        finally:
            self.in_flight -= 1


def workload(**fields: object) -> Workload:
    """A small workload: one target, short prompts and outputs, no warm-up."""
    base = Workload(
        targets=("m",), input_tokens=(8,), output_tokens=(4,), requests=8, warmup_requests=0
    )
    return replace(base, **fields)  # type: ignore[arg-type]


def test_points_follow_the_documented_order() -> None:
    w = workload(
        targets=("a", "b"),
        cache=(False, True),
        batch_sizes=(0, 4),
        concurrency=(1, 2),
        rates=(5.0,),
        arrival=Arrival.POISSON,
    )
    grid = points(w)
    assert len(grid) == 2 * 2 * 2 * 2
    keys = [
        (p.target, p.cache, p.batch_size, p.input_tokens, p.output_tokens, p.concurrency)
        for p in grid
    ]
    assert keys == sorted(keys)
    assert all(p.rate == 5.0 for p in grid)
    assert {p.input_tokens for p in points(workload(prompts=("hi",)))} == {0}


async def test_closed_loop_keeps_exactly_concurrency_requests_in_flight() -> None:
    server = FakeServer(gap_s=0.002)
    report = await run_workload(workload(concurrency=(4,), requests=24), server.send)
    assert server.max_in_flight == 4
    (point,) = report.points
    assert point.requests == 24 and point.errors == 0
    assert point.completion_tokens == 24 * 4
    assert point.itl_ms.count == 24 * 3
    assert point.achieved_rate == 0.0 and point.target_rate == 0.0
    assert report.duration_s > 0


async def test_requests_are_pinned_and_cache_off_is_sent_as_off() -> None:
    server = FakeServer()
    await run_workload(workload(requests=2, output_tokens=(3,)), server.send)
    assert all(r.min_new_tokens == r.max_new_tokens == 3 and not r.cache for r in server.requests)
    server = FakeServer()
    await run_workload(workload(requests=2, pin_output=False, cache=(True,)), server.send)
    assert all(r.min_new_tokens is None and r.cache for r in server.requests)


async def test_warm_up_is_sent_within_the_concurrency_but_not_counted() -> None:
    server = FakeServer(gap_s=0.005)
    report = await run_workload(
        workload(requests=5, warmup_requests=6, concurrency=(2,)), server.send
    )
    assert len(server.requests) == 11
    assert server.max_in_flight == 2
    assert report.points[0].requests == 5
    assert report.points[0].latency_ms.count == 5


async def test_repeat_fraction_makes_repeats_the_cache_answers() -> None:
    server = FakeServer()
    w = workload(requests=20, repeat_fraction=0.5, cache=(True,))
    report = await run_workload(w, server.send)
    prompts = [r.prompt for r in server.requests]
    assert len(set(prompts)) == 10
    assert report.points[0].cache_hits_exact == 10
    assert report.points[0].cache_hit_rate == pytest.approx(0.5)


async def test_errors_are_counted_by_status() -> None:
    server = FakeServer()
    w = workload(requests=12, prompts=("ok", "busy", "bad", "odd"))
    server.fail = {
        "busy": StatusError("RESOURCE_EXHAUSTED"),
        "bad": InvalidRequest("no"),
        "odd": RuntimeError("?"),
    }
    report = await run_workload(w, server.send)
    r = report.points[0]
    assert r.errors_by_status == {"RESOURCE_EXHAUSTED": 3, "INVALID_ARGUMENT": 3, "UNKNOWN": 3}
    assert r.requests == r.latency_ms.count + r.errors == 12
    assert status_of(TimeoutError()) == "DEADLINE_EXCEEDED"


async def test_open_loop_measures_a_stall_that_a_closed_loop_hides() -> None:
    """Every request arriving during a 2-second window waits until it ends. Sent on
    schedule and timed from the schedule, the open loop's p99 shows the stall; a closed
    loop stops sending while stalled, so only its few in-flight requests see it."""
    stall_s = 2.0
    open_server = FakeServer()
    open_server.stall = (time.monotonic() + 0.2, time.monotonic() + 0.2 + stall_s)
    seen: list[BenchmarkProgress] = []
    w = workload(requests=50, rates=(20.0,), arrival=Arrival.CONSTANT, concurrency=(64,))
    report = await run_workload(w, open_server.send, progress=seen.append)
    r = report.points[0]
    assert r.latency_ms.p99 >= 0.95 * stall_s * 1000
    assert r.latency_ms.p90 >= 0.5 * stall_s * 1000  # most arrivals fell in the stall
    assert r.achieved_rate == pytest.approx(20.0, rel=0.05)
    assert r.target_rate == 20.0
    assert not any("below" in w for w in r.warnings)
    # progress: ticks while the point runs, then its end
    assert len(seen) >= 4
    assert seen[-1].point == seen[-1].points == 1
    assert seen[-1].done == seen[-1].total == 50

    closed_server = FakeServer()  # a shorter stall keeps the test short; p90 hides any
    closed_server.stall = (time.monotonic() + 0.1, time.monotonic() + 0.6)
    closed = await run_workload(workload(requests=200, concurrency=(2,)), closed_server.send)
    c = closed.points[0]
    # the two requests in flight waited, but the closed loop sent nothing more meanwhile
    assert c.latency_ms.p90 < 100
    assert c.latency_ms.p99 < 0.5 * r.latency_ms.p99
    assert c.latency_ms.p90 * 10 < r.latency_ms.p90


async def test_an_open_loop_short_of_slots_says_it_fell_behind_and_counts_the_wait() -> None:
    server = FakeServer(gap_s=0.025)  # each request takes ~0.1 s; one slot serves 10/s
    w = workload(requests=6, rates=(20.0,), arrival=Arrival.CONSTANT, concurrency=(1,))
    r = (await run_workload(w, server.send)).points[0]
    assert server.max_in_flight == 1
    assert any("below 95% of the target 20/s" in w for w in r.warnings)
    # the last request was due at 0.25 s, sent after five others of ~0.1 s each, done at
    # ~0.6 s: its latency counts the wait for the slot
    assert r.latency_ms.p99 >= 300


async def test_duration_ends_a_point_before_its_requests() -> None:
    server = FakeServer(gap_s=0.01)
    started = time.monotonic()
    report = await run_workload(workload(requests=1000, duration_s=0.3), server.send)
    assert time.monotonic() - started < 1.0
    assert 0 < report.points[0].requests < 1000


async def test_batch_sizes_are_set_and_put_back_between_points() -> None:
    calls: list[tuple[str, int]] = []

    async def set_batch_size(target: str, size: int) -> None:
        calls.append((target, size))

    w = workload(requests=1, batch_sizes=(0, 4), cache=(False, True))
    report = await run_workload(w, FakeServer().send, set_batch_size=set_batch_size)
    assert [p.point.batch_size for p in report.points] == [0, 4, 0, 4]
    assert calls == [("m", 4), ("m", 0), ("m", 4)]


async def test_a_latency_target_recommends_a_point() -> None:
    w = workload(requests=4, concurrency=(1, 2), latency_target_p99_ms=10_000)
    report = await run_workload(w, FakeServer().send)
    assert report.recommendation is not None
    assert report.recommendation.point in (0, 1)
    assert (await run_workload(workload(requests=2), FakeServer().send)).recommendation is None


@pytest.mark.parametrize("rates", [(), (50.0,)])
async def test_cancelling_the_run_cancels_every_request_within_a_second(
    rates: tuple[float, ...],
) -> None:
    server = FakeServer(gap_s=30.0)  # requests that would take minutes
    arrival = Arrival.POISSON if rates else Arrival.CLOSED
    w = workload(requests=100, concurrency=(8,), rates=rates, arrival=arrival, warmup_requests=2)
    task = asyncio.ensure_future(run_workload(w, server.send))
    await asyncio.sleep(0.3)
    assert server.in_flight > 0
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 1.0
    assert server.in_flight == 0


async def test_a_send_that_fails_before_streaming_is_a_failed_request() -> None:
    def refuse(r: BenchRequest) -> AsyncIterator[str | BenchOutcome]:
        raise StatusError("UNAVAILABLE")

    report = await run_workload(workload(requests=3), refuse)
    assert report.points[0].errors_by_status == {"UNAVAILABLE": 3}
