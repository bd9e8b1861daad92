"""The standard health service and server reflection."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from optiserve.app import ServerThread
from optiserve_client import Client, NotFound
from optiserve_client._health import decode_status, encode_request


def test_health_serving(server: ServerThread) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "optiserve.v1.OptiServe"):
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as info:
            stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_client_health_without_grpc_health(client: Client) -> None:
    assert client.health() == "SERVING"
    assert client.health("optiserve.v1.OptiServe") == "SERVING"
    with pytest.raises(NotFound):
        client.health("nope")


def test_the_clients_health_codec_matches_health_proto() -> None:
    """The client encodes the two health messages by hand (no grpcio-health-checking):
    byte for byte what the generated health_pb2 makes and reads."""
    for service in ("", "optiserve.v1.OptiServe", "é" * 200):
        expected = health_pb2.HealthCheckRequest(service=service).SerializeToString()
        assert encode_request(service) == expected
    for name, value in health_pb2.HealthCheckResponse.ServingStatus.items():
        assert (
            decode_status(health_pb2.HealthCheckResponse(status=value).SerializeToString()) == name
        )
    serving = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
    unknown_fields = b"\x12\x03abc" + b"\x1d" + bytes(4) + b"\x21" + bytes(8) + b"\x28\x96\x01"
    assert decode_status(unknown_fields + serving.SerializeToString()) == "SERVING"
    assert decode_status(b"\x08\x07") == "UNKNOWN_7"
    for malformed in (b"\x08", b"\x08\x80", b"\x12\x05ab", b"\x0b"):
        with pytest.raises(ValueError, match="malformed"):
            decode_status(malformed)


def test_reflection_lists_and_describes_the_service(server: ServerThread) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="optiserve.v1.OptiServe"),
        ]
        responses = list(stub.ServerReflectionInfo(iter(requests), timeout=5))
        names = {s.name for s in responses[0].list_services_response.service}
        assert {"optiserve.v1.OptiServe", "grpc.health.v1.Health"} <= names
        files = responses[1].file_descriptor_response.file_descriptor_proto
        proto = descriptor_pb2.FileDescriptorProto.FromString(files[0])
        methods = {m.name for m in proto.service[0].method}
        assert methods == {
            "Generate",
            "StreamGenerate",
            "Quantize",
            "Benchmark",
            "ListModels",
            "GetUsage",
        }
