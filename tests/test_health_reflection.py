"""The standard health service and server reflection."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from optiserve.app import ServerThread


def test_health_serving(server: ServerThread) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "optiserve.v1.OptiServe"):
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as info:
            stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


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
