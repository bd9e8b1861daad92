"""A client that opens StreamGenerate and never reads: its call ends after
server.stream_write_timeout_s, the model stops, and its slot is freed."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rawh2 import RawH2
from rpchelpers import serving, wait_in_flight

from optiserve.app import ServerThread
from optiserve.config import Config
from optiserve.models.local.backend import LocalHFBackend
from optiserve_client.v1 import optiserve_pb2 as pb
from optiserve_client.v1 import optiserve_pb2_grpc as pb_grpc

STREAM = "/optiserve.v1.OptiServe/StreamGenerate"
LONG = pb.GenerateRequest(prompt="Tell me", sampling=pb.SamplingParams(max_new_tokens=480))
SHORT = pb.GenerateRequest(prompt="hello", sampling=pb.SamplingParams(max_new_tokens=2))


def _tokens_generated(server: ServerThread) -> float:
    value = server.app.registry.get_sample_value(
        "optiserve_scheduler_tokens_generated_total", {"model": "tiny"}
    )
    return value or 0.0


def _health(channel: grpc.Channel) -> int:
    request = health_pb2.HealthCheckRequest()
    return int(health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status)


def test_a_stream_nobody_reads_ends_and_frees_its_slot(
    make_config: Callable[..., Config],
) -> None:
    with (
        serving(make_config, max_concurrent_rpcs=1, stream_write_timeout_s=1.0) as server,
        grpc.insecure_channel(server.target) as channel,
    ):
        reader = RawH2(server.target)
        stream = reader.call(STREAM, LONG)
        started = time.monotonic()
        wait_in_flight(server, 1)
        stub = pb_grpc.OptiServeStub(channel)
        with pytest.raises(grpc.RpcError) as info:  # the unread stream holds the only slot
            stub.Generate(SHORT, timeout=10)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
        wait_in_flight(server, 0, timeout_s=10)
        assert time.monotonic() - started >= 0.9
        assert stub.Generate(SHORT, timeout=30).summary.usage.completion_tokens >= 1
        # When the client reads at last, the call's status says what happened.
        reply = reader.read(stream)
        reader.close()
        assert reply.status == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
        assert reply.message.startswith("the client did not read the stream for 1 s;")
        assert "server.stream_write_timeout_s" in reply.message
        assert len(reply.messages()) <= 1, "nothing is written after the write that timed out"
        # Accounted as what the client was told: its deadline (to read) passed.
        total = stub.GetUsage(pb.GetUsageRequest(), timeout=10).total
        assert (total.deadline_exceeded, total.cancelled, total.requests) == (1, 0, 2)
        assert total.completion_tokens >= 2


def test_a_stream_nobody_reads_stops_its_generation(make_config: Callable[..., Config]) -> None:
    with serving(make_config, stream_write_timeout_s=0.1) as server:
        reader = RawH2(server.target)
        before = _tokens_generated(server)
        reader.call(STREAM, LONG)
        wait_in_flight(server, 1)
        wait_in_flight(server, 0, timeout_s=10)
        backend = server.app.backends[0][1]
        assert isinstance(backend, LocalHFBackend) and backend.scheduler is not None
        deadline = time.monotonic() + 10
        while backend.scheduler.running_count + backend.scheduler.queue_depth:
            assert time.monotonic() < deadline, "the unread stream's sequence kept running"
            time.sleep(0.01)
        settled = _tokens_generated(server)
        time.sleep(0.2)
        assert _tokens_generated(server) == settled
        assert settled - before < 400, "the model generated for a client that never read"
        reader.close()


def test_eight_unread_grpcio_streams_leave_the_server_usable(
    make_config: Callable[..., Config],
) -> None:
    """The report: eight StreamGenerate calls on one grpcio connection, never iterated
    (small windows, as a busy client's fill up), with max_concurrent_rpcs = 8."""
    small_windows = [("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)]
    with (
        serving(make_config, max_concurrent_rpcs=8, stream_write_timeout_s=2.0) as server,
        grpc.insecure_channel(server.target, options=small_windows) as channel,
    ):
        stub = pb_grpc.OptiServeStub(channel)
        streams = [stub.StreamGenerate(LONG, timeout=60) for _ in range(8)]
        wait_in_flight(server, 8)
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as info:  # eight unread streams hold the slots
            stub.Generate(SHORT, timeout=10)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "server.max_concurrent_rpcs" in (info.value.details() or "")
        wait_in_flight(server, 0, timeout_s=15)
        assert stub.Generate(SHORT, timeout=30).summary.usage.completion_tokens >= 1
        for stream in streams:
            with pytest.raises(grpc.RpcError) as info:
                list(stream)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
