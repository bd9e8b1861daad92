"""Helpers of the routing tests: a small catalogue (a local model and remote models of each
tier) and the labelled data sets."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from optiserve.domain.pricing import Prices
from optiserve.domain.types import ModelInfo, ModelKind, Tier

DATA = Path(__file__).parent / "data"


def model(
    name: str,
    tier: Tier,
    quality: float,
    input_price: str = "0",
    output_price: str = "0",
    context_length: int = 128_000,
    **fields: Any,
) -> ModelInfo:
    """A catalogue entry; prices in USD per million tokens."""
    local = tier is Tier.LOCAL
    return ModelInfo(
        name=name,
        kind=ModelKind.LOCAL if local else ModelKind.REMOTE,
        provider="local" if local else "acme",
        source=name,
        context_length=context_length,
        prices=Prices(input=Decimal(input_price), output=Decimal(output_price)),
        tier=tier,
        quality=quality,
        **fields,
    )


CATALOGUE = {
    m.name: m
    for m in (
        model("local-small", Tier.LOCAL, 0.3, context_length=4096),
        model("cheap-mini", Tier.CHEAP, 0.55, "0.15", "0.60"),
        model("cheap-alt", Tier.CHEAP, 0.6, "0.25", "1.25"),
        model("balanced-mid", Tier.BALANCED, 0.75, "1.00", "4.00"),
        model("premium-large", Tier.PREMIUM, 0.92, "3.00", "15.00", 200_000),
    )
}


def read_jsonl(name: str) -> list[dict[str, Any]]:
    """The rows of ``tests/routing/data/<name>``."""
    with (DATA / name).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
