"""The OptiServe servicer: converts, delegates to the pipeline, converts back. Nothing else."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import grpc

from optiserve.engine.pipeline import Pipeline
from optiserve.engine.types import GenerateRequest, TextDelta
from optiserve.errors import InvalidRequest, Unimplemented
from optiserve.rpc import convert
from optiserve.rpc.interceptors import current_request_id
from optiserve.v1 import optiserve_pb2 as pb
from optiserve.v1 import optiserve_pb2_grpc as pb_grpc

API_KEY_HEADER = "x-api-key"


def tenant_of(context: grpc.aio.ServicerContext) -> str:
    """The tenant a call is accounted to: a hash of its API key, or "anonymous"."""
    for key, value in context.invocation_metadata() or ():
        if key == API_KEY_HEADER and value:
            return "key-" + hashlib.sha256(str(value).encode()).hexdigest()[:16]
    return "anonymous"


class OptiServeServicer(pb_grpc.OptiServeServicer):  # type: ignore[misc]
    """gRPC face of the :class:`Pipeline`."""

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    def _request(
        self, msg: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> GenerateRequest:
        request_id = msg.request_id or current_request_id.get()
        try:
            return convert.request_from_proto(
                msg, request_id, tenant_of(context), context.time_remaining()
            )
        except convert.UnknownEnumValue as exc:
            raise InvalidRequest(str(exc)) from exc

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> pb.GenerateResponse:
        """Unary generation."""
        result = await self._pipeline.generate(self._request(request, context))
        return convert.result_to_proto(result)

    async def StreamGenerate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateChunk]:
        """Streaming generation: deltas, then a chunk with the summary."""
        domain = self._request(request, context)
        events = self._pipeline.stream(domain)
        try:
            async for event in events:
                if isinstance(event, TextDelta):
                    yield pb.GenerateChunk(request_id=domain.request_id, text_delta=event.text)
                else:
                    yield pb.GenerateChunk(
                        request_id=domain.request_id,
                        summary=convert.summary_to_proto(event.summary),
                    )
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    async def Quantize(
        self, request: pb.QuantizeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.QuantizeEvent]:
        """Not served yet."""
        raise Unimplemented("Quantize is not implemented in this build yet; see the project issues")
        yield pb.QuantizeEvent()  # pragma: no cover - makes this an async generator

    async def Benchmark(
        self, request: pb.BenchmarkRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.BenchmarkEvent]:
        """Not served yet."""
        raise Unimplemented(
            "Benchmark is not implemented in this build yet; run benchmarks/ scripts instead"
        )
        yield pb.BenchmarkEvent()  # pragma: no cover

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        """Every model and route."""
        models = self._pipeline.catalogue.models()
        return pb.ListModelsResponse(models=[convert.model_info_to_proto(m) for m in models])

    async def GetUsage(
        self, request: pb.GetUsageRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetUsageResponse:
        """Measured usage since start."""
        rows, total = self._pipeline.usage.snapshot(request.model)
        cache = self._pipeline.cache
        return pb.GetUsageResponse(
            models=[convert.usage_to_proto(r) for r in rows],
            total=convert.usage_to_proto(total),
            uptime_s=self._pipeline.usage.uptime_s(),
            cache=convert.cache_stats_to_proto(cache.stats() if cache else None),
        )
