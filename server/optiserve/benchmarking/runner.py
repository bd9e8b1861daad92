"""The load driver: expands a workload into points and measures each one against a
``send`` function (the server's pipeline, or a client over the network).

Closed loop: ``concurrency`` workers, each sends its next request when its last ends.
Open loop: each request is due at its scheduled time (:mod:`.schedule`) whatever the
others do; at most ``concurrency`` are in flight, and a request that waits for a slot
still has its latency measured from its *scheduled* time, so a stall or a queue shows in
the percentiles instead of slowing the load down (no coordinated omission).

Warm-up requests run first within the point's concurrency and are not measured. Every time
is read from one monotonic clock.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from optiserve.benchmarking.prompts import point_prompts
from optiserve.benchmarking.schedule import arrival_offsets
from optiserve.benchmarking.stats import recommend, summarize
from optiserve.domain.benchmark import (
    BenchmarkProgress,
    BenchmarkReport,
    Point,
    PointReport,
    Sample,
    Workload,
)
from optiserve.domain.errors import OptiserveError, status_code_name

#: Seconds between progress reports within a point.
PROGRESS_EVERY_S = 0.5


@dataclass(frozen=True)
class BenchRequest:
    """One request of a benchmark."""

    target: str
    prompt: str
    max_new_tokens: int
    min_new_tokens: int | None
    cache: bool


@dataclass(frozen=True)
class BenchOutcome:
    """What the server reported for a completed request (its usage and cost)."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_usd: float
    cost_saved_usd: float
    #: "exact" or "semantic" for a cache hit, "" otherwise.
    cache_layer: str


#: Sends a request: yields its text chunks, then one BenchOutcome; raises on failure.
Send = Callable[[BenchRequest], AsyncIterator[str | BenchOutcome]]
Progress = Callable[[BenchmarkProgress], None]


def points(w: Workload) -> list[Point]:
    """Every combination of the workload's lists, in a fixed order."""
    lengths = (0,) if w.prompts else w.input_tokens
    if w.rates:
        loads = [(c, r) for c in w.concurrency for r in w.rates]
    else:
        loads = [(c, 0.0) for c in w.concurrency]
    return [
        Point(
            target=t,
            input_tokens=i,
            output_tokens=o,
            concurrency=c,
            rate=r,
            batch_size=b,
            cache=cache,
        )
        for t, cache, b, i, o, (c, r) in itertools.product(
            w.targets, w.cache, w.batch_sizes, lengths, w.output_tokens, loads
        )
    ]


def status_of(exc: BaseException) -> str:
    """The gRPC status name of a failed request."""
    status = getattr(exc, "status", None)
    if isinstance(status, str) and status:
        return status
    if isinstance(exc, OptiserveError):
        return status_code_name(exc)
    if isinstance(exc, TimeoutError):
        return "DEADLINE_EXCEEDED"
    return "UNKNOWN"


class _Meter:
    """Requests done and tokens produced so far in a point, for progress."""

    def __init__(self) -> None:
        self.done = 0
        self.tokens = 0


async def _one(
    send: Send, request: BenchRequest, scheduled: float, clock: Callable[[], float]
) -> Sample:
    sent = clock()
    chunks: list[float] = []
    first: float | None = None
    outcome: BenchOutcome | None = None
    status = "OK"
    try:
        async for item in send(request):
            now = clock()
            if isinstance(item, BenchOutcome):
                outcome = item
            elif item:
                chunks.append(now)
                if first is None:
                    first = now
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        status = status_of(exc)
    if status == "OK" and outcome is None:
        status = "UNKNOWN"  # the stream ended without its summary
    o = outcome or BenchOutcome(0, 0, 0, 0.0, 0.0, "")
    return Sample(
        scheduled_s=scheduled,
        sent_s=sent,
        first_text_s=first,
        done_s=clock(),
        chunk_s=tuple(chunks),
        status=status,
        prompt_tokens=o.prompt_tokens,
        completion_tokens=o.completion_tokens,
        cached_tokens=o.cached_tokens,
        cost_usd=o.cost_usd,
        cost_saved_usd=o.cost_saved_usd,
        cache_layer=o.cache_layer,
    )


