"""Which model of a route answers a request, and which ones to fall back to.

A route (``[[routes]]``) is a name a request may use instead of a model. For each request
the router

1. scores the prompt's complexity (:mod:`optiserve.routing.complexity`) and turns the
   score into the tier it asks for through the route's thresholds;
2. under budget pressure (spend >= ``pressure_fraction`` of a limit) asks one tier lower,
   and once the limit is spent lets only free models serve;
3. keeps the models that fit: context (estimated prompt tokens + max_new_tokens), the
   request's quality floor, its max cost (each model's worst case for this prompt);
4. picks the cheapest fitting model of the asked tier or above (ties: lower tier, higher
   quality, name); when none of those fits, the best of the cheaper ones;
5. lists the fallbacks: the other fitting models of the asked tier or above, cheapest first,
   then the lower tiers, best first; the chain holds at most ``max_attempts`` models.

The decision's trace says which features and which rule chose the model. Everything that
does not depend on the request is prepared at construction: a decision costs a prompt
scan and a few comparisons (p99 well under a millisecond).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from optiserve.domain.errors import (
    BudgetExceeded,
    FailedPrecondition,
    InvalidRequest,
    ModelNotFound,
)
from optiserve.domain.pricing import BudgetPressure, prompt_token_bound, prompt_token_estimate
from optiserve.domain.types import (
    CompressionMode,
    GenerateRequest,
    ModelInfo,
    ModelKind,
    RouteTrace,
    Tier,
)
from optiserve.routing.complexity import score
from optiserve.routing.config import RouteConfig

_TIERS_BY_RANK = sorted(Tier, key=lambda t: t.rank)


@dataclass(frozen=True)
class RouteDecision:
    """What the router chose for one request."""

    #: The chosen model first, then its fallbacks (at most the route's max_attempts).
    chain: tuple[str, ...]
    #: Why (the service fills ``premium_cost_usd`` from the measured tokens).
    trace: RouteTrace
    #: The compression to apply: the request's, or lossless under budget pressure.
    compression: CompressionMode


def asked_tier(complexity: float, route: RouteConfig) -> Tier:
    """The tier a complexity score asks for under ``route``'s thresholds."""
    if complexity < route.local_below:
        return Tier.LOCAL
    if complexity < route.cheap_below:
        return Tier.CHEAP
    if complexity < route.premium_from:
        return Tier.BALANCED
    return Tier.PREMIUM


