"""Every invalid request gets the right status and a message naming what is wrong; the
server keeps serving after each."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest

from optiserve.app import ServerThread
from optiserve.config import Config
from optiserve_client import Client
from optiserve_client.v1 import optiserve_pb2 as pb
from optiserve_client.v1 import optiserve_pb2_grpc as pb_grpc


def _call(target: str, request: pb.GenerateRequest, stream: bool = False) -> grpc.RpcError:
    with grpc.insecure_channel(
        target, options=[("grpc.max_send_message_length", 64 << 20)]
    ) as channel:
        stub = pb_grpc.OptiServeStub(channel)
        try:
            if stream:
                list(stub.StreamGenerate(request, timeout=30))
            else:
                stub.Generate(request, timeout=30)
        except grpc.RpcError as exc:
            return exc
    raise AssertionError("the call should have failed")


def _still_serving(client: Client) -> None:
    assert client.health() == "SERVING"
    assert client.generate("still there?", max_new_tokens=2).usage.completion_tokens >= 1


def _req(**sampling: object) -> pb.GenerateRequest:
    return pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(**sampling))


CASES = [
    ("no prompt", pb.GenerateRequest(), grpc.StatusCode.INVALID_ARGUMENT, "no prompt"),
    (
        "both prompt and messages",
        pb.GenerateRequest(prompt="a", messages=[pb.ChatMessage(role="user", content="b")]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "either prompt or messages",
    ),
    (
        "bad role",
        pb.GenerateRequest(messages=[pb.ChatMessage(role="robot", content="b")]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "messages[0].role",
    ),
    (
        "unknown model",
        pb.GenerateRequest(prompt="a", model="gpt-17"),
        grpc.StatusCode.NOT_FOUND,
        "serves: tiny",
    ),
    (
        "max_new_tokens 0",
        _req(max_new_tokens=0),
        grpc.StatusCode.INVALID_ARGUMENT,
        "max_new_tokens must be >= 1",
    ),
    (
        "max_new_tokens negative",
        _req(max_new_tokens=-5),
        grpc.StatusCode.INVALID_ARGUMENT,
        "max_new_tokens",
    ),
    (
        "max_new_tokens above cap",
        _req(max_new_tokens=100000),
        grpc.StatusCode.INVALID_ARGUMENT,
        "[1, 512]",
    ),
    (
        "min_new_tokens negative",
        _req(min_new_tokens=-1),
        grpc.StatusCode.INVALID_ARGUMENT,
        "sampling.min_new_tokens must be in [0, max_new_tokens], got -1",
    ),
    (
        "min_new_tokens above max_new_tokens",
        _req(max_new_tokens=4, min_new_tokens=5),
        grpc.StatusCode.INVALID_ARGUMENT,
        "sampling.min_new_tokens must be in [0, 4]",
    ),
    (
        "min_new_tokens above the default max_new_tokens",
        _req(min_new_tokens=17),
        grpc.StatusCode.INVALID_ARGUMENT,
        "must be in [0, 16] (at most max_new_tokens, 16, the model's default)",
    ),
    (
        "temperature < 0",
        _req(temperature=-0.1),
        grpc.StatusCode.INVALID_ARGUMENT,
        "temperature must be",
    ),
    (
        "temperature nan",
        _req(temperature=float("nan")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "temperature",
    ),
    ("top_p 0", _req(top_p=0.0), grpc.StatusCode.INVALID_ARGUMENT, "top_p must be in (0, 1]"),
    ("top_p > 1", _req(top_p=1.5), grpc.StatusCode.INVALID_ARGUMENT, "top_p must be in (0, 1]"),
    ("top_k < 0", _req(top_k=-1), grpc.StatusCode.INVALID_ARGUMENT, "top_k must be >= 0"),
    (
        "unknown cache mode",
        pb.GenerateRequest(prompt="a", cache=pb.CachePolicy(mode=42)),  # type: ignore[arg-type]
        grpc.StatusCode.INVALID_ARGUMENT,
        "cache.mode 42 is unknown",
    ),
    (
        "json_schema not JSON",
        pb.GenerateRequest(prompt="a", response_format=pb.ResponseFormat(json_schema="{type:")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "response_format.json_schema is not valid JSON",
    ),
    (
        "json_schema not an object",
        pb.GenerateRequest(prompt="a", response_format=pb.ResponseFormat(json_schema="[1, 2]")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "response_format.json_schema must be a JSON object",
    ),
    (
        "json_schema on a model without structured output",
        pb.GenerateRequest(
            prompt="a", response_format=pb.ResponseFormat(json_schema='{"type": "object"}')
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "model 'tiny' cannot honour response_format.json_schema; structured output needs "
        "constrained decoding, not available for local models yet; omit it or choose a model "
        "that supports it",
    ),
    (
        "prompt longer than context",
        pb.GenerateRequest(prompt=" ".join(["word"] * 2000)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "context length (512)",
    ),
]


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize(("name", "request_", "code", "needle"), CASES, ids=[c[0] for c in CASES])
def test_bad_request(
    client: Client,
    server: ServerThread,
    name: str,
    request_: pb.GenerateRequest,
    code: grpc.StatusCode,
    needle: str,
    stream: bool,
) -> None:
    error = _call(server.target, request_, stream)
    assert error.code() == code, (name, error.details())
    assert needle in (error.details() or ""), error.details()
    _still_serving(client)


def test_prompt_too_long_names_both_lengths(server: ServerThread) -> None:
    error = _call(server.target, pb.GenerateRequest(prompt=" ".join(["word"] * 2000)))
    details = error.details() or ""
    assert "prompt (" in details
    assert "tokens) + max_new_tokens (16)" in details
    assert "512" in details


def test_oversized_message_is_resource_exhausted(
    make_config: Callable[..., Config],
) -> None:
    small = ServerThread(make_config(server={"max_message_bytes": 64 * 1024}))
    small.start()
    try:
        error = _call(small.target, pb.GenerateRequest(prompt="x" * 100_000))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        with Client(small.target, timeout=30) as c:
            _still_serving(c)
    finally:
        small.stop()


def test_garbage_bytes_fail_cleanly(server: ServerThread, client: Client) -> None:
    with grpc.insecure_channel(server.target) as channel:
        raw = channel.unary_unary("/optiserve.v1.OptiServe/Generate")
        for garbage in (b"\xff\xff\xff\xff", b"\x0a\xff\x01", bytes(range(256))):
            with pytest.raises(grpc.RpcError) as info:
                raw(garbage, timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a valid protobuf message" in (info.value.details() or "")
        unknown = channel.unary_unary("/optiserve.v1.OptiServe/NoSuchMethod")
        with pytest.raises(grpc.RpcError) as info:
            unknown(b"", timeout=10)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    _still_serving(client)
