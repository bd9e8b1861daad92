"""The mock provider itself: per-model scripting and 64 concurrent connections (what the
live gRPC tests and benchmarks/overhead.py rely on)."""

from __future__ import annotations

import asyncio

import httpx2

from providers.mock_provider import MockProvider, Reply

from .helpers import Backends, collect, request


async def test_replies_meant_for_one_model(backends: Backends, mock: MockProvider) -> None:
    cheap = backends("openai", model={"source": "cheap-1"})
    mock.script(Reply.server_error(), model="premium-1")
    mock.model_defaults["cheap-1"] = Reply.ok("cheap answer")
    mock.script(Reply.ok("next in line"))
    assert (await collect(cheap, request())).text == "next in line"
    assert (await collect(cheap, request())).text == "cheap answer"
    assert mock.pending == 1 and mock.calls_for("cheap-1") == 2 and mock.calls_for("x") == 0


async def test_64_concurrent_connections(mock: MockProvider) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    limits = httpx2.Limits(max_connections=64)
    async with httpx2.AsyncClient(limits=limits, timeout=5.0) as client:
        url = f"{mock.openai_base_url}/chat/completions"
        mock.default_reply = Reply.ok("held", delay_s=0.2)  # all 64 are open at once
        replies = await asyncio.gather(*(client.post(url, json=body) for _ in range(64)))
    assert all(r.status_code == 200 and r.text.endswith("data: [DONE]\n\n") for r in replies)
    assert mock.calls == 64
