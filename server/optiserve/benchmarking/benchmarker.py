"""The Benchmark verb inside the server: a workload checked against the configured caps,
then run against the server's own pipeline, with progress, until its report.

Cancelling the RPC cancels the run: in-flight requests are cancelled like any client's
(their sequences leave the batch at the next step) and batch sizes are restored.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

from optiserve.benchmarking.checks import check_workload
from optiserve.benchmarking.config import BenchmarkConfig
from optiserve.benchmarking.pipeline import PipelineTarget
from optiserve.benchmarking.runner import run_workload
from optiserve.domain.benchmark import (
    BenchmarkProgress,
    BenchmarkReport,
    Recommendation,
    Workload,
)
from optiserve.domain.errors import FailedPrecondition, InvalidRequest, ResourceExhausted
from optiserve.models.catalogue import ModelCatalogue
from optiserve.service import Service

BenchmarkEvent = BenchmarkProgress | BenchmarkReport


class Benchmarker:
    """Runs Benchmark requests against ``service`` (see the module docstring)."""

    def __init__(
        self, config: BenchmarkConfig, service: Service, catalogue: ModelCatalogue
    ) -> None:
        self._config = config
        self._service = service
        self._catalogue = catalogue
        self._running = 0

    def check(self, w: Workload) -> None:
        """:func:`check_workload`, then every target must be served here;
        FAILED_PRECONDITION when switched off."""
        if not self._config.enabled:
            raise FailedPrecondition(
                "Benchmark is switched off on this server (benchmark.enabled = false)"
            )
        check_workload(w, self._config)
        served = {m.name for m in self._service.list_models()}
        for target in w.targets:
            if target not in served:
                raise InvalidRequest(
                    f"models: unknown model or route {target!r}; this server serves: "
                    f"{', '.join(sorted(served))}"
                )

    async def run(self, workload: Workload, tenant: str) -> AsyncIterator[BenchmarkEvent]:
        """Progress events, then the report; closing the iterator cancels the run."""
        self.check(workload)
        if self._running >= self._config.max_running:
            raise ResourceExhausted(
                f"{self._running} benchmark(s) running, the most this server runs at once "
                f"(benchmark.max_running = {self._config.max_running}); retry when done"
            )
        self._running += 1
        target = PipelineTarget(self._service, self._catalogue, tenant)
        queue: asyncio.Queue[BenchmarkProgress] = asyncio.Queue()
        run = asyncio.ensure_future(
            run_workload(
                workload,
                target.send,
                progress=queue.put_nowait,
                set_batch_size=target.set_batch_size,
            )
        )
        try:
            while not run.done() or not queue.empty():
                get = asyncio.ensure_future(queue.get())
                waiters: set[asyncio.Future[object]] = {get, run}  # type: ignore[arg-type]
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                if get.done():
                    yield get.result()
                else:
                    get.cancel()
            yield _with_recommendation(run.result(), workload)
        finally:
            if not run.done():
                run.cancel()
                await asyncio.gather(run, return_exceptions=True)
            target.restore()
            self._running -= 1


def _with_recommendation(report: BenchmarkReport, workload: Workload) -> BenchmarkReport:
    """``report``, saying so when a latency target was given and no point met it."""
    target = workload.latency_target_p99_ms
    if not target or report.recommendation is not None:
        return report
    reason = f"no point had p99 latency within {target:g} ms without errors"
    return replace(report, recommendation=Recommendation(point=-1, reason=reason))
