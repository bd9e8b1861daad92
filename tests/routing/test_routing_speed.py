"""Routing and compression are fast enough to run on every request.

The issue's targets are p99 < 1 ms for a routing decision (benchmarks/overhead.py measures
it); these tests hold generous bounds (5x), and time the CPU this thread spends
(``time.thread_time``), so that other work on a busy machine does not make them flake.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from routinghelpers import CATALOGUE, read_jsonl

from optiserve.domain.pricing import BudgetPressure, prompt_token_estimate
from optiserve.domain.types import CompressionMode, GenerateRequest
from optiserve.routing.complexity import score
from optiserve.routing.compression import compress
from optiserve.routing.config import RouteConfig
from optiserve.routing.router import Router


def p99_ms(call: Callable[[], object], runs: int = 400) -> float:
    for _ in range(20):
        call()
    samples = []
    for _ in range(runs):
        start = time.thread_time()
        call()
        samples.append(time.thread_time() - start)
    samples.sort()
    return samples[int(0.99 * runs)] * 1000


def elapsed_ms(call: Callable[[], object]) -> float:
    start = time.thread_time()
    call()
    return (time.thread_time() - start) * 1000


def prompt_of(chars: int) -> str:
    text = "\n".join(row["prompt"] for row in read_jsonl("labelled_prompts.jsonl"))
    return (text * (chars // len(text) + 1))[:chars]


def test_scoring_a_2000_character_prompt() -> None:
    text = prompt_of(2000)
    assert p99_ms(lambda: score(text)) < 5


def test_scoring_a_huge_prompt_scans_a_bounded_part() -> None:
    text = prompt_of(400_000)
    assert p99_ms(lambda: score(text), runs=100) < 5


def test_a_routing_decision() -> None:
    router = Router([RouteConfig("auto", tuple(CATALOGUE))], CATALOGUE, 0.9)
    text = prompt_of(2000)
    request = GenerateRequest(request_id="r", prompt=text, model="auto", max_cost_usd=1.0)
    pressure = BudgetPressure(0.5, "daily limit $10.00")
    assert p99_ms(lambda: router.decide("auto", request, text, 256, pressure)) < 5


def test_compressing_10k_tokens() -> None:
    prose = "\n\n".join(row["text"] for row in read_jsonl("verbose_prose.jsonl"))
    text = (prose * (40_000 // len(prose) + 1))[:40_000]
    assert prompt_token_estimate(text) == 10_000
    for mode in (CompressionMode.LOSSLESS, CompressionMode.LOSSY):
        best = min(elapsed_ms(lambda m=mode: compress(text, m)) for _ in range(3))
        assert best < 50, mode
