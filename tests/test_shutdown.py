"""Graceful drain: SIGTERM turns health NOT_SERVING, refuses new work, lets the in-flight
stream finish, then the process exits 0."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from optiserve_client.v1 import optiserve_pb2 as pb
from optiserve_client.v1 import optiserve_pb2_grpc as pb_grpc
from server_process import free_port, serve_process


def test_sigterm_drains_in_flight_stream(tiny_model_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "optiserve.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\n'
        f"[server]\nport = {port}\ngrace_period_s = 20\ndrain_announce_s = 2\n"
        '[logging]\nformat = "json"\n'
        f'[[models]]\nname = "tiny"\nsource = "{tiny_model_dir}"\nmax_new_tokens_cap = 480\n'
    )
    proc = serve_process(config)
    try:
        target = f"127.0.0.1:{port}"
        with grpc.insecure_channel(target) as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
            stub = pb_grpc.OptiServeStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            request = pb.GenerateRequest(
                prompt="Tell me", sampling=pb.SamplingParams(max_new_tokens=480)
            )
            stream = stub.StreamGenerate(request, timeout=60)
            first = next(stream)
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 5
            status = None
            while time.monotonic() < deadline:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
                time.sleep(0.01)
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as info:
                stub.Generate(request, timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "shutting down" in (info.value.details() or "")
            chunks = [first, *stream]
            assert chunks[-1].HasField("summary"), "the in-flight stream must complete"
            assert chunks[-1].summary.usage.completion_tokens > 1
            assert time.monotonic() - started < 20
        assert proc.wait(timeout=30) == 0
        log = proc.stdout.read().decode() if proc.stdout else ""
        assert '"msg": "draining"' in log and '"msg": "stopped"' in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
