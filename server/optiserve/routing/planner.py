"""From a request to a plan: which models to try, in order, for the text after compression.

A request names a model (the plan is that model alone) or a route (the router scores the
prompt and returns a chain: the chosen model, then its fallbacks). Prompt compression, when
asked for or switched on by the router under budget pressure, rewrites the request here, so
the cache, the reservation and the model all see the same, compressed prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from optiserve.domain.errors import FailedPrecondition, ModelNotFound
from optiserve.domain.pricing import BudgetPressure
from optiserve.domain.types import (
    CompressionMode,
    CompressionTrace,
    GenerateRequest,
    ModelInfo,
    RouteTrace,
)
from optiserve.models.catalogue import ModelCatalogue
from optiserve.routing.compression import (
    CompressedMessages,
    CompressionResult,
    compress,
    compress_messages,
)
from optiserve.routing.router import Router


@dataclass(frozen=True)
class Plan:
    """What to try for one request."""

    #: What the request named (a model or a route, the default filled in): the cache
    #: partition its answer is looked up and stored under.
    target: str
    #: Models to try, in order (the first that answers wins).
    chain: tuple[str, ...]
    route_reason: str
    route: RouteTrace
    compression: CompressionTrace
    #: The request to send: prompt or messages compressed when compression ran.
    request: GenerateRequest


class Planner:
    """Resolves a request's model or route to a :class:`Plan`."""

    def __init__(self, catalogue: ModelCatalogue, router: Router, default: str) -> None:
        names = {m.name for m in catalogue.models()}
        if default not in names and not router.is_route(default):
            raise ValueError(f"default {default!r} is neither a model nor a route")
        self.catalogue = catalogue
        self._router = router
        self.default = default

    @classmethod
    def of_models(cls, catalogue: ModelCatalogue, default: str) -> Planner:
        """A planner without routes (every request names a model or takes ``default``)."""
        return cls(catalogue, Router((), {m.name: m for m in catalogue.models()}, 1.0), default)

    def models(self) -> list[ModelInfo]:
        """Every model and every route, the default marked."""
        infos = self.catalogue.models() + self._router.route_infos()
        return [replace(m, default=m.name == self.default) for m in infos]

    def routes(self, request: GenerateRequest) -> bool:
        """True when ``request`` goes to a route (whose choice depends on budget pressure)."""
        return self._router.is_route(request.model or self.default)

    def plan(self, request: GenerateRequest, pressure: BudgetPressure) -> Plan:
        """The plan for ``request``; ``pressure`` (the tenant's budget) matters for routes.

        Raises ModelNotFound for an unknown name, BudgetExceeded when nothing fits the
        budget, FailedPrecondition when no model can honour the request's json_schema.
        """
        name = request.model or self.default
        reason = "requested" if request.model else "default route"
        if self._router.is_route(name):
            return self._plan_route(name, request, pressure, reason)
        if not self.catalogue.has(name):
            raise ModelNotFound(
                f"unknown model or route {name!r}; this server serves: "
                + ", ".join(sorted(m.name for m in self.models()))
            )
        request, compression = _compressed(request, request.compression, "")
        return Plan(name, (name,), reason, RouteTrace(), compression, request)

    def _plan_route(
        self, route: str, request: GenerateRequest, pressure: BudgetPressure, reason: str
    ) -> Plan:
        text = request.sent_text()
        max_new = request.sampling.max_new_tokens
        if max_new is None:
            infos = (self.catalogue.backend(n).info for n in self._route_models(route))
            max_new = max((i.default_max_new_tokens for i in infos), default=0)
        decision = self._router.decide(route, request, text, max_new, pressure)
        chain = decision.chain
        if request.json_schema:
            chain = tuple(n for n in chain if self.catalogue.backend(n).info.structured_output)
            if not chain:
                raise FailedPrecondition(
                    f"route {route!r} has no model that honours response_format.json_schema "
                    f"among {', '.join(decision.chain)}; omit the schema or use a route with "
                    "a remote model"
                )
        note = ""
        if decision.compression is not request.compression:
            note = f"switched on by route {route!r} under budget pressure"
        request, compression = _compressed(request, decision.compression, note)
        return Plan(
            route,
            chain,
            f"route {route!r}: {decision.trace.rule}",
            decision.trace,
            compression,
            request,
        )

    def _route_models(self, route: str) -> tuple[str, ...]:
        for info in self._router.route_infos():
            if info.name == route:
                return info.route_models
        return ()


def _compressed(
    request: GenerateRequest, mode: CompressionMode, note: str
) -> tuple[GenerateRequest, CompressionTrace]:
    """``request`` with its prompt compressed by ``mode``, and what compression did."""
    if mode is CompressionMode.OFF:
        return request, CompressionTrace()
    result: CompressionResult | CompressedMessages
    if request.messages:
        result = compress_messages(request.messages, mode)
        request = replace(request, messages=result.messages)
    else:
        result = compress(request.prompt, mode)
        request = replace(request, prompt=result.text)
    return request, CompressionTrace(
        mode=mode.value,
        tokens_before=result.tokens_before,
        tokens_after=result.tokens_after,
        note="; ".join(n for n in (note, result.note) if n),
    )
