"""The OptiServe servicer: converts, delegates to the service, converts back. Nothing else."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator

import grpc

from optiserve.benchmarking.benchmarker import Benchmarker
from optiserve.domain.errors import InvalidRequest, OptiserveError, Unimplemented
from optiserve.domain.types import GenerateRequest, ResponseSummary, TextDelta
from optiserve.domain.validation import check_name
from optiserve.quantizing import Quantizer
from optiserve.rpc import convert, convert_benchmark
from optiserve.rpc.auth import current_principal, unverified_key
from optiserve.rpc.call_record import note_summary
from optiserve.rpc.request_ids import current_request_id
from optiserve.rpc.trace_header import TRACE_KEY, trace_header
from optiserve.service import Service
from optiserve_client.v1 import optiserve_pb2 as pb
from optiserve_client.v1 import optiserve_pb2_grpc as pb_grpc


def tenant_of(context: grpc.aio.ServicerContext) -> str:
    """The tenant a call is accounted to: its key's tenant when the key is known
    (rpc/auth.py), else a hash of the key it sent (when auth is not required), else
    "anonymous"."""
    principal = current_principal.get()
    if principal is not None:
        return principal.tenant
    key = unverified_key(context.invocation_metadata())
    if key:
        return "key-" + hashlib.sha256(key.encode()).hexdigest()[:16]
    return "anonymous"


def _answered(context: grpc.aio.ServicerContext, summary: ResponseSummary) -> None:
    """Note the answer for the access log and send its trace in the trailing metadata
    (rpc/trace_header.py), after what is already there."""
    note_summary(summary)
    kept = tuple((k, v) for k, v in (context.trailing_metadata() or ()) if k != TRACE_KEY)
    context.set_trailing_metadata((*kept, (TRACE_KEY, trace_header(summary))))


class OptiServeServicer(pb_grpc.OptiServeServicer):  # type: ignore[misc]
    """gRPC face of the :class:`~optiserve.service.Service`."""

    def __init__(
        self,
        service: Service,
        quantizer: Quantizer | None = None,
        benchmarker: Benchmarker | None = None,
    ) -> None:
        self._service = service
        self._quantizer = quantizer
        self._benchmarker = benchmarker

    def _request(
        self, msg: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> GenerateRequest:
        # The interceptor chose the id (request_ids.py); the message's own is the fallback
        # for a servicer run without it.
        request_id = current_request_id.get() or msg.request_id
        try:
            return convert.request_from_proto(
                msg, request_id, tenant_of(context), context.time_remaining()
            )
        except convert.UnknownEnumValue as exc:
            raise InvalidRequest(str(exc)) from exc

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> pb.GenerateResponse:
        """Unary generation; the decision trace also in the trailing metadata."""
        result = await self._service.generate(self._request(request, context))
        _answered(context, result.summary)
        return convert.result_to_proto(result)

    async def StreamGenerate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateChunk]:
        """Streaming generation: deltas, then a chunk with the summary. The request id is
        sent on the first and the last chunk only. The decision trace also goes in the
        trailing metadata."""
        domain = self._request(request, context)
        events = self._service.stream(domain)
        request_id = domain.request_id
        try:
            async for event in events:
                if isinstance(event, TextDelta):
                    yield pb.GenerateChunk(request_id=request_id, text_delta=event.text)
                    request_id = ""
                else:
                    _answered(context, event.summary)
                    yield pb.GenerateChunk(
                        request_id=domain.request_id,
                        summary=convert.summary_to_proto(event.summary),
                    )
        except OptiserveError as exc:  # thrown in by the writer (the client stopped reading)
            with contextlib.suppress(Exception):
                await events.athrow(exc)  # type: ignore[attr-defined]
            raise
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    async def Quantize(
        self, request: pb.QuantizeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.QuantizeEvent]:
        """Build, measure and (when asked) serve a variant: progress, then the report.
        A cancelled call cancels the job (its partial output is removed)."""
        if self._quantizer is None:
            raise Unimplemented("this server was started without Quantize")
        events = self._quantizer.run(convert.quantize_request_from_proto(request))
        try:
            async for event in events:
                yield convert.quantize_event_to_proto(event)
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    async def Benchmark(
        self, request: pb.BenchmarkRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.BenchmarkEvent]:
        """Measure a workload against this server's own pipeline: progress, then the
        report. A cancelled call stops the run (its requests are cancelled)."""
        if self._benchmarker is None:
            raise Unimplemented("this server was started without Benchmark")
        workload = convert_benchmark.workload_from_proto(request)
        events = self._benchmarker.run(workload, tenant_of(context))
        try:
            async for event in events:
                yield convert_benchmark.benchmark_event_to_proto(event)
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        """Every model and route."""
        models = self._service.list_models()
        return pb.ListModelsResponse(models=[convert.model_info_to_proto(m) for m in models])

    async def GetUsage(
        self, request: pb.GetUsageRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetUsageResponse:
        """Measured usage since start."""
        check_name("model", request.model)
        return convert.usage_report_to_proto(self._service.usage(request.model))
