"""Admission: OptiServe calls are limited in all, per connection and per tenant; health
and reflection answer whatever the limits. Unread streams (raw HTTP/2, window 0) hold the
slots while the test looks."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from rawh2 import RawH2
from rpchelpers import serving, wait_in_flight

from optiserve.app import ServerThread
from optiserve.config import Config
from optiserve_client.v1 import optiserve_pb2 as pb
from optiserve_client.v1 import optiserve_pb2_grpc as pb_grpc

STREAM = "/optiserve.v1.OptiServe/StreamGenerate"
HOLD = pb.GenerateRequest(prompt="Tell me", sampling=pb.SamplingParams(max_new_tokens=20))
SHORT = pb.GenerateRequest(prompt="hello", sampling=pb.SamplingParams(max_new_tokens=2))
SERVING = health_pb2.HealthCheckResponse.SERVING
RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]


def _refused(server: ServerThread, key: str = "") -> str:
    """Call Generate, expect RESOURCE_EXHAUSTED; return its message."""
    metadata = (("x-api-key", key),) if key else ()
    with grpc.insecure_channel(server.target) as channel:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.OptiServeStub(channel).Generate(SHORT, metadata=metadata, timeout=10)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value.details()
        return info.value.details() or ""


def _served(server: ServerThread, key: str = "") -> None:
    metadata = (("x-api-key", key),) if key else ()
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.OptiServeStub(channel)
        response = stub.Generate(SHORT, metadata=metadata, timeout=30)
        assert response.summary.usage.completion_tokens >= 1


def _health_and_reflection_answer(server: ServerThread) -> None:
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == SERVING
        watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=5)
        assert next(watch).status == SERVING
        watch.cancel()
        info = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        names = {s.name for s in next(info).list_services_response.service}
        assert "optiserve.v1.OptiServe" in names


def test_the_server_wide_limit_spares_health_and_reflection(
    make_config: Callable[..., Config],
) -> None:
    with serving(make_config, max_concurrent_rpcs=2) as server:
        holder = RawH2(server.target)
        for _ in range(2):
            holder.call(STREAM, HOLD)
        wait_in_flight(server, 2)
        message = _refused(server)
        assert "already has 2 OptiServe calls in progress" in message
        assert "server.max_concurrent_rpcs" in message
        _health_and_reflection_answer(server)
        holder.close()  # the client goes away: its calls end and free their slots
        wait_in_flight(server, 0, timeout_s=10)
        _served(server)


def test_the_limit_per_connection(make_config: Callable[..., Config]) -> None:
    with serving(make_config, max_rpcs_per_connection=2) as server:
        holder = RawH2(server.target)
        for _ in range(2):
            holder.call(STREAM, HOLD)
        wait_in_flight(server, 2)
        third = holder.read(holder.call(STREAM, HOLD))
        assert third.status == RESOURCE_EXHAUSTED
        assert "this connection already has 2 OptiServe calls" in third.message
        assert "server.max_rpcs_per_connection" in third.message
        # Health on the same, full, connection still answers.
        check = holder.read(
            holder.call("/grpc.health.v1.Health/Check", health_pb2.HealthCheckRequest())
        )
        assert check.status == 0
        assert health_pb2.HealthCheckResponse.FromString(check.messages()[0]).status == SERVING
        _served(server)  # another connection
        _health_and_reflection_answer(server)
        holder.close()
        wait_in_flight(server, 0, timeout_s=10)


def test_the_limit_per_tenant(make_config: Callable[..., Config]) -> None:
    with serving(make_config, max_rpcs_per_tenant=2) as server:
        holders = [RawH2(server.target) for _ in range(2)]
        for holder in holders:
            holder.call(STREAM, HOLD, metadata=(("x-api-key", "alpha"),))
        wait_in_flight(server, 2)
        message = _refused(server, key="alpha")
        assert "already has 2 OptiServe calls in progress" in message
        assert "server.max_rpcs_per_tenant" in message
        _served(server, key="beta")
        _served(server)  # anonymous is a tenant of its own
        _health_and_reflection_answer(server)
        for holder in holders:
            holder.close()
        wait_in_flight(server, 0, timeout_s=10)
        _served(server, key="alpha")
