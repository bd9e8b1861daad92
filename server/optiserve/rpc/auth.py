"""Authentication of OptiServe calls by API key, and their scopes.

A key is read from ``authorization: Bearer <key>`` metadata, or from ``x-api-key``. The
key store (:mod:`optiserve.auth_keys`) says whose it is. Health and reflection are never
checked. With ``auth.required``:

- no key, an unknown key or a revoked key -> UNAUTHENTICATED;
- Quantize without the ``quantize`` scope, Benchmark without ``benchmark`` ->
  PERMISSION_DENIED.

Without it, a known key still gets its tenant, a revoked key is still refused, and an
unknown key or none is served as before (its tenant a hash of the key, or "anonymous").

The key itself is never put in a message, a log line or a trace: a caller is named by
its key's id only. The authenticated caller of the running call is in
:data:`current_principal` (read by :func:`optiserve.rpc.servicer.tenant_of`).
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc

from optiserve.auth_keys import KeyStore
from optiserve.domain.errors import PermissionDenied, Unauthenticated
from optiserve.rpc.handlers import Call, wrap_handler
from optiserve_client.v1 import optiserve_pb2 as pb

API_KEY_HEADER = "x-api-key"
AUTHORIZATION_HEADER = "authorization"
_SERVICE = pb.DESCRIPTOR.services_by_name["OptiServe"].full_name
CHECKED_PREFIX = "/" + _SERVICE + "/"
#: Methods that need a scope (when auth is required), by full method name.
SCOPE_OF_METHOD = {
    f"{CHECKED_PREFIX}Quantize": "quantize",
    f"{CHECKED_PREFIX}Benchmark": "benchmark",
}
_HOW = (
    "send it as `authorization: Bearer <key>` metadata (or `x-api-key: <key>`); an operator "
    "creates keys with `optiserve keys create --tenant NAME`"
)


@dataclass(frozen=True)
class Principal:
    """Who a call was authenticated as: the key's id (never the key), tenant, scopes and
    the key's own limits."""

    key_id: str
    tenant: str
    scopes: tuple[str, ...]
    limits: Mapping[str, float] = field(default_factory=dict, hash=False)


#: The authenticated caller of the call running now (None: no known key).
current_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "optiserve_principal", default=None
)


def presented_key(metadata: Any) -> str | None:
    """The key a call carries: the Bearer token of ``authorization``, else ``x-api-key``.

    An ``authorization`` value that is not a Bearer token raises Unauthenticated.
    """
    bearer: str | None = None
    api_key: str | None = None
    for key, value in metadata or ():
        if key == AUTHORIZATION_HEADER and bearer is None:
            scheme, _, token = str(value).strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated(
                    "the authorization metadata is not of the form `Bearer <key>` "
                    f"(scheme {scheme[:16]!r}); {_HOW}"
                )
            bearer = token.strip()
        elif key == API_KEY_HEADER and value and api_key is None:
            api_key = str(value)
    return bearer or api_key


def unverified_key(metadata: Any) -> str | None:
    """The key a call carries, or None (a malformed authorization header counts as none)."""
    try:
        return presented_key(metadata)
    except Unauthenticated:
        return None


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Checks the key and scope of every OptiServe call; sets :data:`current_principal`."""

    def __init__(self, store: KeyStore, required: bool) -> None:
        self.store = store
        self.required = required

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: Any
    ) -> Any:
        """Wrap OptiServe handlers with the check; health and reflection pass untouched."""
        handler = await continuation(details)
        method = details.method
        if not method.startswith(CHECKED_PREFIX):
            return handler

        def around(call: Call) -> Call:
            async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
                principal = self.authenticate(context.invocation_metadata(), method)
                current_principal.set(principal)
                return await call(request, context)

            return run

        return wrap_handler(handler, around)

    def authenticate(self, metadata: Any, method: str) -> Principal | None:
        """The caller of ``method``, None for an anonymous or unknown caller allowed in;
        raises Unauthenticated or PermissionDenied."""
        key = presented_key(metadata)
        if key is None:
            if self.required:
                raise Unauthenticated(f"this server requires an API key and none was sent; {_HOW}")
            return None
        record = self.store.find(key)
        if record is None:
            if self.required:
                raise Unauthenticated(
                    "the API key sent is not known to this server (mistyped, or from another "
                    f"server); check the key, or ask an operator for a new one. {_HOW}"
                )
            return None
        if record.revoked:
            raise Unauthenticated(
                f"the API key sent (id {record.id}) was revoked on {record.revoked_at}; ask "
                "an operator for a new key (`optiserve keys create`)"
            )
        scope = SCOPE_OF_METHOD.get(method)
        if self.required and scope is not None and scope not in record.scopes:
            verb = method.rsplit("/", 1)[-1]
            raise PermissionDenied(
                f"the API key sent (id {record.id}, tenant {record.tenant}) may not call "
                f"{verb}: it lacks the {scope!r} scope; ask an operator for a key created "
                f"with `optiserve keys create --tenant {record.tenant} --scope {scope}`"
            )
        return Principal(record.id, record.tenant, record.scopes, record.limits)
