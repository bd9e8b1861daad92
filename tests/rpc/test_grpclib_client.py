"""A second client stack, grpclib (pure-Python HTTP/2), against the real server: health
Watch, StreamGenerate and an error status, without grpcio on the client side."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from grpc_health.v1 import health_pb2
from grpclib.client import Channel, UnaryStreamMethod
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from optiserve.app import ServerThread
from optiserve_client.v1 import optiserve_pb2 as pb

PROMPT = "Create a new socket using the given address family"


@pytest.fixture
async def channel(server: ServerThread) -> AsyncIterator[Channel]:
    host, port = server.target.rsplit(":", 1)
    channel = Channel(host, int(port))
    yield channel
    channel.close()


def _stream_generate(channel: Channel) -> UnaryStreamMethod[pb.GenerateRequest, pb.GenerateChunk]:
    return UnaryStreamMethod(
        channel, "/optiserve.v1.OptiServe/StreamGenerate", pb.GenerateRequest, pb.GenerateChunk
    )


async def test_grpclib_watches_health(channel: Channel) -> None:
    watch = UnaryStreamMethod(
        channel,
        "/grpc.health.v1.Health/Watch",
        health_pb2.HealthCheckRequest,
        health_pb2.HealthCheckResponse,
    )
    for service in ("", "optiserve.v1.OptiServe"):
        async with watch.open(timeout=10) as stream:
            await stream.send_message(health_pb2.HealthCheckRequest(service=service), end=True)
            reply = await stream.recv_message()
            assert reply is not None
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            await stream.cancel()


async def test_grpclib_streams_a_generation(channel: Channel) -> None:
    request = pb.GenerateRequest(
        request_id="grpclib-1", prompt=PROMPT, sampling=pb.SamplingParams(max_new_tokens=12)
    )
    async with _stream_generate(channel).open(timeout=30) as stream:
        await stream.send_message(request, end=True)
        chunks = [chunk async for chunk in stream]
        assert stream.initial_metadata is not None
        assert stream.initial_metadata["x-request-id"] == "grpclib-1"
    assert chunks[-1].HasField("summary")
    assert chunks[-1].summary.usage.completion_tokens >= 1
    assert "".join(c.text_delta for c in chunks)


async def test_grpclib_sees_a_clean_error_status(channel: Channel) -> None:
    with pytest.raises(GRPCError) as info:
        await _stream_generate(channel)(pb.GenerateRequest(), timeout=10)
    assert info.value.status == Status.INVALID_ARGUMENT
    assert "prompt" in (info.value.message or "")
