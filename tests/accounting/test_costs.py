"""The golden cost table: provider usage, normalised and priced, against costs by hand.

Prices (USD per million tokens) are the providers' list prices:
- OpenAI gpt-4o: input 2.50, cached input 1.25, output 10.00; gpt-4o-mini: 0.15, 0.075,
  0.60. OpenAI bills no separate cache write: a prompt that fills its cache is billed as
  input, so its "cache write" rows equal "no cache".
- Anthropic Claude Sonnet: input 3.00, output 15.00, cache read 0.30, cache write 3.75
  (5 minutes) and 6.00 (1 hour).
The same real prompt throughout: 120,000 tokens, 100,000 of them the cached prefix, and a
2,500-token answer.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from optiserve.accounting.ledger import Ledger
from optiserve.domain.pricing import Prices, TokenCounts

from .helpers import ledger_row

CENT = Decimal("0.01")
GPT_4O = Prices(input=Decimal("2.50"), output=Decimal("10.00"), cache_read=Decimal("1.25"))
GPT_4O_MINI = Prices(input=Decimal("0.15"), output=Decimal("0.60"), cache_read=Decimal("0.075"))
SONNET = Prices(
    input=Decimal("3.00"),
    output=Decimal("15.00"),
    cache_read=Decimal("0.30"),
    cache_write_5m=Decimal("3.75"),
    cache_write_1h=Decimal("6.00"),
)

GOLDEN = [
    # (case, prices, normalised usage, cost by hand)
    (
        "openai no cache",
        GPT_4O,
        TokenCounts.from_openai(prompt_tokens=120_000, completion_tokens=2_500),
        # 120,000 x 2.50 / 1e6 = 0.30; 2,500 x 10.00 / 1e6 = 0.025
        Decimal("0.325"),
    ),
    (
        "openai cache write 5m (billed as input)",
        GPT_4O,
        TokenCounts.from_openai(prompt_tokens=120_000, completion_tokens=2_500, cached_tokens=0),
        Decimal("0.325"),  # as "no cache"
    ),
    (
        "openai cache write 1h (billed as input)",
        GPT_4O,
        TokenCounts.from_openai(prompt_tokens=120_000, completion_tokens=2_500, cached_tokens=0),
        Decimal("0.325"),  # as "no cache"
    ),
    (
        "openai cache read",
        GPT_4O,
        TokenCounts.from_openai(
            prompt_tokens=120_000, completion_tokens=2_500, cached_tokens=100_000
        ),
        # 20,000 x 2.50 = 0.05; 100,000 x 1.25 = 0.125; 2,500 x 10.00 = 0.025 (all / 1e6)
        Decimal("0.200"),
    ),
    (
        "openai cache read, odd counts",
        GPT_4O_MINI,
        TokenCounts.from_openai(
            prompt_tokens=123_457, completion_tokens=1_234, cached_tokens=65_536
        ),
        # 57,921 x 0.15 = 8,688.15 -> 0.00868815; 65,536 x 0.075 = 4,915.2 -> 0.0049152;
        # 1,234 x 0.60 = 740.4 -> 0.0007404; sum 0.01434375
        Decimal("0.01434375"),
    ),
    (
        "anthropic no cache",
        SONNET,
        TokenCounts.from_anthropic(input_tokens=120_000, output_tokens=2_500),
        # 120,000 x 3.00 = 0.36; 2,500 x 15.00 = 0.0375 (all / 1e6)
        Decimal("0.3975"),
    ),
    (
        "anthropic cache write 5m",
        SONNET,
        TokenCounts.from_anthropic(
            input_tokens=20_000, output_tokens=2_500, cache_creation_input_tokens=100_000
        ),
        # 20,000 x 3.00 = 0.06; 100,000 x 3.75 = 0.375; 2,500 x 15.00 = 0.0375
        Decimal("0.4725"),
    ),
    (
        "anthropic cache write 1h",
        SONNET,
        TokenCounts.from_anthropic(
            input_tokens=20_000,
            output_tokens=2_500,
            cache_creation_input_tokens=100_000,
            ephemeral_5m_input_tokens=0,
            ephemeral_1h_input_tokens=100_000,
        ),
        # 20,000 x 3.00 = 0.06; 100,000 x 6.00 = 0.60; 2,500 x 15.00 = 0.0375
        Decimal("0.6975"),
    ),
    (
        "anthropic cache read",
        SONNET,
        TokenCounts.from_anthropic(
            input_tokens=20_000, output_tokens=2_500, cache_read_input_tokens=100_000
        ),
        # 20,000 x 3.00 = 0.06; 100,000 x 0.30 = 0.03; 2,500 x 15.00 = 0.0375
        Decimal("0.1275"),
    ),
    (
        "anthropic write 5m and 1h, read, odd counts",
        SONNET,
        TokenCounts.from_anthropic(
            input_tokens=1_001,
            output_tokens=333,
            cache_read_input_tokens=4_097,
            cache_creation_input_tokens=3_000,
            ephemeral_5m_input_tokens=1_000,
            ephemeral_1h_input_tokens=2_000,
        ),
        # 1,001 x 3.00 = 3,003 -> 0.003003; 333 x 15.00 = 4,995 -> 0.004995;
        # 4,097 x 0.30 = 1,229.1 -> 0.0012291; 1,000 x 3.75 = 3,750 -> 0.00375;
        # 2,000 x 6.00 = 12,000 -> 0.012; sum 0.0249771
        Decimal("0.0249771"),
    ),
]


@pytest.mark.parametrize(
    ("prices", "counts", "expected"),
    [case[1:] for case in GOLDEN],
    ids=[case[0] for case in GOLDEN],
)
def test_cost_matches_the_hand_computed_value(
    prices: Prices, counts: TokenCounts, expected: Decimal
) -> None:
    cost = prices.cost(counts)
    assert cost == expected  # exactly, not only to the cent
    assert cost.quantize(CENT) == expected.quantize(CENT)


def test_the_ledger_keeps_every_golden_cost_exactly(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    at = datetime(2026, 12, 2, 12, tzinfo=UTC)
    for i, (_, prices, counts, _) in enumerate(GOLDEN):
        ledger.record(ledger_row(at, prices.cost(counts), request_id=f"r{i}", counts=counts))
    rows = ledger.rows()
    assert [row.cost_usd for row in rows] == [expected for *_, expected in GOLDEN]
    assert [row.counts for row in rows] == [counts for _, _, counts, _ in GOLDEN]
    (total,) = ledger.totals("day")
    # 0.325 x 3 + 0.2 + 0.01434375 + 0.3975 + 0.4725 + 0.6975 + 0.1275 + 0.0249771
    assert total.cost_usd == Decimal("2.90932085")
    assert total.cost_usd == sum(expected for *_, expected in GOLDEN)
    ledger.close()


def test_openai_and_anthropic_usage_of_one_prompt_normalise_alike() -> None:
    # The same 120,000-token prompt with a 100,000-token cached prefix: OpenAI counts the
    # cached tokens inside prompt_tokens, Anthropic outside input_tokens.
    openai = TokenCounts.from_openai(
        prompt_tokens=120_000, completion_tokens=2_500, cached_tokens=100_000
    )
    anthropic = TokenCounts.from_anthropic(
        input_tokens=20_000, output_tokens=2_500, cache_read_input_tokens=100_000
    )
    assert openai == anthropic
    assert openai.prompt_tokens == anthropic.prompt_tokens == 120_000
    assert openai.input_tokens == 20_000
    # Anthropic's cache writes are outside input_tokens too: the whole prompt is the sum.
    written = TokenCounts.from_anthropic(
        input_tokens=20_000, output_tokens=2_500, cache_creation_input_tokens=100_000
    )
    assert written.prompt_tokens == 120_000
    assert written.cache_write_5m_tokens == 100_000
