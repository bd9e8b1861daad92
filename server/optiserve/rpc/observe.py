"""Per-call metrics and the access log: the outermost interceptor.

It sees every call to the end, whatever ended it: a response, a domain error turned into
a status by the error interceptor (read back from the context), a client that cancelled
or went away (CANCELLED) or whose deadline passed (DEADLINE_EXCEEDED). Streams end when
their last message has been written, so their latency is the whole stream's.

Metrics, in the app's registry (never the global one):

* ``optiserve_rpc_requests_total{service, method, status}`` (counter): calls ended, by
  gRPC status name;
* ``optiserve_rpc_duration_seconds{service, method, status}`` (histogram): call start to
  end;
* ``optiserve_rpc_in_flight{service, method}`` (gauge): calls in progress.

Every OptiServe call (not health or reflection) writes one access-log line at INFO on the
``optiserve.access`` logger: request id, method, tenant, status, latency, and the model,
provider, route, cache outcome and finish reason of its answer; the error message when it
failed. The prompt is in it only when ``log_prompts`` is on (``logging.log_prompts``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from optiserve.models.local.metrics import LATENCY_BUCKETS
from optiserve.rpc.call_record import CallRecord, current_call
from optiserve.rpc.handlers import Call, wrap_handler
from optiserve.rpc.limits import COUNTED_PREFIX
from optiserve.rpc.request_ids import current_request_id
from optiserve.rpc.servicer import tenant_of
from optiserve_client.v1 import optiserve_pb2 as pb

access_log = logging.getLogger("optiserve.access")

#: Seconds: from a cache hit (~1 ms) to a Quantize or Benchmark run (minutes).
_BUCKETS = (*LATENCY_BUCKETS, 60.0, 300.0, 1800.0)
#: Characters of a logged prompt (each message's content alike), when prompts are logged.
PROMPT_LOG_CHARS = 4096
_CODES = {code.value[0]: code.name for code in grpc.StatusCode}


class RpcMetrics:
    """The per-call instruments (see the module docstring), registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["service", "method", "status"]
        self.requests = Counter(
            "optiserve_rpc_requests",
            "gRPC calls ended, by method and status.",
            labels,
            registry=registry,
        )
        self.duration = Histogram(
            "optiserve_rpc_duration_seconds",
            "gRPC call latency (a stream's until its end), by method and status.",
            labels,
            buckets=_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "optiserve_rpc_in_flight",
            "gRPC calls in progress.",
            ["service", "method"],
            registry=registry,
        )


def _split(full_method: str) -> tuple[str, str]:
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service, method


def _status_name(code: Any) -> str | None:
    if code is None:
        return None
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    if isinstance(code, int):
        return str(_CODES.get(code, "UNKNOWN"))
    return str(getattr(code, "name", code))


def call_status(context: grpc.aio.ServicerContext, error: BaseException | None) -> str:
    """The status name a call ended with: ``error`` is what ended its handler (None when
    it returned)."""
    if isinstance(error, asyncio.CancelledError):
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return "DEADLINE_EXCEEDED"
        return "CANCELLED"
    code = _status_name(context.code())
    if error is None:
        return code or "OK"
    return code if code and code != "OK" else "UNKNOWN"


def _prompt_fields(request: Any) -> dict[str, Any]:
    if not isinstance(request, pb.GenerateRequest):
        return {}
    fields: dict[str, Any] = {}
    if request.prompt:
        fields["prompt"] = request.prompt[:PROMPT_LOG_CHARS]
    if request.messages:
        fields["messages"] = [
            {"role": m.role, "content": m.content[:PROMPT_LOG_CHARS]} for m in request.messages
        ]
    return fields


class ObserveInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Counts and times every call; writes the access log of every OptiServe call."""

    def __init__(self, metrics: RpcMetrics, *, log_prompts: bool = False) -> None:
        self.metrics = metrics
        self.log_prompts = log_prompts

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: Any
    ) -> Any:
        """Wrap the handler (every method)."""
        full = details.method
        service, method = _split(full)
        logged = full.startswith(COUNTED_PREFIX)

        def around(call: Call) -> Call:
            async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
                record = CallRecord()
                current_call.set(record)
                in_flight = self.metrics.in_flight.labels(service, method)
                in_flight.inc()
                started = time.perf_counter()
                status = "UNKNOWN"
                try:
                    response = await call(request, context)
                    status = call_status(context, None)
                    return response
                except BaseException as exc:
                    # Not kept past this block: a held exception keeps its traceback's
                    # frames (the servicer's generators) alive until a GC pass.
                    status = call_status(context, exc)
                    raise
                finally:
                    elapsed = time.perf_counter() - started
                    in_flight.dec()
                    self.metrics.requests.labels(service, method, status).inc()
                    self.metrics.duration.labels(service, method, status).observe(elapsed)
                    if logged:
                        self._log(method, request, context, record, status, elapsed)

            return run

        return wrap_handler(await continuation(details), around)

    def _log(
        self,
        method: str,
        request: Any,
        context: grpc.aio.ServicerContext,
        record: CallRecord,
        status: str,
        elapsed_s: float,
    ) -> None:
        latency_ms = round(elapsed_s * 1000.0, 3)
        request_id = current_request_id.get()
        fields: dict[str, Any] = {
            "request_id": request_id,
            "method": method,
            "tenant": tenant_of(context),
            "status": status,
            "latency_ms": latency_ms,
        }
        for name in ("model", "provider", "route", "cache", "finish_reason"):
            value = getattr(record, name)
            if value:
                fields[name] = value
        if status != "OK":
            details = context.details()
            if details:
                fields["error"] = str(details)
        if self.log_prompts:
            fields.update(_prompt_fields(request))
        access_log.info(
            "%s %s %.1f ms request_id=%s", method, status, latency_ms, request_id, extra=fields
        )
