"""The domain errors of optiserve and the one table that maps them to gRPC status codes.

Exception tree::

    OptiserveError                 INTERNAL          (a bug: should never reach a client)
    ├── InvalidRequest             INVALID_ARGUMENT  bad field values, too-long prompts
    ├── ModelNotFound              NOT_FOUND         unknown model or route
    ├── CacheMiss                  NOT_FOUND         only-if-cached request with no entry
    ├── ResourceExhausted          RESOURCE_EXHAUSTED
    │   ├── QueueFull                                 the model's waiting queue is full
    │   ├── BudgetExceeded                            no model fits the budget
    │   └── RateLimited                               a provider answered 429
    ├── DeadlineExceeded           DEADLINE_EXCEEDED the request's deadline passed
    ├── FailedPrecondition         FAILED_PRECONDITION valid, but the chosen model cannot
    │                                                 honour it (e.g. a json_schema)
    ├── Unavailable                UNAVAILABLE       provider down, draining, model failed
    ├── Unauthenticated            UNAUTHENTICATED   missing, unknown or revoked API key
    ├── PermissionDenied           PERMISSION_DENIED the key lacks the scope the verb needs
    └── Unimplemented              UNIMPLEMENTED     a verb this build does not serve yet

Nothing here imports grpc: the table names status codes by their grpc name and the rpc
layer turns the name into ``grpc.StatusCode``. Messages say what was wrong and what to do.
"""

from __future__ import annotations


class OptiserveError(Exception):
    """Base of every error optiserve raises on purpose.

    ``retry_after_s`` (when set) is a hint sent to the client in trailing metadata.
    """

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class InvalidRequest(OptiserveError):
    """A request field is missing or out of range."""


class ModelNotFound(OptiserveError):
    """The request names a model or route this server does not serve."""


class CacheMiss(OptiserveError):
    """An only-if-cached request found no cached answer."""


class ResourceExhausted(OptiserveError):
    """A limit was reached; the client may retry later."""


class QueueFull(ResourceExhausted):
    """The model's waiting queue is full."""


class BudgetExceeded(ResourceExhausted):
    """No model fits the request's or tenant's budget."""


class RateLimited(ResourceExhausted):
    """A remote provider rate-limited the request."""


class DeadlineExceeded(OptiserveError):
    """The request's deadline passed before the answer was complete."""


class FailedPrecondition(OptiserveError):
    """The request is valid but the model it resolved to cannot honour part of it."""


class Unavailable(OptiserveError):
    """The server or a provider cannot serve now (draining, down, model failure)."""


class Unauthenticated(OptiserveError):
    """Credentials are missing or wrong."""


class PermissionDenied(OptiserveError):
    """The caller is authenticated but its key may not do this (a scope is missing)."""


class Unimplemented(OptiserveError):
    """The verb exists in the contract but this build does not serve it yet."""


class Internal(OptiserveError):
    """A failure inside the server that a retry is not known to fix (INTERNAL); the
    message says where, and the client also gets the request id to find it in the log."""


#: Domain error -> gRPC status code name. Most specific classes are found first by
#: walking the exception's MRO, so subclasses inherit their parent's code.
STATUS_CODES: dict[type[OptiserveError], str] = {
    InvalidRequest: "INVALID_ARGUMENT",
    ModelNotFound: "NOT_FOUND",
    CacheMiss: "NOT_FOUND",
    ResourceExhausted: "RESOURCE_EXHAUSTED",
    DeadlineExceeded: "DEADLINE_EXCEEDED",
    FailedPrecondition: "FAILED_PRECONDITION",
    Unavailable: "UNAVAILABLE",
    Unauthenticated: "UNAUTHENTICATED",
    PermissionDenied: "PERMISSION_DENIED",
    Unimplemented: "UNIMPLEMENTED",
    Internal: "INTERNAL",
    OptiserveError: "INTERNAL",
}


def status_code_name(error: BaseException) -> str:
    """The gRPC status code name for ``error`` (INTERNAL for anything unexpected)."""
    for cls in type(error).__mro__:
        code = STATUS_CODES.get(cls)
        if code is not None:
            return code
    return "INTERNAL"
