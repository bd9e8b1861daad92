"""Request ids: bounded and printable, in the first and last chunk only, and one id (the
message's, else the header's, else a new one) everywhere: headers, bodies, logs."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc
import pytest

from optiserve.app import ServerThread
from optiserve_client.v1 import optiserve_pb2 as pb
from optiserve_client.v1 import optiserve_pb2_grpc as pb_grpc

PROMPT = "Create a new socket using the given address family"


def _request(request_id: str = "", max_new_tokens: int = 12) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        request_id=request_id,
        prompt=PROMPT,
        sampling=pb.SamplingParams(max_new_tokens=max_new_tokens),
    )


@pytest.fixture
def stub(server: ServerThread) -> Iterator[pb_grpc.OptiServeStub]:
    with grpc.insecure_channel(server.target) as channel:
        yield pb_grpc.OptiServeStub(channel)


def _call(
    stub: pb_grpc.OptiServeStub,
    request: pb.GenerateRequest,
    metadata: tuple[tuple[str, str], ...],
    stream: bool,
) -> object:
    if stream:
        return list(stub.StreamGenerate(request, metadata=metadata, timeout=30))
    return stub.Generate(request, metadata=metadata, timeout=30)


def _header(call: grpc.Call) -> str:
    return dict(call.initial_metadata())["x-request-id"]


@pytest.mark.parametrize(
    ("body", "header", "needle"),
    [
        ("x" * 129, "", "the message's request_id is 129 characters long"),
        ("x" * 100_000, "", "the message's request_id is 100000 characters long"),
        ("with space", "", "the message's request_id has ' ' at position 4"),
        ("tab\there", "", "the message's request_id has '\\t' at position 3"),
        ("caf\u00e9", "", "the message's request_id has '\u00e9' at position 3"),
        ("", "y" * 129, "the x-request-id header is 129 characters long"),
        ("", "with space", "the x-request-id header has ' ' at position 4"),
        ("fine", "bad header", "the x-request-id header has ' '"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_bad_request_ids_are_invalid_argument(
    stub: pb_grpc.OptiServeStub, body: str, header: str, needle: str, stream: bool
) -> None:
    metadata = (("x-request-id", header),) if header else ()
    with pytest.raises(grpc.RpcError) as info:
        _call(stub, _request(body), metadata, stream)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details() or ""
    assert details.startswith(needle), details
    assert "at most 128 printable ASCII characters (0x21-0x7e" in details
    assert len(details) < 300, "the refused id is not echoed back"


def test_the_longest_allowed_id_is_served(stub: pb_grpc.OptiServeStub) -> None:
    longest = "".join(chr(0x21 + i % 94) for i in range(128))
    response, call = stub.Generate.with_call(
        _request(longest), metadata=(("x-request-id", longest),), timeout=30
    )
    assert response.request_id == longest == _header(call)


def test_a_stream_sends_the_id_on_its_first_and_last_chunk(stub: pb_grpc.OptiServeStub) -> None:
    call = stub.StreamGenerate(_request("r-stream"), timeout=30)
    chunks = list(call)
    assert len(chunks) > 2
    assert chunks[0].request_id == chunks[-1].request_id == "r-stream"
    assert [c.request_id for c in chunks[1:-1]] == [""] * (len(chunks) - 2)
    assert _header(call) == "r-stream"


def test_the_body_id_wins_over_the_header(
    stub: pb_grpc.OptiServeStub, caplog: pytest.LogCaptureFixture
) -> None:
    both = (("x-request-id", "from-header"),)
    response, call = stub.Generate.with_call(_request("from-body"), metadata=both, timeout=30)
    assert response.request_id == _header(call) == "from-body"
    stream = stub.StreamGenerate(_request("from-body"), metadata=both, timeout=30)
    chunks = list(stream)
    assert chunks[0].request_id == chunks[-1].request_id == _header(stream) == "from-body"
    with caplog.at_level(logging.INFO, logger="optiserve.rpc.interceptors"):
        bad = pb.GenerateRequest(request_id="from-body", model="no-such-model", prompt="x")
        with pytest.raises(grpc.RpcError) as info:
            stub.Generate(bad, metadata=both, timeout=30)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    failed = [r for r in caplog.records if r.getMessage() == "request failed"]
    assert [r.request_id for r in failed] == ["from-body"]  # type: ignore[attr-defined]


def test_the_header_id_is_used_when_the_body_has_none(stub: pb_grpc.OptiServeStub) -> None:
    header = (("x-request-id", "from-header"),)
    stream = stub.StreamGenerate(_request(), metadata=header, timeout=30)
    chunks = list(stream)
    assert chunks[0].request_id == chunks[-1].request_id == _header(stream) == "from-header"


def test_a_new_id_is_made_when_there_is_none(stub: pb_grpc.OptiServeStub) -> None:
    response, call = stub.Generate.with_call(_request(), timeout=30)
    assert len(response.request_id) == 32
    assert response.request_id == _header(call)
