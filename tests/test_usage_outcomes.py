"""GetUsage accounts every request that reached a model exactly once, with its outcome (ok,
cancelled, deadline exceeded, error) and the tokens it really produced, cut short or not."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from optiserve.app import ServerThread
from optiserve_client import Client, NotFound
from optiserve_client.v1 import optiserve_pb2 as pb
from optiserve_client.v1 import optiserve_pb2_grpc as pb_grpc

LONG = pb.GenerateRequest(prompt="Tell me", sampling=pb.SamplingParams(max_new_tokens=480))
OUTCOMES = ("requests", "errors", "cancelled", "deadline_exceeded")


def _counts(client: Client) -> pb.ModelUsage:
    total: pb.ModelUsage = client.usage().total
    return total


def _delta(after: pb.ModelUsage, before: pb.ModelUsage, field: str) -> int:
    return int(getattr(after, field)) - int(getattr(before, field))


def _settled(
    client: Client, before: pb.ModelUsage, done: Callable[[pb.ModelUsage], bool]
) -> pb.ModelUsage:
    """Poll GetUsage until ``done`` (a cut is processed asynchronously on the server), then
    check that nothing more arrives (each request is counted once)."""
    deadline = time.monotonic() + 10.0
    after = _counts(client)
    while not done(after) and time.monotonic() < deadline:
        time.sleep(0.05)
        after = _counts(client)
    time.sleep(0.3)
    late = _counts(client)
    for field in OUTCOMES:
        assert getattr(late, field) == getattr(after, field), f"{field} counted late"
    return after


def test_a_normal_request_is_ok(client: Client) -> None:
    before = _counts(client)
    result = client.generate("Count me once", max_new_tokens=5)
    after = _settled(client, before, lambda u: u.requests > before.requests)
    assert _delta(after, before, "requests") == 1
    for field in ("errors", "cancelled", "deadline_exceeded"):
        assert _delta(after, before, field) == 0, field
    assert _delta(after, before, "completion_tokens") == result.usage.completion_tokens
    assert _delta(after, before, "prompt_tokens") == result.usage.prompt_tokens


def test_a_cancelled_stream_is_counted_with_its_tokens(
    server: ServerThread, client: Client
) -> None:
    before = _counts(client)
    streamed = 0
    with grpc.insecure_channel(server.target) as channel:
        call = pb_grpc.OptiServeStub(channel).StreamGenerate(LONG, timeout=60)
        for chunk in call:
            assert not chunk.HasField("summary"), "the long stream ended before the cancel"
            streamed += int(bool(chunk.text_delta))  # a text chunk carries >= 1 token
            if streamed == 5:
                break
        call.cancel()
    after = _settled(client, before, lambda u: u.requests > before.requests)
    assert _delta(after, before, "requests") == 1
    assert _delta(after, before, "cancelled") == 1
    assert _delta(after, before, "deadline_exceeded") == 0
    assert _delta(after, before, "errors") == 0
    assert _delta(after, before, "prompt_tokens") > 0
    assert _delta(after, before, "completion_tokens") >= streamed


def _cut_by_deadline(target: str, i: int) -> grpc.StatusCode:
    timeout = 0.05 + 0.25 * (i % 6) / 5  # 50 ms to 300 ms
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.OptiServeStub(channel)
        try:
            if i % 2:
                for _ in stub.StreamGenerate(LONG, timeout=timeout):
                    pass
            else:
                stub.Generate(LONG, timeout=timeout)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


@pytest.mark.parametrize("workers", [1, 4], ids=["one-by-one", "concurrent"])
def test_deadline_cut_calls_are_each_counted_once(
    server: ServerThread, client: Client, workers: int
) -> None:
    full = client.generate("Tell me", max_new_tokens=480)
    assert full.timings.total_ms > 300, "the long request must outlast every deadline below"
    before = _counts(client)
    with ThreadPoolExecutor(workers) as pool:
        codes = list(pool.map(lambda i: _cut_by_deadline(server.target, i), range(12)))
    assert codes == [grpc.StatusCode.DEADLINE_EXCEEDED] * 12
    after = _settled(client, before, lambda u: u.requests - before.requests >= 12)
    assert _delta(after, before, "requests") == 12
    assert _delta(after, before, "deadline_exceeded") == 12
    assert _delta(after, before, "cancelled") == 0
    assert _delta(after, before, "errors") == 0
    assert _delta(after, before, "prompt_tokens") > 0
    assert _delta(after, before, "completion_tokens") > 0


def test_usage_of_an_unknown_model_is_not_found(client: Client) -> None:
    with pytest.raises(NotFound) as info:
        client.usage("no-such")
    assert info.value.message == "unknown model 'no-such'; this server serves: tiny"
    client.generate("Usage of one model", max_new_tokens=2)
    usage = client.usage("tiny")
    assert [row.model for row in usage.models] == ["tiny"]
    assert usage.total.requests >= 1