class _PointRun:
    """One point: warm-up, then its measured requests."""

    def __init__(
        self,
        workload: Workload,
        point: Point,
        index: int,
        send: Send,
        clock: Callable[[], float],
    ) -> None:
        self.w = workload
        self.point = point
        self.index = index
        self.send = send
        self.clock = clock
        self.meter = _Meter()
        seed = workload.seed * 1_000_003 + index
        warm = workload.warmup_requests
        prompts = point_prompts(workload, point, warm + workload.requests, seed)
        self.warmup_prompts, self.prompts = prompts[:warm], prompts[warm:]

    def request(self, prompt: str) -> BenchRequest:
        p = self.point
        return BenchRequest(
            target=p.target,
            prompt=prompt,
            max_new_tokens=p.output_tokens,
            min_new_tokens=p.output_tokens if self.w.pin_output else None,
            cache=p.cache,
        )

    async def warm_up(self) -> None:
        """The warm-up requests, ``concurrency`` at a time; not measured."""
        slots = asyncio.Semaphore(self.point.concurrency)

        async def one(prompt: str) -> None:
            async with slots:
                await _one(self.send, self.request(prompt), self.clock(), self.clock)

        await asyncio.gather(*(one(p) for p in self.warmup_prompts))

    def _record(self, sample: Sample, samples: list[Sample]) -> None:
        samples.append(sample)
        self.meter.done += 1
        self.meter.tokens += sample.completion_tokens

    async def closed(self, deadline: float | None) -> list[Sample]:
        """``concurrency`` workers over the prompts, until done or ``deadline``."""
        samples: list[Sample] = []
        queue = iter(self.prompts)

        async def worker() -> None:
            for prompt in queue:
                if deadline is not None and self.clock() >= deadline:
                    return
                now = self.clock()
                self._record(await _one(self.send, self.request(prompt), now, self.clock), samples)

        await asyncio.gather(*(worker() for _ in range(self.point.concurrency)))
        return samples

    async def open(self, deadline: float | None) -> list[Sample]:
        """Each request sent at its scheduled time (at most ``concurrency`` in flight)."""
        offsets = arrival_offsets(
            len(self.prompts), self.point.rate, self.w.arrival, self.w.seed + self.index
        )
        slots = asyncio.Semaphore(self.point.concurrency)
        samples: list[Sample] = []
        start = self.clock()

        async def one(prompt: str, due: float) -> None:
            async with slots:  # waiting here counts: latency runs from ``due``
                self._record(await _one(self.send, self.request(prompt), due, self.clock), samples)

        tasks: list[asyncio.Task[None]] = []
        try:
            for prompt, offset in zip(self.prompts, offsets, strict=True):
                due = start + offset
                if deadline is not None and due >= deadline:
                    break
                delay = due - self.clock()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.ensure_future(one(prompt, due)))
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
        return samples


async def _report_progress(
    run: _PointRun, points_total: int, started: float, progress: Progress
) -> None:
    """Progress every :data:`PROGRESS_EVERY_S` while the point runs (cancelled at its end)."""
    point_start = run.clock()
    while True:
        await asyncio.sleep(PROGRESS_EVERY_S)
        elapsed = max(1e-9, run.clock() - point_start)
        progress(
            BenchmarkProgress(
                point=run.index + 1,
                points=points_total,
                done=run.meter.done,
                total=len(run.prompts),
                requests_per_s=run.meter.done / elapsed,
                output_tokens_per_s=run.meter.tokens / elapsed,
                elapsed_s=run.clock() - started,
                message=run.point.target,
            )
        )


async def run_workload(
    workload: Workload,
    send: Send,
    *,
    progress: Progress | None = None,
    set_batch_size: Callable[[str, int], Awaitable[None]] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> BenchmarkReport:
    """Measure every point of ``workload``; the report (recommendation included when a
    latency target was given). Cancelling the calling task cancels every request."""
    grid = points(workload)
    started = clock()
    reports: list[PointReport] = []
    for index, point in enumerate(grid):
        if point.batch_size and set_batch_size is not None:
            await set_batch_size(point.target, point.batch_size)
        run = _PointRun(workload, point, index, send, clock)
        ticker = (
            asyncio.ensure_future(_report_progress(run, len(grid), started, progress))
            if progress is not None
            else None
        )
        try:
            await run.warm_up()
            run.meter = _Meter()
            first = clock()
            deadline = first + workload.duration_s if workload.duration_s else None
            if point.rate:
                samples = await run.open(deadline)
            else:
                samples = await run.closed(deadline)
        finally:
            if ticker is not None:
                ticker.cancel()
        report = summarize(point, samples, workload.slo, target_rate=point.rate)
        reports.append(report)
        if progress is not None:
            progress(
                BenchmarkProgress(
                    point=index + 1,
                    points=len(grid),
                    done=report.requests,
                    total=len(run.prompts),
                    requests_per_s=report.requests_per_s,
                    output_tokens_per_s=report.output_tokens_per_s,
                    elapsed_s=clock() - started,
                    message=f"{point.target}: point done",
                )
            )
    target = workload.latency_target_p99_ms
    return BenchmarkReport(
        points=tuple(reports),
        duration_s=clock() - started,
        recommendation=recommend(reports, target) if target else None,
    )
