"""The standard health service and server reflection."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from optiserve.app import ServerThread
from optiserve.config import Config
from optiserve_client import Client, NotFound
from optiserve_client._health import decode_status, encode_request
from optiserve_client.v1 import optiserve_pb2 as pb
from optiserve_client.v1 import optiserve_pb2_grpc as pb_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
#: What a grpcio client sets to check health itself (over Watch) before it sends an RPC.
CLIENT_SIDE_HEALTH = json.dumps(
    {"healthCheckConfig": {"serviceName": ""}, "loadBalancingConfig": [{"round_robin": {}}]}
)


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


def test_watch_streams_changes_until_the_server_drains(make_config: Callable[..., Config]) -> None:
    thread = ServerThread(make_config(server={"drain_announce_s": 0.5}))
    thread.start()
    stopper = threading.Thread(target=thread.stop, kwargs={"grace_s": 1.0})
    try:
        with grpc.insecure_channel(thread.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            watches = [
                stub.Watch(health_pb2.HealthCheckRequest(service=name), timeout=30)
                for name in ("", "optiserve.v1.OptiServe", "nope")
            ]
            first = [next(w).status for w in watches]
            assert first == [SERVING, SERVING, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN]
            stopper.start()
            assert [next(w).status for w in watches[:2]] == [NOT_SERVING, NOT_SERVING]
            for w in watches:
                w.cancel()
    finally:
        if stopper.ident is None:
            thread.stop()
        else:
            stopper.join(30)


def test_client_side_health_checking_lets_rpcs_through(server: ServerThread) -> None:
    options = [("grpc.service_config", CLIENT_SIDE_HEALTH)]
    with grpc.insecure_channel(server.target, options=options) as channel:
        stub = pb_grpc.OptiServeStub(channel)
        request = pb.GenerateRequest(prompt="hello", sampling=pb.SamplingParams(max_new_tokens=2))
        response = stub.Generate(request, timeout=30)
        assert response.summary.usage.completion_tokens >= 1
        chunks = list(stub.StreamGenerate(request, timeout=30))
        assert chunks[-1].HasField("summary")


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_is_served_as_v1_and_v1alpha(server: ServerThread, version: str) -> None:
    # The v1 and v1alpha messages are the same on the wire (only the package differs), so
    # the v1alpha classes speak to both.
    with grpc.insecure_channel(server.target) as channel:
        info = channel.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(
                file_containing_symbol=f"grpc.reflection.{version}.ServerReflection"
            ),
        ]
        listed, described = list(info(iter(requests), timeout=5))
        names = {s.name for s in listed.list_services_response.service}
        assert names == {
            "optiserve.v1.OptiServe",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        }
        files = described.file_descriptor_response.file_descriptor_proto
        proto = descriptor_pb2.FileDescriptorProto.FromString(files[0])
        assert proto.package == f"grpc.reflection.{version}"
        assert [s.name for s in proto.service] == ["ServerReflection"]
