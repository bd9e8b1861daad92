"""Sync and async clients over the generated stubs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from types import TracebackType
from typing import Any

import grpc

from optiserve_client._errors import OptiserveClientError, from_rpc_error
from optiserve_client._health import check_method
from optiserve_client._tls import (
    TLSOptionError,
    channel_credentials,
    server_name_options,
    wants_tls,
)
from optiserve_client._types import Chunk, Completion, Model
from optiserve_client.v1 import optiserve_pb2 as pb
from optiserve_client.v1 import optiserve_pb2_grpc as pb_grpc

_CACHE_MODES = {
    "default": pb.CACHE_MODE_DEFAULT,
    "bypass": pb.CACHE_MODE_BYPASS,
    "refresh": pb.CACHE_MODE_REFRESH,
    "only_if_cached": pb.CACHE_MODE_ONLY_IF_CACHED,
}
_COMPRESSION = {
    "off": pb.COMPRESSION_MODE_OFF,
    "lossless": pb.COMPRESSION_MODE_LOSSLESS,
    "lossy": pb.COMPRESSION_MODE_LOSSY,
}


def build_request(
    prompt: str | None = None,
    *,
    messages: Sequence[tuple[str, str]] | Sequence[dict[str, str]] = (),
    model: str = "",
    max_new_tokens: int | None = None,
    min_new_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    stop: Sequence[str] = (),
    seed: int | None = None,
    cache_mode: str = "default",
    semantic_threshold: float | None = None,
    cache_ttl_s: float | None = None,
    max_cost_usd: float | None = None,
    min_quality: float | None = None,
    compression: str = "off",
    json_schema: str = "",
    request_id: str = "",
) -> pb.GenerateRequest:
    """The wire request for the keyword arguments the client methods take.

    Unset (None) sampling values take the server's defaults for the model.
    ``min_new_tokens``: an end-of-sequence token cannot end the answer before that many
    tokens (0 <= min_new_tokens <= max_new_tokens). ``max_cost_usd`` and ``min_quality``
    bound what a route may choose; ``compression`` is "off", "lossless" or "lossy".
    """
    if compression not in _COMPRESSION:
        raise ValueError(f"compression must be one of {sorted(_COMPRESSION)}, got {compression!r}")
    if cache_mode not in _CACHE_MODES:
        raise ValueError(f"cache_mode must be one of {sorted(_CACHE_MODES)}, got {cache_mode!r}")
    sampling = pb.SamplingParams(stop=list(stop))
    for name, value in (
        ("max_new_tokens", max_new_tokens),
        ("min_new_tokens", min_new_tokens),
        ("temperature", temperature),
        ("top_p", top_p),
        ("top_k", top_k),
        ("seed", seed),
    ):
        if value is not None:
            setattr(sampling, name, value)
    cache = pb.CachePolicy(mode=_CACHE_MODES[cache_mode])
    if semantic_threshold is not None:
        cache.semantic_threshold = semantic_threshold
    if cache_ttl_s is not None:
        cache.ttl_seconds = cache_ttl_s
    budget = pb.Budget()
    if max_cost_usd is not None:
        budget.max_cost_usd = max_cost_usd
    if min_quality is not None:
        budget.min_quality = min_quality
    chat = [
        pb.ChatMessage(role=m["role"], content=m["content"])
        if isinstance(m, dict)
        else pb.ChatMessage(role=m[0], content=m[1])
        for m in messages
    ]
    return pb.GenerateRequest(
        request_id=request_id,
        prompt=prompt or "",
        messages=chat,
        model=model,
        sampling=sampling,
        cache=cache,
        budget=budget,
        response_format=pb.ResponseFormat(json_schema=json_schema),
        compression=_COMPRESSION[compression],
    )


#: Method names -> QuantMethod (the names the server's reports use).
QUANT_METHODS = {
    "fp16": pb.QUANT_METHOD_FP16,
    "bf16": pb.QUANT_METHOD_BF16,
    "int8_dynamic": pb.QUANT_METHOD_INT8,
    "gptq": pb.QUANT_METHOD_GPTQ,
    "int8_weight_only": pb.QUANT_METHOD_INT8_WEIGHT_ONLY,
    "prune_magnitude": pb.QUANT_METHOD_PRUNE_MAGNITUDE,
    "prune_2_4": pb.QUANT_METHOD_PRUNE_2_4,
}


def build_quantize_request(
    model: str,
    method: str,
    *,
    bits: int = 0,
    group_size: int = 0,
    sparsity: float = 0.0,
    calibration_texts: Sequence[str] = (),
    variant_name: str = "",
    serve: bool = False,
    evaluation_text: str = "",
) -> pb.QuantizeRequest:
    """The wire Quantize request; ``method`` is one of :data:`QUANT_METHODS`."""
    if method not in QUANT_METHODS:
        raise ValueError(f"method must be one of {sorted(QUANT_METHODS)}, got {method!r}")
    return pb.QuantizeRequest(
        model=model,
        method=QUANT_METHODS[method],
        bits=bits,
        group_size=group_size,
        sparsity=sparsity,
        calibration_texts=list(calibration_texts),
        variant_name=variant_name,
        serve=serve,
        evaluation_text=evaluation_text,
    )


def _metadata(api_key: str | None) -> tuple[tuple[str, str], ...] | None:
    """The key as ``authorization: Bearer`` metadata (the server also reads ``x-api-key``)."""
    return (("authorization", f"Bearer {api_key}"),) if api_key else None


def _channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


def _security(
    tls: bool,
    ca_file: str | None,
    cert_file: str | None,
    key_file: str | None,
    server_name: str | None,
) -> tuple[grpc.ChannelCredentials | None, list[tuple[str, Any]]]:
    """The channel credentials (None: plaintext) and the channel options they need."""
    if not wants_tls(tls, ca_file, cert_file, key_file, server_name):
        return None, []
    return channel_credentials(ca_file, cert_file, key_file), server_name_options(server_name)


def _chunk(parts: list[str], msg: pb.GenerateChunk) -> Chunk:
    """A client Chunk from a wire chunk; ``parts`` accumulates the text streamed so far."""
    parts.append(msg.text_delta)
    done = None
    if msg.HasField("summary"):
        done = Completion.from_proto(msg.request_id, "".join(parts), msg.summary)
    return Chunk(msg.text_delta, done)


class Client:
    """Blocking client. ``timeout`` (seconds) is the default deadline of every call.

    TLS: ``tls=True`` (implied by any of the next options) encrypts the channel and checks
    the server's certificate against ``ca_file`` (PEM; default: the system's roots);
    ``cert_file`` and ``key_file`` present a client certificate (mutual TLS);
    ``server_name`` is the name the server's certificate must carry when it is not the
    target's host. A file that cannot be read raises :class:`TLSOptionError` at once.
    """

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        api_key: str | None = None,
        timeout: float | None = None,
        max_message_bytes: int = 64 * 1024 * 1024,
        tls: bool = False,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        server_name: str | None = None,
    ) -> None:
        credentials, tls_options = _security(tls, ca_file, cert_file, key_file, server_name)
        options = _channel_options(max_message_bytes) + tls_options
        self._channel = (
            grpc.insecure_channel(target, options=options)
            if credentials is None
            else grpc.secure_channel(target, credentials, options=options)
        )
        self._stub = pb_grpc.OptiServeStub(self._channel)
        self._metadata = _metadata(api_key)
        self._timeout = timeout

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def _call(self, method: Any, request: Any, timeout: float | None) -> Any:
        try:
            return method(request, timeout=timeout or self._timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    def generate(
        self, prompt: str | None = None, *, timeout: float | None = None, **kwargs: Any
    ) -> Completion:
        """One completion. Keyword arguments: see :func:`build_request`."""
        response = self._call(self._stub.Generate, build_request(prompt, **kwargs), timeout)
        return Completion.from_proto(response.request_id, response.text, response.summary)

    def stream(
        self, prompt: str | None = None, *, timeout: float | None = None, **kwargs: Any
    ) -> Iterator[Chunk]:
        """Text chunks as they are produced; the last one carries the completion."""
        call = self._stub.StreamGenerate(
            build_request(prompt, **kwargs),
            timeout=timeout or self._timeout,
            metadata=self._metadata,
        )
        parts: list[str] = []
        try:
            for chunk in call:
                yield _chunk(parts, chunk)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            call.cancel()

    def list_models(self) -> list[Model]:
        """The models and routes the server serves."""
        response = self._call(self._stub.ListModels, pb.ListModelsRequest(), None)
        return [Model.from_proto(m) for m in response.models]

    def usage(self, model: str = "") -> pb.GetUsageResponse:
        """Measured usage (the wire message: per-model rows and a total)."""
        response: pb.GetUsageResponse = self._call(
            self._stub.GetUsage, pb.GetUsageRequest(model=model), None
        )
        return response

    def quantize(
        self, request: pb.QuantizeRequest, *, timeout: float | None = None
    ) -> Iterator[pb.QuantizeEvent]:
        """Quantize a local model: progress events, then one with the report. Build the
        request with :func:`build_quantize_request`."""
        return self._events(self._stub.Quantize, request, timeout)

    def benchmark(
        self, request: pb.BenchmarkRequest, *, timeout: float | None = None
    ) -> Iterator[pb.BenchmarkEvent]:
        """Run a benchmark inside the server: progress events, then one with the report.
        Closing the iterator (or an exception in the loop) cancels the run."""
        return self._events(self._stub.Benchmark, request, timeout)

    def _events(self, method: Any, request: Any, timeout: float | None) -> Iterator[Any]:
        """The messages of a server-streaming job call; closing the iterator cancels it."""
        call = method(request, timeout=timeout or self._timeout, metadata=self._metadata)
        try:
            yield from call
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            call.cancel()

    def health(self, service: str = "") -> str:
        """The health status name, e.g. "SERVING"."""
        return str(self._call(check_method(self._channel), service, None))


class AsyncClient:
    """asyncio client with the same methods and options as :class:`Client`."""

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        api_key: str | None = None,
        timeout: float | None = None,
        max_message_bytes: int = 64 * 1024 * 1024,
        tls: bool = False,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        server_name: str | None = None,
    ) -> None:
        credentials, tls_options = _security(tls, ca_file, cert_file, key_file, server_name)
        options = _channel_options(max_message_bytes) + tls_options
        self._channel = (
            grpc.aio.insecure_channel(target, options=options)
            if credentials is None
            else grpc.aio.secure_channel(target, credentials, options=options)
        )
        self._stub = pb_grpc.OptiServeStub(self._channel)
        self._metadata = _metadata(api_key)
        self._timeout = timeout

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()

    async def _call(self, method: Any, request: Any, timeout: float | None) -> Any:
        try:
            return await method(request, timeout=timeout or self._timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None

    async def generate(
        self, prompt: str | None = None, *, timeout: float | None = None, **kwargs: Any
    ) -> Completion:
        """One completion. Keyword arguments: see :func:`build_request`."""
        response = await self._call(self._stub.Generate, build_request(prompt, **kwargs), timeout)
        return Completion.from_proto(response.request_id, response.text, response.summary)

    async def stream(
        self, prompt: str | None = None, *, timeout: float | None = None, **kwargs: Any
    ) -> AsyncIterator[Chunk]:
        """Text chunks as they are produced; the last one carries the completion."""
        call = self._stub.StreamGenerate(
            build_request(prompt, **kwargs),
            timeout=timeout or self._timeout,
            metadata=self._metadata,
        )
        parts: list[str] = []
        try:
            async for chunk in call:
                yield _chunk(parts, chunk)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            call.cancel()

    async def list_models(self) -> list[Model]:
        """The models and routes the server serves."""
        response = await self._call(self._stub.ListModels, pb.ListModelsRequest(), None)
        return [Model.from_proto(m) for m in response.models]

    async def health(self, service: str = "") -> str:
        """The health status name, e.g. "SERVING"."""
        return str(await self._call(check_method(self._channel), service, None))


__all__ = ["AsyncClient", "Client", "OptiserveClientError", "TLSOptionError", "build_request"]
