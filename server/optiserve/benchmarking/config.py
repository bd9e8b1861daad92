"""Settings of the Benchmark verb (``[benchmark]`` in the configuration file): the most
one request may ask of the server."""

from __future__ import annotations

from dataclasses import dataclass

from optiserve.domain.settings import at_least, check


@dataclass(frozen=True)
class BenchmarkConfig:
    """Caps on a Benchmark request (beyond them: INVALID_ARGUMENT naming the field, or
    RESOURCE_EXHAUSTED for a whole workload over ``max_total_requests``)."""

    #: Serve the Benchmark RPC (False: it answers FAILED_PRECONDITION).
    enabled: bool = True
    max_requests_per_point: int = 10_000
    max_duration_s: float = 600.0
    max_concurrency: int = 256
    max_rate: float = 1_000.0
    max_points: int = 256
    #: Measured plus warm-up requests of the whole workload.
    max_total_requests: int = 100_000
    max_prompts: int = 10_000
    max_new_tokens: int = 4096
    max_prompt_length: int = 32_768
    #: Benchmarks that may run at once (more: RESOURCE_EXHAUSTED).
    max_running: int = 1

    def __post_init__(self) -> None:
        check(
            self,
            {
                "max_requests_per_point": at_least(1),
                "max_duration_s": at_least(1),
                "max_concurrency": at_least(1),
                "max_rate": at_least(0.001),
                "max_points": at_least(1),
                "max_total_requests": at_least(1),
                "max_prompts": at_least(1),
                "max_new_tokens": at_least(1),
                "max_prompt_length": at_least(1),
                "max_running": at_least(1),
            },
        )