@dataclass(frozen=True)
class _Route:
    config: RouteConfig
    models: tuple[ModelInfo, ...]
    #: The route's most capable model (highest tier, then quality): the counterfactual.
    premium: ModelInfo
    info: ModelInfo


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Router:
    """Chooses a model chain for requests that name a route."""

    def __init__(
        self,
        routes: Sequence[RouteConfig],
        models: Mapping[str, ModelInfo],
        pressure_fraction: float,
        *,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        """Raises ValueError naming the route and the model when a route lists a model
        that is not in ``models`` (or lists one twice, or takes a model's name)."""
        if not 0.0 < pressure_fraction <= 1.0:
            raise ValueError(f"pressure_fraction must be in (0, 1], got {pressure_fraction}")
        self._pressure_fraction = pressure_fraction
        self._clock = clock
        self._routes: dict[str, _Route] = {}
        for config in routes:
            if config.name in self._routes:
                raise ValueError(f"route {config.name!r} is defined twice")
            if config.name in models:
                raise ValueError(f"route {config.name!r} has the name of a model; rename one")
            self._routes[config.name] = _prepare(config, models)

    def route_infos(self) -> list[ModelInfo]:
        """Every route as ListModels shows it (kind ROUTE)."""
        return [r.info for r in self._routes.values()]

    def is_route(self, name: str) -> bool:
        """True when ``name`` is a route rather than a model."""
        return name in self._routes

    def decide(
        self,
        route: str,
        request: GenerateRequest,
        text: str,
        max_new_tokens: int,
        pressure: BudgetPressure,
    ) -> RouteDecision:
        """The chain of models for ``request`` on ``route``, ``text`` being all its prompt.

        Raises ModelNotFound for an unknown route, InvalidRequest when the prompt fits no
        model's context, FailedPrecondition when min_quality is above every fitting model,
        BudgetExceeded when the spent limit leaves no free model or max_cost_usd is below
        the cheapest fitting model's worst case.
        """
        prepared = self._routes.get(route)
        if prepared is None:
            raise ModelNotFound(
                f"unknown route {route!r}; routes: {', '.join(sorted(self._routes)) or 'none'}"
            )
        config = prepared.config
        complexity, features = score(text)
        tier = asked_tier(complexity, config)
        rule = [f"complexity {complexity:.2f} asks tier >= {tier.value}"]
        pressured = pressure.fraction >= self._pressure_fraction
        if pressure.reached:
            rule.append(f"{_limit(pressure)} is spent: only free models")
        elif pressured and tier.rank > 0:
            tier = _TIERS_BY_RANK[tier.rank - 1]
            rule.append(
                f"budget pressure {pressure.fraction:.0%} of {_limit(pressure)} "
                f">= {self._pressure_fraction:.0%}: lowered to tier >= {tier.value}"
            )
        candidates, costs, left_out = self._candidates(
            prepared, request, text, max_new_tokens, pressure
        )
        candidates.sort(key=lambda m: (costs[m.name], m.tier.rank, -m.quality, m.name))
        upper = [m for m in candidates if m.tier.rank >= tier.rank]
        lower = sorted(
            (m for m in candidates if m.tier.rank < tier.rank),
            key=lambda m: (-m.tier.rank, -m.quality, costs[m.name], m.name),
        )
        chosen = (upper or lower)[0]
        if upper:
            rule.append(f"cheapest fitting model of tier >= {tier.value}: {chosen.name!r}")
        else:
            rule.append(
                f"no fitting model of tier >= {tier.value}; the best cheaper one: "
                f"{chosen.name!r} ({chosen.tier.value})"
            )
        rule[-1] += f" (worst case {_usd(costs[chosen.name])})"
        if left_out:
            rule.append("left out: " + ", ".join(left_out))
        compression = request.compression
        if config.compress_under_pressure and pressured and compression is CompressionMode.OFF:
            compression = CompressionMode.LOSSLESS
        return RouteDecision(
            chain=tuple(m.name for m in (upper + lower)[: config.max_attempts]),
            trace=RouteTrace(
                route=route,
                rule="; ".join(rule),
                features=features.pairs(),
                complexity=complexity,
                tier=tier.value,
                budget_pressure=pressure.fraction,
                premium_model=prepared.premium.name,
            ),
            compression=compression,
        )

    def _candidates(
        self,
        prepared: _Route,
        request: GenerateRequest,
        text: str,
        max_new_tokens: int,
        pressure: BudgetPressure,
    ) -> tuple[list[ModelInfo], dict[str, Decimal], list[str]]:
        """The route's models that fit the request, their worst-case costs, and why each
        other model was left out; raises when none fits (see :meth:`decide`)."""
        name = prepared.config.name
        left_out: list[str] = []
        needed = prompt_token_estimate(text) + max_new_tokens
        fitting = []
        for m in prepared.models:
            if needed > m.context_length:
                left_out.append(f"{m.name!r} (context {m.context_length} < {needed} tokens)")
            elif 0 < m.max_new_tokens_cap < max_new_tokens:
                left_out.append(f"{m.name!r} (max_new_tokens cap {m.max_new_tokens_cap})")
            else:
                fitting.append(m)
        if not fitting:
            largest = max(prepared.models, key=lambda m: m.context_length)
            raise InvalidRequest(
                f"the prompt (about {needed - max_new_tokens} tokens) plus max_new_tokens "
                f"{max_new_tokens} fits no model of route {name!r} (largest context: "
                f"{largest.name!r}, {largest.context_length} tokens); shorten the prompt or "
                "lower max_new_tokens"
            )
        if request.min_quality is not None:
            floor = request.min_quality
            good = [m for m in fitting if m.quality >= floor]
            if not good:
                best = max(fitting, key=lambda m: (m.quality, m.name))
                raise FailedPrecondition(
                    f"min_quality {floor:g} is above every fitting model of route {name!r} "
                    f"(best: {best.name!r}, quality {best.quality:g}); lower min_quality or "
                    "name a model"
                )
            left_out += [
                f"{m.name!r} (quality {m.quality:g} < {floor:g})"
                for m in fitting
                if m.quality < floor
            ]
            fitting = good
        bound = prompt_token_bound(text)
        costs = {m.name: m.prices.worst_case(bound, max_new_tokens) for m in fitting}
        if pressure.reached:
            free = [m for m in fitting if m.prices.free]
            if not free:
                raise self._spent(name, pressure)
            left_out += [f"{m.name!r} (not free)" for m in fitting if not m.prices.free]
            fitting = free
        if request.max_cost_usd is not None:
            max_cost = Decimal(str(request.max_cost_usd))
            affordable = [m for m in fitting if costs[m.name] <= max_cost]
            if not affordable:
                cheapest = min(fitting, key=lambda m: (costs[m.name], m.name))
                raise BudgetExceeded(
                    f"budget.max_cost_usd {_usd(max_cost)} is below the cheapest fitting model "
                    f"{cheapest.name!r} (worst case {_usd(costs[cheapest.name])} for this "
                    f"prompt and max_new_tokens {max_new_tokens}); raise max_cost_usd or "
                    "lower max_new_tokens"
                )
            left_out += [
                f"{m.name!r} (worst case {_usd(costs[m.name])} > max cost {_usd(max_cost)})"
                for m in fitting
                if costs[m.name] > max_cost
            ]
            fitting = affordable
        return fitting, costs, left_out

    def _spent(self, route: str, pressure: BudgetPressure) -> BudgetExceeded:
        """The error for a spent limit when the route has no free model that fits."""
        until, retry_after = "until it resets", None
        if pressure.resets_at is not None:
            resets_at = _as_utc(pressure.resets_at)
            until = f"until it resets at {resets_at:%Y-%m-%dT%H:%M:%SZ}"
            retry_after = max(0.0, (resets_at - self._clock()).total_seconds())
        return BudgetExceeded(
            f"{_limit(pressure)} is spent: only free local models may serve {until}; none "
            f"of route {route!r} fits",
            retry_after_s=retry_after,
        )


def _prepare(config: RouteConfig, models: Mapping[str, ModelInfo]) -> _Route:
    """A route's models and the ModelInfo ListModels shows for it."""
    infos: list[ModelInfo] = []
    for name in config.models:
        info = models.get(name)
        if info is None:
            raise ValueError(
                f"route {config.name!r} names unknown model {name!r}; models: "
                + ", ".join(sorted(models))
            )
        if any(m.name == name for m in infos):
            raise ValueError(f"route {config.name!r} lists model {name!r} twice")
        infos.append(info)
    premium = min(infos, key=lambda m: (-m.tier.rank, -m.quality, m.name))
    caps = [m.max_new_tokens_cap for m in infos]
    return _Route(
        config=config,
        models=tuple(infos),
        premium=premium,
        info=ModelInfo(
            name=config.name,
            kind=ModelKind.ROUTE,
            provider="route",
            source="",
            context_length=max(m.context_length for m in infos),
            description="routes each prompt to the cheapest fitting model of: "
            + ", ".join(config.models),
            tier=premium.tier,
            quality=max(m.quality for m in infos),
            max_new_tokens_cap=0 if 0 in caps else max(caps),
            default_max_new_tokens=max(m.default_max_new_tokens for m in infos),
            structured_output=any(m.structured_output for m in infos),
            route_models=config.models,
        ),
    )


def _limit(pressure: BudgetPressure) -> str:
    return pressure.limit or "the budget limit"


def _as_utc(moment: datetime) -> datetime:
    """``moment`` in UTC (a naive datetime is taken to be UTC already)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _usd(amount: Decimal) -> str:
    """A dollar amount with three significant digits, e.g. ``$0.00042``, ``$1.50``."""
    if amount == 0:
        return "$0"
    digits = max(2, 3 - amount.adjusted() - 1)
    text = f"{amount:.{digits}f}"
    if "." in text:
        whole, fraction = text.split(".")
        text = whole + "." + (fraction.rstrip("0").ljust(2, "0"))
    return "$" + text
