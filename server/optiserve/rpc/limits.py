"""Admission: how many OptiServe RPCs may be in progress, in all, per connection and per
tenant; and each API key's own limits (requests per second, tokens per minute, streams:
:mod:`optiserve.domain.key_limits`).

Only the OptiServe service's methods are counted and refused; health and reflection are
never, so a server whose limits are full still answers its load balancer. (grpc's own
``maximum_concurrent_rpcs`` counts every method, health included, and holds a slot until
the last byte of a call has been delivered; it is not used.) A call's slot is held while
its handler runs and freed as soon as the handler returns or fails.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from optiserve.domain.errors import ResourceExhausted
from optiserve.domain.key_limits import KeyLimiter, KeyLimits, current_token_meter
from optiserve.rpc.auth import current_principal
from optiserve.rpc.handlers import Call, wrap_handler
from optiserve.rpc.servicer import tenant_of
from optiserve_client.v1 import optiserve_pb2 as pb

COUNTED_PREFIX = "/" + pb.DESCRIPTOR.services_by_name["OptiServe"].full_name + "/"


@dataclass(frozen=True)
class CallLimits:
    """The three limits (each >= 1)."""

    total: int
    per_connection: int
    per_tenant: int


class AdmissionInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses an OptiServe call over any limit with RESOURCE_EXHAUSTED; counts the rest.

    All calls run on the server's one event loop, so the counters need no lock.
    """

    def __init__(self, limits: CallLimits, key_limits: KeyLimits | None = None) -> None:
        self.limits = limits
        self.key_limits = key_limits or KeyLimits()
        self.keys = KeyLimiter()
        #: Seconds an admitted call took, exponentially averaged (the retry hint of a
        #: refusal: about when a slot frees).
        self.mean_call_s = 0.0
        self.in_flight = 0
        self.by_connection: Counter[str] = Counter()
        self.by_tenant: Counter[str] = Counter()

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: Any
    ) -> Any:
        """Count the handler's calls, OptiServe methods only."""
        handler = await continuation(details)
        if not details.method.startswith(COUNTED_PREFIX):
            return handler
        streaming = bool(handler is not None and handler.response_streaming)
        return wrap_handler(handler, lambda call: self._admitted(call, streaming))

    def _admitted(self, call: Call, streaming: bool) -> Call:
        async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
            connection, tenant = context.peer(), tenant_of(context)
            self._check(connection, tenant)
            principal = current_principal.get()
            caller, limits = f"tenant:{tenant}", self.key_limits
            if principal is not None:
                caller = f"key:{principal.key_id}"
                limits = limits.overridden(principal.limits)
            admission = self.keys.admit(caller, limits, streaming)
            if limits.tokens_per_min:
                current_token_meter.set(lambda tokens: self.keys.charge(caller, tokens))
            self.in_flight += 1
            self.by_connection[connection] += 1
            self.by_tenant[tenant] += 1
            started = time.monotonic()
            try:
                return await call(request, context)
            finally:
                took = time.monotonic() - started
                self.mean_call_s = (
                    took if not self.mean_call_s else (0.9 * self.mean_call_s + 0.1 * took)
                )
                self.in_flight -= 1
                _release(self.by_connection, connection)
                _release(self.by_tenant, tenant)
                self.keys.finish(admission)

        return run

    def _check(self, connection: str, tenant: str) -> None:
        limits = self.limits
        # About when a slot frees: the mean time calls took (1 s before any finished).
        hint = round(min(60.0, max(0.05, self.mean_call_s or 1.0)), 3)
        if self.in_flight >= limits.total:
            raise ResourceExhausted(
                f"the server already has {limits.total} OptiServe calls in progress, its "
                "limit (server.max_concurrent_rpcs); retry later, or raise the limit",
                retry_after_s=hint,
            )
        if self.by_connection[connection] >= limits.per_connection:
            raise ResourceExhausted(
                f"this connection already has {limits.per_connection} OptiServe calls in "
                "progress, the limit per connection (server.max_rpcs_per_connection); wait "
                "for one to finish, open another connection, or raise the limit",
                retry_after_s=hint,
            )
        if self.by_tenant[tenant] >= limits.per_tenant:
            raise ResourceExhausted(
                f"tenant {tenant} already has {limits.per_tenant} OptiServe calls in "
                "progress, the limit per tenant (server.max_rpcs_per_tenant; callers "
                "without an API key share the tenant anonymous); wait for one to finish, "
                "or raise the limit",
                retry_after_s=hint,
            )


def _release(counts: Counter[str], key: str) -> None:
    counts[key] -= 1
    if counts[key] <= 0:
        del counts[key]
