"""A dead RPC (cancelled, or past its deadline) stops its generation; queues are safe."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from optiserve.app import ServerThread
from optiserve.config import Config
from optiserve.models.local.backend import LocalHFBackend
from optiserve_client import Client, ResourceExhausted
from optiserve_client.v1 import optiserve_pb2 as pb
from optiserve_client.v1 import optiserve_pb2_grpc as pb_grpc

LONG = pb.GenerateRequest(prompt="Tell me", sampling=pb.SamplingParams(max_new_tokens=480))


def _tokens_generated(server: ServerThread) -> float:
    value = server.app.registry.get_sample_value(
        "optiserve_scheduler_tokens_generated_total", {"model": "tiny"}
    )
    return value or 0.0


def _wait_idle(server: ServerThread, timeout: float = 10.0) -> None:
    """Wait until the model's scheduler has nothing running or waiting, then check that no
    token is generated afterwards (the dead request's work really stopped)."""
    backend = server.app.backends[0][1]
    assert isinstance(backend, LocalHFBackend)
    scheduler = backend.scheduler
    assert scheduler is not None
    start = time.monotonic()
    while scheduler.running_count + scheduler.queue_depth and time.monotonic() - start < timeout:
        time.sleep(0.005)
    assert scheduler.running_count + scheduler.queue_depth == 0, "work kept going for a dead RPC"
    settled = _tokens_generated(server)
    time.sleep(0.2)
    assert _tokens_generated(server) == settled


def test_cancelling_a_stream_stops_generation(server: ServerThread) -> None:
    before = _tokens_generated(server)
    with grpc.insecure_channel(server.target) as channel:
        call = pb_grpc.OptiServeStub(channel).StreamGenerate(LONG, timeout=60)
        first = next(call)
        assert first.text_delta or first.HasField("summary")
        call.cancel()
    _wait_idle(server)
    generated = _tokens_generated(server) - before
    assert 1 <= generated < 400, f"{generated} tokens: the cancelled stream was not stopped"


def test_deadline_exceeded_stops_generation(server: ServerThread, client: Client) -> None:
    full = client.generate("Tell me", max_new_tokens=480)
    assert full.timings.total_ms > 150, "the long request must outlast the deadline below"
    before = _tokens_generated(server)
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.OptiServeStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Generate(LONG, timeout=0.05)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        with pytest.raises(grpc.RpcError) as info:
            list(stub.StreamGenerate(LONG, timeout=0.05))
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    _wait_idle(server)
    assert _tokens_generated(server) - before < 2 * 400
    assert client.generate("after", max_new_tokens=2).usage.completion_tokens >= 1


def test_concurrent_requests_queue_safely(client: Client) -> None:
    prompts = [f"Request number {i} asks" for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda p: client.generate(p, max_new_tokens=8), prompts))
    alone = [client.generate(p, max_new_tokens=8).text for p in prompts]
    assert [r.text for r in results] == alone
    assert max(r.timings.queued_ms for r in results) > 0


def test_full_queue_is_resource_exhausted_with_retry_hint(
    make_config: Callable[..., Config],
) -> None:
    config = make_config()
    from dataclasses import replace

    config = replace(config, engine=replace(config.engine, max_queue=1))
    server = ServerThread(config)
    server.start()
    try:
        with Client(server.target, timeout=60) as c, ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(c.generate, "Tell me", max_new_tokens=200) for _ in range(4)]
            errors = []
            for f in futures:
                try:
                    f.result()
                except ResourceExhausted as exc:
                    errors.append(exc)
            assert errors, "with one waiting slot, some of 4 concurrent requests must be refused"
            assert all(e.retry_after_s and e.retry_after_s > 0 for e in errors)
            assert "waiting" in errors[0].message
            assert c.generate("ok", max_new_tokens=2).usage.completion_tokens >= 1
    finally:
        server.stop()
