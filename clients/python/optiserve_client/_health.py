"""The standard gRPC health check, ``/grpc.health.v1.Health/Check``, with no extra package.

Its two messages are tiny, so they are encoded here by hand instead of generated from
health.proto: the server process imports grpc_health's ``health_pb2``, and protobuf
refuses a second copy of the same message names in one process.

    message HealthCheckRequest { string service = 1; }
    message HealthCheckResponse {
      enum ServingStatus { UNKNOWN = 0; SERVING = 1; NOT_SERVING = 2; SERVICE_UNKNOWN = 3; }
      ServingStatus status = 1;
    }
"""

from __future__ import annotations

from typing import Any

CHECK_METHOD = "/grpc.health.v1.Health/Check"
STATUS_NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}

_WIRE_VARINT, _WIRE_I64, _WIRE_LEN, _WIRE_I32 = 0, 1, 2, 5


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        if not value:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(data) and shift < 64:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise ValueError("malformed HealthCheckResponse: truncated varint")


def encode_request(service: str) -> bytes:
    """A serialized ``HealthCheckRequest{service}`` (empty for the whole server)."""
    data = service.encode()
    return b"\x0a" + _varint(len(data)) + data if data else b""


def decode_status(data: bytes) -> str:
    """The status name of a serialized ``HealthCheckResponse``, e.g. ``"SERVING"``; unknown
    fields are skipped, an unknown status value reads ``"UNKNOWN_<n>"``."""
    status, pos = 0, 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == _WIRE_VARINT:
            value, pos = _read_varint(data, pos)
            if field == 1:
                status = value
        elif wire == _WIRE_LEN:
            length, pos = _read_varint(data, pos)
            pos += length
        elif wire in (_WIRE_I64, _WIRE_I32):
            pos += 8 if wire == _WIRE_I64 else 4
        else:
            raise ValueError(f"malformed HealthCheckResponse: wire type {wire}")
    if pos > len(data):
        raise ValueError("malformed HealthCheckResponse: truncated field")
    return STATUS_NAMES.get(status, f"UNKNOWN_{status}")


def check_method(channel: Any) -> Any:
    """The Check call on ``channel`` (a ``grpc.Channel`` or ``grpc.aio.Channel``): it takes
    the service name and returns the status name."""
    return channel.unary_unary(
        CHECK_METHOD, request_serializer=encode_request, response_deserializer=decode_status
    )
