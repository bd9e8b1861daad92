"""Connections that spread across replicas: with server.max_connection_age_s the server
sends GOAWAY after that age, the client's channel leaves READY and reconnects (to a new
replica behind a load balancer), and calls in progress finish within the grace period."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace

import grpc
import pytest

from optiserve.app import ServerThread
from optiserve.config import Config, ServerConfig
from optiserve_client import Client
from optiserve_client.v1 import optiserve_pb2 as pb
from optiserve_client.v1 import optiserve_pb2_grpc as pb_grpc


def _states_over(target: str, seconds: float) -> list[grpc.ChannelConnectivity]:
    """The connectivity states a channel goes through while it calls for ``seconds``."""
    states: list[grpc.ChannelConnectivity] = []
    lock = threading.Lock()

    def seen(state: grpc.ChannelConnectivity) -> None:
        with lock:
            states.append(state)

    channel = grpc.insecure_channel(target)
    channel.subscribe(seen, try_to_connect=True)
    stub = pb_grpc.OptiServeStub(channel)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        stub.ListModels(pb.ListModelsRequest(), timeout=10, wait_for_ready=True)
        time.sleep(0.05)
    channel.unsubscribe(seen)
    channel.close()
    return states


@pytest.mark.parametrize(("age_s", "reconnects"), [(0.5, True), (0.0, False)])
def test_max_connection_age_makes_clients_reconnect(
    make_config: Callable[..., Config], age_s: float, reconnects: bool
) -> None:
    config = make_config()
    server = replace(config.server, max_connection_age_s=age_s, max_connection_age_grace_s=5.0)
    thread = ServerThread(replace(config, server=server))
    thread.start()
    try:
        states = _states_over(thread.target, 2.5)
    finally:
        thread.stop()
    ready = [i for i, s in enumerate(states) if s is grpc.ChannelConnectivity.READY]
    assert ready, states
    left_ready = any(s is not grpc.ChannelConnectivity.READY for s in states[ready[0] + 1 :])
    assert left_ready == reconnects, states


def test_a_stream_longer_than_the_connection_age_finishes_within_the_grace(
    make_config: Callable[..., Config],
) -> None:
    config = make_config()
    server = replace(config.server, max_connection_age_s=0.3, max_connection_age_grace_s=30.0)
    thread = ServerThread(replace(config, server=server))
    thread.start()
    try:
        with Client(thread.target, timeout=60) as client:
            started = time.monotonic()
            chunks = list(
                client.stream("Tell me a long story", max_new_tokens=400, min_new_tokens=400)
            )
            assert time.monotonic() - started > 0.3  # it outlived the connection's age
            done = chunks[-1].completion
            assert done is not None and done.usage.completion_tokens == 400
    finally:
        thread.stop()


def test_the_options_reach_grpc() -> None:
    options = dict(
        ServerConfig(
            keepalive_time_s=30, max_connection_age_s=300, max_connection_age_grace_s=20
        ).grpc_options()
    )
    assert options["grpc.keepalive_time_ms"] == 30_000
    assert options["grpc.max_connection_age_ms"] == 300_000
    assert options["grpc.max_connection_age_grace_ms"] == 20_000
    assert "grpc.max_connection_idle_ms" not in options  # 0 = off: left to gRPC
    assert options["grpc.keepalive_permit_without_calls"] == 1
