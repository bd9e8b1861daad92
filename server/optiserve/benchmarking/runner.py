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
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

from optiserve.benchmarking.prompts import point_prompts
from optiserve.benchmarking.schedule import arrival_offsets
from optiserve.benchmarking.stats import recommend, summarize
from optiserve.domain.benchmark import (
    Arrival,
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
#: Sets a target's scheduler batch size (0: back to the configured one).
SetBatchSize = Callable[[str, int], Awaitable[None]]


def points(w: Workload) -> list[Point]:
    """Every combination of the workload's lists, in a fixed order: target, cache, batch
    size, input length, output length, then concurrency and rate. With inline prompts the
    input length is 0 (the prompts' own); with rates every point is open loop (rate > 0,
    concurrency capping the requests in flight)."""
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
    """The gRPC status name of a failed request: the exception's own ``status`` (or
    ``code``) string when it has one (a client library's errors), a domain error's
    status code, DEADLINE_EXCEEDED for a timeout, else UNKNOWN."""
    for attribute in ("status", "code"):
        status = getattr(exc, attribute, None)
        if isinstance(status, str) and status:
            return status
    if isinstance(exc, OptiserveError):
        return status_code_name(exc)
    if isinstance(exc, TimeoutError):
        return "DEADLINE_EXCEEDED"
    return "UNKNOWN"


#: Seconds in-flight requests get to finish their cleanup once a run is cancelled.
CANCEL_GRACE_S = 0.5


class _Meter:
    """Requests done and tokens produced so far in a point's phase, for progress."""

    def __init__(self, start: float, phase: str) -> None:
        self.start = start
        self.phase = phase
        self.done = 0
        self.tokens = 0


async def _one(
    send: Send, request: BenchRequest, scheduled: float, clock: Callable[[], float]
) -> Sample:
    """Send ``request`` and measure it; a failure becomes its status, never an exception
    (cancellation excepted: it propagates, and the stream is closed)."""
    sent = clock()
    chunks: list[float] = []
    first: float | None = None
    outcome: BenchOutcome | None = None
    status = "OK"
    stream: AsyncIterator[str | BenchOutcome] | None = None
    try:
        stream = send(request)
        async for item in stream:
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
    finally:
        close = getattr(stream, "aclose", None)  # an async generator's; None otherwise
        if close is not None:
            await close()
    done = clock()
    if status == "OK" and outcome is None:
        status = "UNKNOWN"  # the stream ended without its outcome
    o = outcome or BenchOutcome(0, 0, 0, 0.0, 0.0, "")
    return Sample(
        scheduled_s=scheduled,
        sent_s=sent,
        first_text_s=first,
        done_s=done,
        chunk_s=tuple(chunks),
        status=status,
        prompt_tokens=o.prompt_tokens,
        completion_tokens=o.completion_tokens,
        cached_tokens=o.cached_tokens,
        cost_usd=o.cost_usd,
        cost_saved_usd=o.cost_saved_usd,
        cache_layer=o.cache_layer,
    )


async def _cancel_all(tasks: Sequence[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and give them :data:`CANCEL_GRACE_S` to close their streams."""
    pending = [t for t in tasks if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=CANCEL_GRACE_S)


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
        self.meter = _Meter(clock(), "warm-up")
        self.seed = workload.seed * 1_000_003 + index
        warm = workload.warmup_requests
        prompts = point_prompts(workload, point, warm + workload.requests, self.seed)
        self.warmup_prompts, self.prompts = prompts[:warm], prompts[warm:]

    def request(self, prompt: str) -> BenchRequest:
        """The request of ``prompt`` at this point."""
        p = self.point
        return BenchRequest(
            target=p.target,
            prompt=prompt,
            max_new_tokens=p.output_tokens,
            min_new_tokens=p.output_tokens if self.w.pin_output else None,
            cache=p.cache,
        )

    async def _measure(self, prompt: str, scheduled: float, samples: list[Sample]) -> None:
        sample = await _one(self.send, self.request(prompt), scheduled, self.clock)
        samples.append(sample)
        self.meter.done += 1
        self.meter.tokens += sample.completion_tokens

    async def warm_up(self) -> None:
        """The warm-up requests, at most ``concurrency`` at a time; not measured."""
        if not self.warmup_prompts:
            return
        slots = asyncio.Semaphore(self.point.concurrency)

        async def one(prompt: str) -> None:
            async with slots:
                await _one(self.send, self.request(prompt), self.clock(), self.clock)

        await asyncio.gather(*(one(p) for p in self.warmup_prompts))

    async def closed(self, deadline: float | None) -> list[Sample]:
        """``concurrency`` workers over the prompts, until done or ``deadline``: each
        sends its next request when its last ends (scheduled = sent)."""
        samples: list[Sample] = []
        queue = iter(self.prompts)

        async def worker() -> None:
            for prompt in queue:
                now = self.clock()
                if deadline is not None and now >= deadline:
                    return
                await self._measure(prompt, now, samples)

        await asyncio.gather(*(worker() for _ in range(self.point.concurrency)))
        return samples

    async def open(self, deadline: float | None) -> list[Sample]:
        """Each request due at its scheduled time whatever the others do, at most
        ``concurrency`` in flight; latency counts from the due time, so waiting for a slot
        (or for a late event loop) is measured, not hidden."""
        offsets = arrival_offsets(len(self.prompts), self.point.rate, self.w.arrival, self.seed)
        slots = asyncio.Semaphore(self.point.concurrency)
        samples: list[Sample] = []
        start = self.clock()

        async def one(prompt: str, due: float) -> None:
            async with slots:
                await self._measure(prompt, due, samples)

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
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            await _cancel_all(tasks)
        return samples


def _progress_of(run: _PointRun, points_total: int, started: float) -> BenchmarkProgress:
    """Where ``run`` is now."""
    now = run.clock()
    elapsed = max(1e-9, now - run.meter.start)
    return BenchmarkProgress(
        point=run.index + 1,
        points=points_total,
        done=run.meter.done,
        total=len(run.prompts),
        requests_per_s=run.meter.done / elapsed,
        output_tokens_per_s=run.meter.tokens / elapsed,
        elapsed_s=now - started,
        message=f"{run.point.target}: {run.meter.phase}",
    )


async def _tick(run: _PointRun, points_total: int, started: float, progress: Progress) -> None:
    """Progress every :data:`PROGRESS_EVERY_S` while a point runs (cancelled at its end)."""
    while True:
        await asyncio.sleep(PROGRESS_EVERY_S)
        progress(_progress_of(run, points_total, started))


async def _measure_point(
    run: _PointRun, points_total: int, started: float, progress: Progress | None
) -> list[Sample]:
    """Warm up, then the measured requests of ``run``'s point (progress while it runs)."""
    ticker = (
        asyncio.ensure_future(_tick(run, points_total, started, progress))
        if progress is not None
        else None
    )
    try:
        await run.warm_up()
        run.meter = _Meter(run.clock(), "measuring")
        duration = run.w.duration_s
        deadline = run.meter.start + duration if duration > 0 else None
        if run.point.rate > 0:
            return await run.open(deadline)
        return await run.closed(deadline)
    finally:
        if ticker is not None:
            ticker.cancel()


async def run_workload(
    workload: Workload,
    send: Send,
    *,
    progress: Progress | None = None,
    set_batch_size: SetBatchSize | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> BenchmarkReport:
    """Measure every point of ``workload`` in :func:`points` order: the report, with a
    recommendation when ``latency_target_p99_ms`` is set.

    ``progress`` is called every :data:`PROGRESS_EVERY_S` and at each point's end.
    ``set_batch_size(target, size)`` is called before a point with a batch size, and with
    0 (back to the configured size) before a point without one whose target an earlier
    point changed. Cancelling the calling task cancels every request in flight.
    """
    if workload.rates and workload.arrival is Arrival.CLOSED:
        raise ValueError("rates need an open-loop arrival (POISSON or CONSTANT)")
    grid = points(workload)
    started = clock()
    reports: list[PointReport] = []
    resized: set[str] = set()
    for index, point in enumerate(grid):
        if set_batch_size is not None:
            if point.batch_size > 0:
                await set_batch_size(point.target, point.batch_size)
                resized.add(point.target)
            elif point.target in resized:
                await set_batch_size(point.target, 0)
                resized.discard(point.target)
        run = _PointRun(workload, point, index, send, clock)
        samples = await _measure_point(run, len(grid), started, progress)
        report = summarize(
            point, samples, workload.slo, target_rate=point.rate, pinned=workload.pin_output
        )
        reports.append(report)
        if progress is not None:
            done = _progress_of(run, len(grid), started)
            progress(
                replace(
                    done,
                    requests_per_s=report.requests_per_s,
                    output_tokens_per_s=report.output_tokens_per_s,
                    message=f"{point.target}: point {index + 1} of {len(grid)} done",
                )
            )
    target = workload.latency_target_p99_ms
    return BenchmarkReport(
        points=tuple(reports),
        duration_s=clock() - started,
        recommendation=recommend(reports, target) if target > 0 else None,
    )
