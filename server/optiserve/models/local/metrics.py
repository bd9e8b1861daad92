"""Prometheus metrics of the continuous-batching scheduler.

Metrics live in a :class:`prometheus_client.CollectorRegistry` the caller passes in (never
the global one), labelled by model, so several schedulers share one registry. The app
serves the registry on the configured metrics port; ``prometheus_client.generate_latest``
renders it.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: Seconds, for every latency histogram (the RPC histogram extends it to minutes).
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256)


class SchedulerMetrics:
    """The scheduler's instruments, registered in ``registry``.

    * ``optiserve_scheduler_queue_depth`` (gauge): requests waiting for admission;
    * ``optiserve_scheduler_running`` (gauge): sequences in the running batch;
    * ``optiserve_scheduler_batch_size`` (histogram): sequences per decode step;
    * ``optiserve_scheduler_tokens_generated_total`` (counter): generated tokens;
      its ``rate()`` is tokens/s;
    * ``optiserve_scheduler_decode_tokens_per_second`` (gauge): throughput of the last step;
    * ``optiserve_scheduler_time_to_first_token_seconds`` (histogram): submit to first token;
    * ``optiserve_scheduler_inter_token_latency_seconds`` (histogram): between tokens;
    * ``optiserve_scheduler_queue_wait_seconds`` (histogram): submit to admission;
    * ``optiserve_scheduler_step_failures_total`` (counter): steps where the model raised
      (a retried step counts each time);
    * ``optiserve_scheduler_sequence_failures_total`` (counter): sequences failed alone
      (their sampling, detokenizing or stop matching raised).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        labels = ["model"]
        prefix = "optiserve_scheduler_"
        self.queue_depth = Gauge(
            prefix + "queue_depth", "Requests waiting for admission.", labels, registry=registry
        )
        self.running = Gauge(
            prefix + "running", "Sequences in the running batch.", labels, registry=registry
        )
        self.batch_size = Histogram(
            prefix + "batch_size",
            "Sequences per decode step.",
            labels,
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.tokens_generated = Counter(
            prefix + "tokens_generated", "Generated tokens.", labels, registry=registry
        )
        self.tokens_per_second = Gauge(
            prefix + "decode_tokens_per_second",
            "Tokens per second of the last decode step.",
            labels,
            registry=registry,
        )
        self.ttft = Histogram(
            prefix + "time_to_first_token_seconds",
            "Submit to first token.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.inter_token = Histogram(
            prefix + "inter_token_latency_seconds",
            "Time between consecutive tokens.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_wait = Histogram(
            prefix + "queue_wait_seconds",
            "Submit to admission into the batch.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.step_failures = Counter(
            prefix + "step_failures",
            "Steps in which the model raised.",
            labels,
            registry=registry,
        )
        self.row_failures = Counter(
            prefix + "sequence_failures",
            "Sequences failed alone by their own per-token work.",
            labels,
            registry=registry,
        )

    def bind(self, model: str) -> BoundMetrics:
        """The instruments with the ``model`` label filled in."""
        return BoundMetrics(self, model)


class BoundMetrics:
    """:class:`SchedulerMetrics` for one model (what a scheduler records into)."""

    def __init__(self, metrics: SchedulerMetrics, model: str) -> None:
        self.queue_depth: Any = metrics.queue_depth.labels(model)
        self.running: Any = metrics.running.labels(model)
        self.batch_size: Any = metrics.batch_size.labels(model)
        self.tokens_generated: Any = metrics.tokens_generated.labels(model)
        self.tokens_per_second: Any = metrics.tokens_per_second.labels(model)
        self.ttft: Any = metrics.ttft.labels(model)
        self.inter_token: Any = metrics.inter_token.labels(model)
        self.queue_wait: Any = metrics.queue_wait.labels(model)
        self.step_failures: Any = metrics.step_failures.labels(model)
        self.row_failures: Any = metrics.row_failures.labels(model)
