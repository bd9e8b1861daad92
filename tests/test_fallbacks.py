"""Routes, fallbacks, reservations and the ledger, through the service (no gRPC).

Scripted priced backends stand in for providers here, so each rule is checked on its own:
the real SDKs against a mock provider are in tests/models/remote/ and tests/test_providers_live.py.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path

import pytest

from optiserve.accounting.budget import Budgets
from optiserve.accounting.config import BudgetConfig
from optiserve.accounting.ledger import Ledger, LedgerRow, LedgerWriteError
from optiserve.accounting.spend import Spending
from optiserve.accounting.spend_counters import MemorySpendCounters
from optiserve.accounting.usage import UsageTracker
from optiserve.domain.errors import BudgetExceeded, RateLimited, Unavailable
from optiserve.domain.pricing import Prices
from optiserve.domain.types import (
    FinishReason,
    GenerateRequest,
    ModelInfo,
    ModelKind,
    SamplingParams,
    StreamEnd,
    TextDelta,
    Tier,
)
from optiserve.models.base import BackendDelta, BackendEvent, BackendFinish, BackendStart
from optiserve.models.catalogue import ModelCatalogue
from optiserve.routing.config import RouteConfig
from optiserve.routing.planner import Planner
from optiserve.routing.router import Router
from optiserve.service import Service


@dataclass
class PricedBackend:
    """A remote-like backend: answers "ok from <name>", or fails as scripted."""

    name: str
    tier: Tier
    prices: Prices
    #: Raised before any text (None: answer).
    fail_before: Exception | None = None
    #: Raised after the first chunk of text.
    fail_after: Exception | None = None
    report_usage: bool = True
    calls: int = 0
    seen: list[GenerateRequest] = field(default_factory=list)

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(
            self.name,
            ModelKind.REMOTE,
            "scripted",
            self.name,
            4096,
            prices=self.prices,
            tier=self.tier,
            quality={Tier.CHEAP: 0.3, Tier.BALANCED: 0.6, Tier.PREMIUM: 0.9}.get(self.tier, 0.1),
            default_max_new_tokens=16,
            max_new_tokens_cap=64,
            structured_output=True,
        )

    def load(self) -> None:
        pass

    def close(self) -> None:
        pass

    def resolve_sampling(self, params: SamplingParams) -> SamplingParams:
        return params if params.max_new_tokens else replace(params, max_new_tokens=16)

    def check_input(self, request: GenerateRequest) -> None:
        pass

    async def stream(self, request: GenerateRequest) -> AsyncIterator[BackendEvent]:
        self.calls += 1
        self.seen.append(request)
        if self.fail_before is not None:
            raise self.fail_before
        now = time.monotonic()
        yield BackendStart(100, measured=False)
        yield BackendDelta("ok ", 1)
        if self.fail_after is not None:
            raise self.fail_after
        yield BackendDelta(f"from {self.name}", 3)
        yield BackendFinish(
            FinishReason.EOS,
            prompt_tokens=1000 if self.report_usage else 100,
            completion_tokens=4,
            queued_ms=0.0,
            first_token_at=now,
            last_token_at=time.monotonic(),
            cache_read_tokens=200 if self.report_usage else 0,
            usage_reported=self.report_usage,
        )


CHEAP = Prices(input=Decimal("0.15"), output=Decimal("0.60"), cache_read=Decimal("0.075"))
PREMIUM = Prices(input=Decimal("3"), output=Decimal("15"), cache_read=Decimal("0.30"))


def _service(
    tmp_path: Path, backends: list[PricedBackend], budget: BudgetConfig | None = None
) -> tuple[Service, Ledger]:
    catalogue = ModelCatalogue([(b.name, b) for b in backends])
    infos = {b.name: b.info for b in backends}
    route = RouteConfig(name="auto", models=tuple(infos), max_attempts=len(infos))
    router = Router([route], infos, 0.9)
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    budgets = Budgets(budget, MemorySpendCounters()) if budget is not None else None
    service = Service(
        Planner(catalogue, router, "auto"),
        UsageTracker(),
        spending=Spending(budgets, ledger),
    )
    return service, ledger


async def _run(service: Service, **kwargs: object) -> tuple[str, StreamEnd]:
    request = GenerateRequest(request_id="r1", prompt="hi there", **kwargs)  # type: ignore[arg-type]
    text = ""
    end = None
    async for event in service.stream(request):
        if isinstance(event, TextDelta):
            text += event.text
        else:
            end = event
    assert end is not None
    return text, end


async def test_a_failure_before_the_first_token_falls_back_and_is_traced(tmp_path: Path) -> None:
    cheap = PricedBackend("cheap", Tier.CHEAP, CHEAP, fail_before=Unavailable("cheap is down"))
    premium = PricedBackend("premium", Tier.PREMIUM, PREMIUM)
    service, ledger = _service(tmp_path, [cheap, premium])
    text, end = await _run(service, model="auto")
    assert text == "ok from premium"
    assert end.summary.model == "premium"
    assert end.summary.trace.fallbacks == ("cheap: UNAVAILABLE: cheap is down",)
    assert end.summary.trace.route.route == "auto"
    assert [r.status for r in ledger.rows()] == ["UNAVAILABLE", "OK"]


async def test_a_named_model_has_no_fallbacks(tmp_path: Path) -> None:
    cheap = PricedBackend("cheap", Tier.CHEAP, CHEAP, fail_before=Unavailable("cheap is down"))
    premium = PricedBackend("premium", Tier.PREMIUM, PREMIUM)
    service, _ = _service(tmp_path, [cheap, premium])
    with pytest.raises(Unavailable, match="cheap is down"):
        await _run(service, model="cheap")
    assert premium.calls == 0


async def test_cost_is_measured_from_reported_usage(tmp_path: Path) -> None:
    premium = PricedBackend("premium", Tier.PREMIUM, PREMIUM)
    service, ledger = _service(tmp_path, [premium])
    _, end = await _run(service, model="premium")
    # 800 uncached input at $3, 200 cache reads at $0.30, 4 output at $15 per million.
    expected = (Decimal(800) * 3 + Decimal(200) * Decimal("0.30") + Decimal(4) * 15) / 10**6
    (row,) = ledger.rows()
    assert row.cost_usd == expected and not row.usage_estimated
    assert end.summary.cost_usd == pytest.approx(float(expected))
    assert end.summary.usage.provider_cache_read_tokens == 200
    assert end.summary.usage.prompt_tokens == 1000


async def test_a_reply_without_usage_is_charged_its_reservation(tmp_path: Path) -> None:
    premium = PricedBackend("premium", Tier.PREMIUM, PREMIUM, report_usage=False)
    service, ledger = _service(tmp_path, [premium])
    _, end = await _run(service, model="premium", sampling=SamplingParams(max_new_tokens=10))
    # The reservation: prompt bound (8 bytes + 8) at the highest prompt price, 10 output.
    worst = (Decimal(16) * 3 + Decimal(10) * 15) / 10**6
    (row,) = ledger.rows()
    assert row.usage_estimated and row.cost_usd == worst
    assert end.summary.usage.estimated
    assert end.summary.cost_usd == pytest.approx(float(worst))


async def test_max_cost_below_the_model_says_what_it_would_cost(tmp_path: Path) -> None:
    premium = PricedBackend("premium", Tier.PREMIUM, PREMIUM)
    service, _ = _service(tmp_path, [premium])
    with pytest.raises(BudgetExceeded, match=r"worst case \$0\.000"):
        await _run(service, model="premium", max_cost_usd=1e-9)
    assert premium.calls == 0


async def test_every_hop_rechecks_the_budget(tmp_path: Path) -> None:
    cheap = PricedBackend("cheap", Tier.CHEAP, CHEAP, fail_before=Unavailable("cheap is down"))
    premium = PricedBackend("premium", Tier.PREMIUM, PREMIUM)
    # Enough for cheap's worst case ($0.0000...), not for premium's.
    service, _ = _service(tmp_path, [cheap, premium], BudgetConfig(daily_usd=0.0001))
    with pytest.raises(BudgetExceeded, match="daily"):
        await _run(service, model="auto", sampling=SamplingParams(max_new_tokens=64))
    assert premium.calls == 0 and cheap.calls == 1


async def test_the_trace_prices_the_premium_counterfactual(tmp_path: Path) -> None:
    cheap = PricedBackend("cheap", Tier.CHEAP, CHEAP)
    premium = PricedBackend("premium", Tier.PREMIUM, PREMIUM)
    service, _ = _service(tmp_path, [cheap, premium])
    _, end = await _run(service, model="auto")
    route = end.summary.trace.route
    assert end.summary.model == "cheap" and route.premium_model == "premium"
    assert route.premium_cost_usd == pytest.approx(
        float((Decimal(800) * 3 + Decimal(200) * Decimal("0.30") + Decimal(4) * 15) / 10**6)
    )
    assert route.premium_cost_usd > end.summary.cost_usd > 0


async def test_fallback_chain_is_bounded_and_ends_with_the_last_error(tmp_path: Path) -> None:
    a = PricedBackend("a", Tier.CHEAP, CHEAP, fail_before=Unavailable("a down"))
    b = PricedBackend("b", Tier.BALANCED, CHEAP, fail_before=RateLimited("b limited"))
    c = PricedBackend("c", Tier.PREMIUM, PREMIUM, fail_before=Unavailable("c down"))
    service, ledger = _service(tmp_path, [a, b, c])
    with pytest.raises(Unavailable, match="c down"):
        await _run(service, model="auto")
    assert (a.calls, b.calls, c.calls) == (1, 1, 1)
    statuses = sorted(r.status for r in ledger.rows())
    assert statuses == ["RESOURCE_EXHAUSTED", "UNAVAILABLE", "UNAVAILABLE"]
    assert all(r.cost_usd == 0 for r in ledger.rows())


async def test_a_cut_after_text_is_never_retried(tmp_path: Path) -> None:
    a = PricedBackend("a", Tier.CHEAP, CHEAP, fail_after=Unavailable("connection reset"))
    b = PricedBackend("b", Tier.PREMIUM, PREMIUM)
    service, ledger = _service(tmp_path, [a, b])
    chunks: list[str] = []
    request = GenerateRequest(request_id="r", prompt="hi", model="auto")

    async def consume() -> None:
        async for event in service.stream(request):
            if isinstance(event, TextDelta):
                chunks.append(event.text)

    with pytest.raises(Unavailable, match="connection reset"):
        await consume()
    assert chunks == ["ok "]
    assert b.calls == 0
    (row,) = ledger.rows()
    # Accepted upstream, then cut: the provider bills what it generated, which it no
    # longer reports, so the reserved worst case is charged and marked estimated.
    assert row.status == "UNAVAILABLE" and row.usage_estimated and row.cost_usd > 0


class _FullDiskLedger(Ledger):
    """A real ledger whose commits fail as on a full disk."""

    def record_many(self, rows: Sequence[LedgerRow]) -> None:
        raise LedgerWriteError("database or disk is full")


async def test_a_failed_ledger_write_still_answers_and_is_counted(tmp_path: Path) -> None:
    cheap = PricedBackend("cheap", Tier.CHEAP, CHEAP)
    catalogue = ModelCatalogue([("cheap", cheap)])
    service = Service(
        Planner.of_models(catalogue, "cheap"),
        UsageTracker(),
        spending=Spending(None, _FullDiskLedger(tmp_path / "ledger.sqlite3")),
    )
    text, _ = await _run(service, model="cheap")
    assert text == "ok from cheap"
    assert service.usage().ledger_failures == 1
