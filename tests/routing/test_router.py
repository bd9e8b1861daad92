"""The router: tiers from the labelled prompt set, budget transitions, filters, fallbacks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from routinghelpers import CATALOGUE, model, read_jsonl

from optiserve.domain.errors import (
    BudgetExceeded,
    FailedPrecondition,
    InvalidRequest,
    ModelNotFound,
)
from optiserve.domain.pricing import BudgetPressure, prompt_token_bound
from optiserve.domain.types import (
    CompressionMode,
    GenerateRequest,
    ModelKind,
    SamplingParams,
    Tier,
)
from optiserve.routing.complexity import score
from optiserve.routing.config import RouteConfig
from optiserve.routing.router import RouteDecision, Router, asked_tier

ALL = ("local-small", "cheap-mini", "cheap-alt", "balanced-mid", "premium-large")
ONE_PER_TIER = ("local-small", "cheap-mini", "balanced-mid", "premium-large")
TIERS = [t.value for t in Tier]
NOW = datetime(2026, 3, 1, 21, 0, tzinfo=UTC)
CODE = "Write a Python function that merges two sorted lists, with unit tests."
GREETING = "hi"
#: A prompt in the balanced band of the default thresholds.
EXPLAIN = "Explain why the sky is blue and why sunsets are red."


def router(*routes: RouteConfig, pressure_fraction: float = 0.9) -> Router:
    routes = routes or (RouteConfig("auto", ALL),)
    return Router(routes, CATALOGUE, pressure_fraction, clock=lambda: NOW)


def decide(
    r: Router,
    text: str,
    *,
    route: str = "auto",
    max_new_tokens: int = 64,
    pressure: BudgetPressure | None = None,
    **request_fields: Any,
) -> RouteDecision:
    request = GenerateRequest(request_id="r", prompt=text, model=route, **request_fields)
    return r.decide(route, request, text, max_new_tokens, pressure or BudgetPressure())


def tier_of(decision: RouteDecision) -> str:
    return CATALOGUE[decision.chain[0]].tier.value


@pytest.mark.parametrize(
    ("name", "min_accuracy"), [("labelled_prompts.jsonl", 0.9), ("holdout_prompts.jsonl", 0.8)]
)
def test_labelled_prompts_get_their_tier(name: str, min_accuracy: float) -> None:
    """The labelled set (tuned on) and the held-out set (never tuned on): the router picks
    the expected tier for most prompts and is never two tiers off."""
    r = router(RouteConfig("auto", ONE_PER_TIER))
    rows = read_jsonl(name)
    picked = [tier_of(decide(r, row["prompt"])) for row in rows]
    hits = sum(p == row["tier"] for p, row in zip(picked, rows, strict=True))
    far = [
        (row["prompt"][:40], row["tier"], p)
        for p, row in zip(picked, rows, strict=True)
        if abs(TIERS.index(p) - TIERS.index(row["tier"])) >= 2
    ]
    assert len(rows) >= (40 if name.startswith("labelled") else 15)
    assert hits / len(rows) >= min_accuracy, (hits, len(rows))
    assert far == []


def test_asked_tier_follows_the_route_thresholds() -> None:
    config = RouteConfig("auto", ALL, local_below=0.1, cheap_below=0.3, premium_from=0.8)
    assert [asked_tier(s, config) for s in (0.0, 0.1, 0.29, 0.3, 0.79, 0.8, 1.0)] == [
        Tier.LOCAL, Tier.CHEAP, Tier.CHEAP, Tier.BALANCED, Tier.BALANCED, Tier.PREMIUM,
        Tier.PREMIUM,
    ]  # fmt: skip
    no_local = RouteConfig("auto", ALL, local_below=0.0)
    assert asked_tier(0.0, no_local) is Tier.CHEAP


def test_trace_says_which_features_and_rule_chose() -> None:
    decision = decide(router(), CODE)
    complexity, features = score(CODE)
    trace = decision.trace
    assert decision.chain[0] == "premium-large"
    assert trace.route == "auto"
    assert trace.complexity == complexity
    assert trace.tier == "premium"
    assert dict(trace.features)["code"] == features.code > 0
    assert {"tokens", "length", "code", "maths", "asks", "reasoning"} <= dict(trace.features).keys()
    assert "cheapest fitting model of tier >= premium: 'premium-large'" in trace.rule
    assert trace.premium_model == "premium-large"
    assert trace.budget_pressure == 0.0
    assert decision.compression is CompressionMode.OFF


def test_cheapest_model_of_the_asked_tier_or_above_wins() -> None:
    # Both cheap models fit a cheap prompt: the cheaper one wins, not the better one.
    decision = decide(router(), "What is the capital of France?")
    assert decision.trace.tier == "cheap"
    assert decision.chain[0] == "cheap-mini"


def test_fallback_chain_order_and_cap() -> None:
    r = router(RouteConfig("auto", ALL, max_attempts=5))
    # Balanced asked: balanced then premium (cost ascending), then the lower tiers best first.
    assert decide(r, EXPLAIN).chain == (
        "balanced-mid", "premium-large", "cheap-alt", "cheap-mini", "local-small",
    )  # fmt: skip
    assert decide(router(), EXPLAIN).chain == ("balanced-mid", "premium-large", "cheap-alt")
    single = router(RouteConfig("auto", ALL, max_attempts=1))
    assert decide(single, EXPLAIN).chain == ("balanced-mid",)


def test_equal_costs_break_ties_by_tier_then_quality_then_name() -> None:
    models = {
        m.name: m
        for m in (
            model("b-cheap", Tier.CHEAP, 0.5, "1", "1"),
            model("a-cheap", Tier.CHEAP, 0.5, "1", "1"),
            model("good-cheap", Tier.CHEAP, 0.7, "1", "1"),
            model("same-price-balanced", Tier.BALANCED, 0.9, "1", "1"),
        )
    }
    r = Router([RouteConfig("auto", tuple(models), max_attempts=4)], models, 0.9)
    assert decide(r, "What is the capital of France?").chain == (
        "good-cheap", "a-cheap", "b-cheap", "same-price-balanced",
    )  # fmt: skip


def test_no_model_of_the_asked_tier_fits_takes_the_best_cheaper_one() -> None:
    r = router(RouteConfig("auto", ("local-small", "cheap-mini", "cheap-alt")))
    decision = decide(r, CODE)
    assert decision.chain == ("cheap-alt", "cheap-mini", "local-small")
    assert "no fitting model of tier >= premium; the best cheaper one: 'cheap-alt'" in (
        decision.trace.rule
    )


def test_budget_pressure_lowers_the_tier_at_the_fraction() -> None:
    r = router()
    below = decide(r, CODE, pressure=BudgetPressure(0.89, "daily limit $10.00"))
    assert below.chain[0] == "premium-large"
    assert below.compression is CompressionMode.OFF
    at = decide(r, CODE, pressure=BudgetPressure(0.9, "daily limit $10.00"))
    assert at.chain[0] == "balanced-mid"
    assert at.trace.tier == "balanced"
    assert at.trace.budget_pressure == 0.9
    assert "budget pressure 90% of daily limit $10.00 >= 90%: lowered to tier >= balanced" in (
        at.trace.rule
    )
    # Under pressure the router switches lossless compression on, unless the request chose.
    assert at.compression is CompressionMode.LOSSLESS
    lossy = decide(r, CODE, pressure=BudgetPressure(0.95), compression=CompressionMode.LOSSY)
    assert lossy.compression is CompressionMode.LOSSY
    quiet = router(RouteConfig("auto", ALL, compress_under_pressure=False))
    assert decide(quiet, CODE, pressure=BudgetPressure(0.95)).compression is CompressionMode.OFF


def test_budget_pressure_at_the_lowest_tier_stays_there() -> None:
    decision = decide(router(), GREETING, pressure=BudgetPressure(0.95))
    assert decision.chain[0] == "local-small"


def test_spent_limit_leaves_only_free_models() -> None:
    spent = BudgetPressure(1.0, "tenant 'acme' daily limit $5.00", NOW + timedelta(hours=3))
    decision = decide(router(), CODE, pressure=spent)
    assert decision.chain == ("local-small",)
    assert "tenant 'acme' daily limit $5.00 is spent: only free models" in decision.trace.rule
    assert decision.compression is CompressionMode.LOSSLESS


def test_spent_limit_without_a_free_model_names_the_limit_and_the_reset() -> None:
    r = router(RouteConfig("auto", ("cheap-mini", "premium-large")))
    spent = BudgetPressure(1.02, "tenant 'acme' daily limit $5.00", NOW + timedelta(hours=3))
    with pytest.raises(BudgetExceeded) as caught:
        decide(r, CODE, pressure=spent)
    assert caught.value.message == (
        "tenant 'acme' daily limit $5.00 is spent: only free local models may serve until it "
        "resets at 2026-03-02T00:00:00Z; none of route 'auto' fits"
    )
    assert caught.value.retry_after_s == 3 * 3600
    with pytest.raises(BudgetExceeded, match="until it resets; none") as unknown:
        decide(r, CODE, pressure=BudgetPressure(1.0, "monthly limit $100.00"))
    assert unknown.value.retry_after_s is None


def test_spent_limit_with_a_free_model_too_small_for_the_prompt() -> None:
    long_prompt = "word " * 4000  # about 5,000 tokens: more than local-small's 4,096
    with pytest.raises(BudgetExceeded, match="none of route 'auto' fits"):
        decide(router(), long_prompt, pressure=BudgetPressure(1.0, "daily limit $1.00"))


def test_max_cost_below_the_cheapest_says_what_it_would_cost() -> None:
    r = router(RouteConfig("auto", ("cheap-mini", "balanced-mid", "premium-large")))
    text = "x" * 100
    # By hand: (108 prompt bytes x $0.15 + 64 x $0.60) per million = $0.0000546.
    assert prompt_token_bound(text) == 108
    assert CATALOGUE["cheap-mini"].prices.worst_case(108, 64) == Decimal("0.0000546")
    with pytest.raises(BudgetExceeded) as caught:
        decide(r, text, max_cost_usd=0.00001)
    assert caught.value.message == (
        "budget.max_cost_usd $0.00001 is below the cheapest fitting model 'cheap-mini' "
        "(worst case $0.0000546 for this prompt and max_new_tokens 64); raise max_cost_usd "
        "or lower max_new_tokens"
    )


def test_max_cost_leaves_out_the_models_it_cannot_pay_for() -> None:
    r = router(RouteConfig("auto", ("cheap-mini", "balanced-mid", "premium-large")))
    # premium-large's worst case here: (~80 bytes x $3 + 1000 x $15) / 1e6 ~ $0.015.
    decision = decide(r, CODE, max_new_tokens=1000, max_cost_usd=0.01)
    assert decision.chain == ("balanced-mid", "cheap-mini")
    assert "'premium-large' (worst case $0.0152 > max cost $0.01)" in decision.trace.rule
    assert decision.trace.premium_model == "premium-large"


def test_min_quality_filters_and_names_the_best_when_too_high() -> None:
    r = router()
    decision = decide(r, GREETING, min_quality=0.58)
    assert decision.chain == ("cheap-alt", "balanced-mid", "premium-large")
    assert "'local-small' (quality 0.3 < 0.58)" in decision.trace.rule
    with pytest.raises(FailedPrecondition) as caught:
        decide(r, GREETING, min_quality=0.95)
    assert "min_quality 0.95 is above every fitting model of route 'auto'" in caught.value.message
    assert "(best: 'premium-large', quality 0.92)" in caught.value.message


def test_context_filter_and_no_model_fits() -> None:
    r = router()
    long_prompt = "word " * 4000
    decision = decide(r, long_prompt, max_new_tokens=16)
    assert "local-small" not in decision.chain
    assert "'local-small' (context 4096 < 5016 tokens)" in decision.trace.rule
    # max_new_tokens counts too: 64 tokens of prompt + 4,090 new do not fit 4,096.
    tight = decide(r, "x" * 256, max_new_tokens=4090)
    assert "local-small" not in tight.chain
    with pytest.raises(InvalidRequest, match="fits no model of route 'auto'"):
        decide(r, "word " * 200_000)


def test_max_new_tokens_cap_filters() -> None:
    models = {
        "capped": model("capped", Tier.LOCAL, 0.3, max_new_tokens_cap=128),
        "open": model("open", Tier.CHEAP, 0.5, "1", "1"),
    }
    r = Router([RouteConfig("auto", ("capped", "open"))], models, 0.9)
    assert decide(r, GREETING, max_new_tokens=256).chain == ("open",)
    assert decide(r, GREETING, max_new_tokens=128).chain == ("capped", "open")


def test_unknown_model_in_a_route_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="route 'auto' names unknown model 'gpt-9'"):
        Router([RouteConfig("auto", ("cheap-mini", "gpt-9"))], CATALOGUE, 0.9)
    with pytest.raises(ValueError, match="lists model 'cheap-mini' twice"):
        Router([RouteConfig("auto", ("cheap-mini", "cheap-mini"))], CATALOGUE, 0.9)
    with pytest.raises(ValueError, match="route 'cheap-mini' has the name of a model"):
        Router([RouteConfig("cheap-mini", ("cheap-alt",))], CATALOGUE, 0.9)
    with pytest.raises(ValueError, match="route 'auto' is defined twice"):
        Router([RouteConfig("auto", ALL), RouteConfig("auto", ALL)], CATALOGUE, 0.9)
    with pytest.raises(ValueError, match="pressure_fraction"):
        Router([], CATALOGUE, 0.0)


def test_route_infos_and_lookup() -> None:
    r = router(RouteConfig("auto", ALL), RouteConfig("small", ("local-small", "cheap-mini")))
    auto, small = r.route_infos()
    assert auto.name == "auto"
    assert auto.kind is ModelKind.ROUTE
    assert auto.provider == "route"
    assert auto.route_models == ALL
    assert auto.context_length == 200_000
    assert (auto.tier, auto.quality) == (Tier.PREMIUM, 0.92)
    assert (small.tier, small.quality, small.context_length) == (Tier.CHEAP, 0.55, 128_000)
    assert r.is_route("auto") and r.is_route("small")
    assert not r.is_route("cheap-mini")
    with pytest.raises(ModelNotFound, match="unknown route 'nope'; routes: auto, small"):
        decide(r, GREETING, route="nope")


def test_messages_request_uses_the_text_given() -> None:
    """decide() scores the text it is given (the planner joins a conversation's turns)."""
    r = router()
    request = GenerateRequest(
        request_id="r", model="auto", sampling=SamplingParams(max_new_tokens=32)
    )
    decision = r.decide("auto", request, CODE, 32, BudgetPressure())
    assert decision.chain[0] == "premium-large"
