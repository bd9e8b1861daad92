"""Request ids: one id (the message's, else the header's, else a new one) everywhere:
headers, bodies, logs."""

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


def _header(call: grpc.Call) -> str:
    return dict(call.initial_metadata())["x-request-id"]


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
