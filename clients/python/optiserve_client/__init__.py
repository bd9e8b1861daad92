"""optiserve_client: a typed sync and async client for the optiserve gRPC server.

from optiserve_client import Client
with Client("127.0.0.1:50051") as client:
    print(client.generate("Tell me about sockets", max_new_tokens=32).text)
    for chunk in client.stream("Tell me about threads"):
        print(chunk.text, end="", flush=True)
"""

from optiserve_client._client import (
    QUANT_METHODS,
    AsyncClient,
    Client,
    build_quantize_request,
)
from optiserve_client._errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InternalError,
    InvalidArgument,
    NotFound,
    OptiserveClientError,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from optiserve_client._tls import TLSOptionError
from optiserve_client._types import Chunk, Completion, Model, Timings, Usage

__all__ = [
    "QUANT_METHODS",
    "AsyncClient",
    "Chunk",
    "Client",
    "Completion",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InternalError",
    "InvalidArgument",
    "Model",
    "NotFound",
    "OptiserveClientError",
    "PermissionDenied",
    "ResourceExhausted",
    "TLSOptionError",
    "Timings",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Usage",
    "build_quantize_request",
]
