"""Observability on a live server: per-call metrics by method and status (a success, an
INVALID_ARGUMENT, a cancelled stream), the decision trace in the trailing metadata, and one
access-log line per call, with no prompt text unless ``logging.log_prompts`` is on."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import grpc
import pytest
from prometheus_client import generate_latest

from optiserve.app import ServerThread
from optiserve.config import Config
from optiserve.rpc.trace_header import TRACE_KEY
from optiserve_client.v1 import optiserve_pb2 as pb
from optiserve_client.v1 import optiserve_pb2_grpc as pb_grpc

SERVICE = "optiserve.v1.OptiServe"
SECRET_PROMPT = "zebra-quartz-marmalade: a prompt that must never reach the logs"


@pytest.fixture(scope="module")
def observed(make_config: Callable[..., Config]) -> Iterator[ServerThread]:
    """A server with the cache on (so traces have lookups)."""
    thread = ServerThread(make_config(cache={"enabled": True, "semantic_enabled": False}))
    thread.start()
    yield thread
    thread.stop()


@pytest.fixture
def stub(observed: ServerThread) -> Iterator[pb_grpc.OptiServeStub]:
    with grpc.insecure_channel(observed.target) as channel:
        yield pb_grpc.OptiServeStub(channel)


def _request(prompt: str, max_new_tokens: int = 8, **sampling: float) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        prompt=prompt,
        sampling=pb.SamplingParams(max_new_tokens=max_new_tokens, **sampling),  # type: ignore[arg-type]
    )


def _value(server: ServerThread, name: str, **labels: str) -> float:
    value = server.app.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def _calls(server: ServerThread, method: str, status: str) -> tuple[float, float]:
    labels = {"service": SERVICE, "method": method, "status": status}
    return (
        _value(server, "optiserve_rpc_requests_total", **labels),
        _value(server, "optiserve_rpc_duration_seconds_count", **labels),
    )


def _wait_for(check: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _trace(metadata: object) -> dict[str, object]:
    values = [v for k, v in metadata or () if k == TRACE_KEY]  # type: ignore[attr-defined]
    assert len(values) == 1, metadata
    value = values[0]
    assert isinstance(value, str) and value.isascii() and value.isprintable()
    data = json.loads(value)
    assert isinstance(data, dict)
    return data


def test_calls_are_counted_and_timed_by_method_and_status(
    observed: ServerThread, stub: pb_grpc.OptiServeStub
) -> None:
    ok, invalid, cancelled = (
        _calls(observed, "Generate", "OK"),
        _calls(observed, "Generate", "INVALID_ARGUMENT"),
        _calls(observed, "StreamGenerate", "CANCELLED"),
    )
    stub.Generate(_request("count this call"), timeout=60)
    with pytest.raises(grpc.RpcError) as info:
        stub.Generate(_request("a bad temperature", temperature=-1.0), timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    stream = stub.StreamGenerate(
        _request("a long stream to cancel", max_new_tokens=400, min_new_tokens=400), timeout=60
    )
    next(stream)  # the first chunk: the stream is under way
    stream.cancel()
    _wait_for(lambda: _calls(observed, "StreamGenerate", "CANCELLED")[0] == cancelled[0] + 1)

    # Counters and histogram samples each moved by exactly one per call.
    assert _calls(observed, "Generate", "OK") == (ok[0] + 1, ok[1] + 1)
    assert _calls(observed, "Generate", "INVALID_ARGUMENT") == (invalid[0] + 1, invalid[1] + 1)
    assert _calls(observed, "StreamGenerate", "CANCELLED") == (
        cancelled[0] + 1,
        cancelled[1] + 1,
    )
    in_flight = {"service": SERVICE, "method": "StreamGenerate"}
    _wait_for(lambda: _value(observed, "optiserve_rpc_in_flight", **in_flight) == 0)

    text = generate_latest(observed.app.registry).decode()
    for name in (
        "optiserve_rpc_duration_seconds_bucket",
        "optiserve_rpc_in_flight",
        "optiserve_scheduler_queue_depth",
        "optiserve_scheduler_running",
        "optiserve_cache_hit_ratio",
        "optiserve_spend_usd_total",
        "optiserve_ledger_write_failures_total",
    ):
        assert name in text, name
    ok_line = f'optiserve_rpc_requests_total{{method="Generate",service="{SERVICE}",status="OK"}}'
    assert ok_line in text
    spend = [ln for ln in text.splitlines() if ln.startswith("optiserve_spend_usd_total{")]
    assert any('model="tiny"' in ln and 'provider="local"' in ln for ln in spend), spend


def test_a_stream_past_its_deadline_is_counted_as_deadline_exceeded(
    observed: ServerThread, stub: pb_grpc.OptiServeStub
) -> None:
    before = _calls(observed, "StreamGenerate", "DEADLINE_EXCEEDED")[0]
    stream = stub.StreamGenerate(
        _request("a stream that runs out of time", max_new_tokens=500, min_new_tokens=500),
        timeout=0.5,
    )
    with pytest.raises(grpc.RpcError) as info:
        list(stream)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    _wait_for(lambda: _calls(observed, "StreamGenerate", "DEADLINE_EXCEEDED")[0] == before + 1)


def test_health_calls_are_counted_too(observed: ServerThread) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    before = _value(
        observed,
        "optiserve_rpc_requests_total",
        service="grpc.health.v1.Health",
        method="Check",
        status="OK",
    )
    with grpc.insecure_channel(observed.target) as channel:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    labels = {"service": "grpc.health.v1.Health", "method": "Check", "status": "OK"}
    _wait_for(lambda: _value(observed, "optiserve_rpc_requests_total", **labels) == before + 1)


def test_the_trace_is_in_the_trailing_metadata(
    observed: ServerThread, stub: pb_grpc.OptiServeStub
) -> None:
    request = _request("Where does the trace go?")
    response, call = stub.Generate.with_call(request, timeout=60)
    trace = _trace(call.trailing_metadata())
    assert trace["model"] == response.summary.model == "tiny"
    assert trace["provider"] == "local"
    assert trace["cache"] == [{"layer": "exact", "outcome": "miss"}]
    observed.wait_for_cache_writes()

    stream = stub.StreamGenerate(request, timeout=60)
    chunks = list(stream)
    trace = _trace(stream.trailing_metadata())
    assert chunks[-1].summary.model == trace["model"] == "tiny"
    assert trace["provider"] == "cache" and trace["finish"] == "cached"
    assert trace["cache"] == [{"layer": "exact", "outcome": "hit", "similarity": 1.0}]
    assert trace["reason"] == "exact cache hit"
    ratio = _value(observed, "optiserve_cache_hit_ratio")
    assert 0.0 < ratio < 1.0


def _access(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "optiserve.access"]


def test_one_access_line_per_call_and_no_prompt(
    observed: ServerThread, stub: pb_grpc.OptiServeStub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key = (("x-api-key", "sk-not-a-real-key"),)
    request = pb.GenerateRequest(
        request_id="obs-ok",
        prompt=SECRET_PROMPT,
        sampling=pb.SamplingParams(max_new_tokens=6),
    )
    stub.Generate(request, metadata=key, timeout=60)
    bad = pb.GenerateRequest(
        request_id="obs-bad",
        prompt=SECRET_PROMPT,
        sampling=pb.SamplingParams(max_new_tokens=6, temperature=-1.0),
    )
    with pytest.raises(grpc.RpcError):
        stub.StreamGenerate(bad, timeout=60).next()
    _wait_for(lambda: len(_access(caplog)) >= 2)
    records = {r.request_id: r for r in _access(caplog)}  # type: ignore[attr-defined]
    ok, failed = records["obs-ok"], records["obs-bad"]
    assert ok.levelno == logging.INFO
    assert vars(ok)["method"] == "Generate" and vars(ok)["status"] == "OK"
    assert vars(ok)["tenant"].startswith("key-") and "sk-not" not in vars(ok)["tenant"]
    assert vars(ok)["model"] == "tiny" and vars(ok)["latency_ms"] > 0
    assert vars(ok)["cache"] == "exact:miss"
    assert vars(failed)["method"] == "StreamGenerate"
    assert vars(failed)["status"] == "INVALID_ARGUMENT"
    assert vars(failed)["tenant"] == "anonymous" and "temperature" in vars(failed)["error"]
    assert len([r for r in _access(caplog) if r.request_id == "obs-ok"]) == 1  # type: ignore[attr-defined]
    logged = "\n".join(str(vars(r)) + r.getMessage() for r in caplog.records)
    assert "zebra-quartz" not in logged
    assert "sk-not-a-real-key" not in logged


def test_prompts_are_logged_when_asked(
    make_config: Callable[..., Config], caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config()
    config = replace(config, logging=replace(config.logging, log_prompts=True))
    server = ServerThread(config)
    server.start()
    try:
        caplog.set_level(logging.INFO, logger="optiserve.access")
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.OptiServeStub(channel)
            stub.Generate(
                pb.GenerateRequest(
                    request_id="obs-prompt",
                    prompt=SECRET_PROMPT,
                    sampling=pb.SamplingParams(max_new_tokens=4),
                ),
                timeout=60,
            )
        _wait_for(lambda: any(r.request_id == "obs-prompt" for r in _access(caplog)))  # type: ignore[attr-defined]
        (record,) = [r for r in _access(caplog) if r.request_id == "obs-prompt"]  # type: ignore[attr-defined]
        assert vars(record)["prompt"] == SECRET_PROMPT
    finally:
        server.stop()
