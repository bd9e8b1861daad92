"""One request's trouble stays that request's: the batch path users run, on a live server.

A prefill batch is formed by holding the idle scheduler for a burst (``max_wait_ms``), so
the requests of each test below run in one batch, as they do under load.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest

from optiserve.app import ServerThread
from optiserve.config import Config
from optiserve.domain.types import SamplingParams
from optiserve.models.local import batch as batch_module
from optiserve_client import AsyncClient, Client, InternalError

PROMPTS = [
    "The quick brown fox",
    "def parse(text):",
    "In the beginning",
    "Lists are mutable sequences",
    "import os, sys",
    "A dictionary maps keys",
]


@pytest.fixture(scope="module")
def burst_server(make_config: Callable[..., Config]) -> Iterator[ServerThread]:
    """A server whose idle scheduler waits up to 0.5 s for six requests, to batch them."""
    config = make_config()
    engine = replace(config.engine, max_wait_ms=500.0, max_batch_size=6)
    thread = ServerThread(replace(config, engine=engine))
    thread.start()
    yield thread
    thread.stop()


def _greedy_alone(server: ServerThread, prompts: list[str], max_new: int) -> list[str]:
    with Client(server.target, timeout=60) as client:
        return [client.generate(p, max_new_tokens=max_new).text for p in prompts]


async def _burst(server: ServerThread, calls: list[dict[str, Any]]) -> list[Any]:
    """Send every call at once; each result is a Completion or the client's exception."""
    async with AsyncClient(server.target, timeout=60) as client:
        return await asyncio.gather(
            *(client.generate(**kwargs) for kwargs in calls), return_exceptions=True
        )


@pytest.mark.parametrize(
    "extreme",
    [
        {"temperature": 1e-38},
        {"temperature": 1e-45},
        {"temperature": 1e-30, "top_p": 1e-45},
        {"temperature": 1e-6, "top_k": 2**31 - 1},
        {"temperature": 3.0e38, "top_p": 1e-30, "top_k": 1},
        {"temperature": 3.0e38},
    ],
)
def test_extreme_sampling_values_are_served_and_spare_the_batch(
    burst_server: ServerThread, extreme: dict[str, Any]
) -> None:
    """Every sampling value validation accepts is served; it never fails its batch.

    Before: temperature 1e-38 made NaN probabilities in prefill and all six requests of
    the batch got UNAVAILABLE "the model failed during prefill ... retry the request".
    """
    max_new = 8
    expected = _greedy_alone(burst_server, PROMPTS, max_new)
    calls: list[dict[str, Any]] = [{"prompt": p, "max_new_tokens": max_new} for p in PROMPTS]
    calls[2] = {**calls[2], **extreme, "seed": 5}
    results = asyncio.run(_burst(burst_server, calls))
    for i, result in enumerate(results):
        assert not isinstance(result, BaseException), (i, result)
        assert result.usage.completion_tokens >= 1
        if i != 2:
            assert result.text == expected[i], i
    temperature = extreme["temperature"]
    if temperature < 1e-5 or extreme.get("top_k") == 1:
        # Below the greedy threshold (or one candidate left) sampling is the argmax.
        assert results[2].text == expected[2]


def test_a_sampling_fault_in_one_row_fails_that_request_alone(
    burst_server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sequence whose sampling raises fails alone, with a status that does not invite
    a retry; its neighbours in the batch (greedy and sampled) finish with correct text."""
    max_new = 10
    sampled = {"temperature": 0.9, "top_p": 0.95, "seed": 11}
    expected = _greedy_alone(burst_server, PROMPTS, max_new)
    with Client(burst_server.target, timeout=60) as client:
        expected[3] = client.generate(PROMPTS[3], max_new_tokens=max_new, **sampled).text
    real = batch_module.select_token

    def faulty(logits: Any, params: SamplingParams, generator: Any) -> int:
        if params.seed == 666:
            raise RuntimeError("injected sampling fault")
        return real(logits, params, generator)

    monkeypatch.setattr(batch_module, "select_token", faulty)
    calls: list[dict[str, Any]] = [{"prompt": p, "max_new_tokens": max_new} for p in PROMPTS]
    calls[3] = {**calls[3], **sampled}
    calls[1] = {**calls[1], "temperature": 0.7, "seed": 666}
    results = asyncio.run(_burst(burst_server, calls))
    failed = results[1]
    assert isinstance(failed, InternalError), failed
    assert failed.code == "INTERNAL"
    assert "while sampling" in failed.message
    assert "injected sampling fault" in failed.message
    assert "fail again if retried" in failed.message
    assert "retry the request" not in failed.message
    assert re.search(r"\(request id [0-9a-f]{32}\)$", failed.message), failed.message
    for i, result in enumerate(results):
        if i != 1:
            assert not isinstance(result, BaseException), (i, result)
            assert result.text == expected[i], i
