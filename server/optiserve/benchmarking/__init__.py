"""The Benchmark verb: workloads expanded into points and driven by one load generator
(:mod:`.runner`, arrivals from :mod:`.schedule`, prompts from :mod:`.prompts`), measured
with one set of statistics (:mod:`.stats`), against the server's own pipeline
(:mod:`.pipeline`, :class:`.benchmarker.Benchmarker`) or, from ``optiserve bench
--client-side``, against StreamGenerate calls over the network.

Only the measuring core is exported here: it imports nothing but the domain, so importing
this package does not pull in the service.
"""

from optiserve.benchmarking.prompts import point_prompts, synthetic_prompt
from optiserve.benchmarking.runner import (
    BenchOutcome,
    BenchRequest,
    Send,
    points,
    run_workload,
    status_of,
)
from optiserve.benchmarking.schedule import arrival_offsets, prompt_lengths
from optiserve.benchmarking.stats import percentile, percentiles, recommend, summarize

__all__ = [
    "BenchOutcome",
    "BenchRequest",
    "Send",
    "arrival_offsets",
    "percentile",
    "percentiles",
    "point_prompts",
    "points",
    "prompt_lengths",
    "recommend",
    "run_workload",
    "status_of",
    "summarize",
    "synthetic_prompt",
]
