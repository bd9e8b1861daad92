"""``optiserve bench``: run a Benchmark inside a server (default), or drive the same workload
from this process over the network (``--client-side``, like perf_analyzer: serialization
and network costs included), then print the table, the comparisons and the
recommendation, and write JSON and PNG plots when asked.

Both modes build the same ``BenchmarkRequest`` and measure with the same code
(:mod:`optiserve.benchmarking`): the server runs it against its own pipeline, the client
against ``StreamGenerate`` calls.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from optiserve.cli import client_options
from optiserve_client.v1 import optiserve_pb2 as pb

_ARRIVALS = {
    "closed": pb.ARRIVAL_PROCESS_CLOSED,
    "poisson": pb.ARRIVAL_PROCESS_POISSON,
    "constant": pb.ARRIVAL_PROCESS_CONSTANT,
}
_DISTRIBUTIONS = {
    "fixed": pb.INPUT_DISTRIBUTION_FIXED,
    "uniform": pb.INPUT_DISTRIBUTION_UNIFORM,
    "normal": pb.INPUT_DISTRIBUTION_NORMAL,
}


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def add_bench_args(parser: argparse.ArgumentParser) -> None:
    """The ``bench`` subcommand's options (lists are comma-separated: one point each)."""
    parser.add_argument(
        "--model", action="append", default=[], help="model or route to measure (repeat)"
    )
    parser.add_argument("--prompt-lengths", type=_ints, default=[], help="e.g. 64,256")
    parser.add_argument("--prompts-file", default="", help="prompts, one per line")
    parser.add_argument("--input-distribution", choices=sorted(_DISTRIBUTIONS), default="fixed")
    parser.add_argument("--input-spread", type=float, default=0.0)
    parser.add_argument("--max-new-tokens", type=_ints, default=[], help="e.g. 16,64")
    parser.add_argument("--concurrency", type=_ints, default=[], help="e.g. 1,4,16")
    parser.add_argument("--rate", type=_floats, default=[], help="open-loop requests/s")
    parser.add_argument("--arrival", choices=sorted(_ARRIVALS), default="")
    parser.add_argument("--batch-sizes", type=_ints, default=[], help="local models, e.g. 1,8")
    parser.add_argument("--requests", type=int, default=0, help="per point (default 32)")
    parser.add_argument("--duration", type=float, default=0.0, help="seconds per point")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up requests (2)")
    parser.add_argument(
        "--cache", choices=["off", "on", "both"], default="off", help="both: compare"
    )
    parser.add_argument("--repeat-fraction", type=float, default=0.0)
    parser.add_argument(
        "--pin-output", action="store_true", help="every request makes max_new_tokens"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--slo-ttft-ms", type=float, default=0.0)
    parser.add_argument("--slo-tpot-ms", type=float, default=0.0)
    parser.add_argument("--slo-e2e-ms", type=float, default=0.0)
    parser.add_argument(
        "--latency-target-ms", type=float, default=0.0, help="recommend within this p99"
    )
    parser.add_argument(
        "--client-side", action="store_true", help="drive the load from this process"
    )
    parser.add_argument("--json", dest="json_file", default="", help="write the report here")
    parser.add_argument("--plot", default="", help="write PNG plots into this directory")


def build_benchmark_request(args: argparse.Namespace) -> pb.BenchmarkRequest:
    """The wire request the options describe."""
    prompts: list[str] = []
    if args.prompts_file:
        text = Path(args.prompts_file).read_text(encoding="utf-8")
        prompts = [line for line in text.splitlines() if line.strip()]
    arrival = args.arrival or ("poisson" if args.rate else "closed")
    request = pb.BenchmarkRequest(
        models=args.model,
        prompt_lengths=args.prompt_lengths,
        prompts=prompts,
        input_distribution=_DISTRIBUTIONS[args.input_distribution],
        input_spread=args.input_spread,
        max_new_tokens=args.max_new_tokens,
        concurrency=args.concurrency,
        arrival_rates=args.rate,
        arrival=_ARRIVALS[arrival],
        batch_sizes=args.batch_sizes,
        requests_per_point=args.requests,
        duration_s=args.duration,
        cache={"off": [False], "on": [True], "both": [False, True]}[args.cache],
        repeat_fraction=args.repeat_fraction,
        pin_output_length=args.pin_output,
        seed=args.seed,
        slo_ttft_ms=args.slo_ttft_ms,
        slo_tpot_ms=args.slo_tpot_ms,
        slo_e2e_ms=args.slo_e2e_ms,
        latency_target_p99_ms=args.latency_target_ms,
    )
    if args.warmup is not None:
        request.warmup_requests = args.warmup
    return request


class StatusError(Exception):
    """A client-side request that failed: ``status`` is its gRPC status name."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class ClientTarget:
    """Benchmark requests as StreamGenerate calls of an :class:`AsyncClient`."""

    def __init__(self, client: Any) -> None:
        self._client = client

    async def send(self, r: Any) -> AsyncIterator[Any]:
        """Text chunks, then the outcome (the server's usage and cost)."""
        from optiserve.benchmarking.runner import BenchOutcome
        from optiserve_client import OptiserveClientError

        stream = self._client.stream(
            r.prompt,
            model=r.target,
            max_new_tokens=r.max_new_tokens,
            min_new_tokens=r.min_new_tokens,
            cache_mode="default" if r.cache else "bypass",
        )
        try:
            async for chunk in stream:
                if chunk.text:
                    yield chunk.text
                done = chunk.completion
                if done is not None:
                    hits = [
                        str(c.get("layer", "")) for c in done.cache if c.get("outcome") == "hit"
                    ]
                    yield BenchOutcome(
                        prompt_tokens=done.usage.prompt_tokens,
                        completion_tokens=done.usage.completion_tokens,
                        cached_tokens=done.usage.cached_tokens,
                        cost_usd=done.cost_usd,
                        cost_saved_usd=done.cost_saved_usd,
                        cache_layer=hits[0] if hits else "",
                    )
        except OptiserveClientError as exc:
            raise StatusError(exc.code, exc.message) from None
        finally:
            await stream.aclose()


def _progress_printer() -> Any:
    from optiserve.bench_report import format_progress

    tty = sys.stderr.isatty()

    def show(p: pb.Progress) -> None:
        line = format_progress(p)
        print(f"\r{line}" if tty else line.rstrip(), end="" if tty else "\n", file=sys.stderr)

    return show


def _server_side(args: argparse.Namespace, request: pb.BenchmarkRequest) -> pb.BenchmarkReport:
    from optiserve_client import Client

    show = _progress_printer()
    report: pb.BenchmarkReport | None = None
    with Client(args.target, **client_options(args)) as client:
        for event in client.benchmark(request):
            if event.HasField("progress"):
                show(event.progress)
            else:
                report = event.report
    if report is None:
        raise RuntimeError("the server ended the benchmark without a report")
    return report


async def _client_side(
    args: argparse.Namespace, request: pb.BenchmarkRequest
) -> pb.BenchmarkReport:
    from optiserve.benchmarking.checks import check_workload
    from optiserve.benchmarking.config import BenchmarkConfig
    from optiserve.benchmarking.runner import run_workload
    from optiserve.rpc.convert_benchmark import benchmark_event_to_proto, workload_from_proto
    from optiserve_client import AsyncClient

    workload = workload_from_proto(request)
    check_workload(workload, BenchmarkConfig())
    show = _progress_printer()

    def progress(p: Any) -> None:
        show(benchmark_event_to_proto(p).progress)

    async with AsyncClient(args.target, **client_options(args)) as client:
        report = await run_workload(workload, ClientTarget(client).send, progress=progress)
    return benchmark_event_to_proto(report).report


def run_bench(args: argparse.Namespace) -> int:
    """Run the benchmark the options describe; print and write its report."""
    from optiserve.bench_report import format_comparison, format_table, write_json, write_plots
    from optiserve.domain.errors import OptiserveError, status_code_name

    request = build_benchmark_request(args)
    try:
        if args.client_side:
            report = asyncio.run(_client_side(args, request))
        else:
            report = _server_side(args, request)
    except OptiserveError as exc:  # the client side's own checks
        print(f"optiserve: {status_code_name(exc)}: {exc.message}", file=sys.stderr)
        return 1
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(format_table(report))
    comparison = format_comparison(report)
    if comparison:
        print()
        print(comparison)
    if args.json_file:
        write_json(report, Path(args.json_file))
        print(f"wrote {args.json_file}", file=sys.stderr)
    if args.plot:
        try:
            paths = write_plots(report, Path(args.plot))
        except ImportError as exc:
            print(
                f"optiserve: --plot needs matplotlib ({exc}); pip install matplotlib",
                file=sys.stderr,
            )
            return 1
        for path in paths:
            print(f"wrote {path}", file=sys.stderr)
    return 0
