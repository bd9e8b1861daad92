"""Warm-up: before the server listens (so before health first says SERVING), each local
model generates engine.warmup_tokens tokens through its scheduler, measured and logged."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from optiserve.app import ServerThread
from optiserve.config import Config


def _start(config: Config, caplog: pytest.LogCaptureFixture) -> tuple[ServerThread, list[str]]:
    with caplog.at_level(logging.INFO, logger="optiserve.app"):
        server = ServerThread(config)
        server.start()
    return server, [r.getMessage() for r in caplog.records if r.name == "optiserve.app"]


def _generated(server: ServerThread) -> float:
    value = server.app.registry.get_sample_value(
        "optiserve_scheduler_tokens_generated_total", {"model": "tiny"}
    )
    return value or 0.0


def test_each_local_model_is_warmed_before_health_serves(
    make_config: Callable[..., Config], caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config()
    config = replace(config, engine=replace(config.engine, warmup_tokens=8))
    server, messages = _start(config, caplog)
    try:
        assert messages.index("warmed up") < messages.index("serving")
        record = next(r for r in caplog.records if r.getMessage() == "warmed up")
        took = record.__dict__["warm_up_ms"]
        assert set(took) == {"tiny"} and took["tiny"] > 0
        # The 8 tokens went through the scheduler before any request came.
        assert _generated(server) == 8
        with grpc.insecure_channel(server.target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop()


def test_warm_up_can_be_switched_off(
    make_config: Callable[..., Config], caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config()
    config = replace(config, engine=replace(config.engine, warmup_tokens=0))
    server, messages = _start(config, caplog)
    try:
        assert "warmed up" not in messages and "serving" in messages
        assert _generated(server) == 0
    finally:
        server.stop()
