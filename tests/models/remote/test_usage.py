"""Usage from the provider's reply, normalised (OpenAI's prompt_tokens includes cache reads;
Anthropic's input_tokens excludes cache reads and writes), the events a backend yields, and
its info, sampling and input checks."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import anthropic
import openai
import pytest

from optiserve.domain.errors import FailedPrecondition, InvalidRequest
from optiserve.domain.pricing import TokenCounts, prompt_token_bound
from optiserve.domain.types import FinishReason, ModelKind, SamplingParams, Tier
from optiserve.models.base import BackendDelta, BackendStart
from providers.mock_provider import MockProvider, Reply, Usage

from .helpers import SECRET, Backends, collect, request

CASES = {
    "no cache": Usage(1200, 17),
    "cache read": Usage(1200, 17, cache_read_tokens=1000),
    "cache write 5m": Usage(1200, 17, cache_write_5m_tokens=1100),
    "cache write 1h": Usage(1200, 17, cache_write_1h_tokens=1100),
    "read and writes": Usage(1200, 17, 600, cache_write_5m_tokens=300, cache_write_1h_tokens=200),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_anthropic_usage_is_normalised(
    backends: Backends, mock: MockProvider, case: str
) -> None:
    usage = CASES[case]
    mock.script(Reply.ok("The answer is 42.", usage=usage))
    outcome = await collect(backends("anthropic"), request())
    finish = outcome.finish
    # Anthropic reported input_tokens excluding the cache: the finish has the whole prompt.
    assert finish.prompt_tokens == usage.prompt_tokens
    assert finish.counts == TokenCounts(
        input_tokens=usage.anthropic_input_tokens,
        output_tokens=17,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_5m_tokens=usage.cache_write_5m_tokens,
        cache_write_1h_tokens=usage.cache_write_1h_tokens,
    )
    assert finish.usage_reported
    assert outcome.text == "The answer is 42."


@pytest.mark.parametrize("case", ["no cache", "cache read"])
async def test_openai_usage_is_normalised(
    backends: Backends, mock: MockProvider, case: str
) -> None:
    usage = CASES[case]
    mock.script(Reply.ok("The answer is 42.", usage=usage))
    finish = (await collect(backends("openai"), request())).finish
    assert finish.prompt_tokens == 1200  # OpenAI's prompt_tokens already includes the reads
    assert finish.counts == TokenCounts(
        input_tokens=1200 - usage.cache_read_tokens,
        output_tokens=17,
        cache_read_tokens=usage.cache_read_tokens,
    )
    assert finish.usage_reported


async def test_streamed_usage_equals_the_non_streamed_reply(
    backends: Backends, mock: MockProvider
) -> None:
    """The counts the backend collects from the stream equal those of the same reply asked
    for without streaming (normalised the same way), for both providers."""
    usage = CASES["read and writes"]
    mock.default_reply = Reply.ok("Same answer either way.", usage=usage)
    oa = openai.AsyncOpenAI(base_url=mock.openai_base_url, api_key=SECRET, max_retries=0)
    plain = await oa.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}]
    )
    await oa.close()
    assert plain.usage is not None and plain.usage.prompt_tokens_details is not None
    expected = TokenCounts.from_openai(
        plain.usage.prompt_tokens,
        plain.usage.completion_tokens,
        plain.usage.prompt_tokens_details.cached_tokens or 0,
    )
    streamed = (await collect(backends("openai"), request())).finish
    assert streamed.counts == expected

    an = anthropic.AsyncAnthropic(base_url=mock.anthropic_base_url, api_key=SECRET, max_retries=0)
    message = await an.messages.create(
        model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    )
    await an.close()
    u = message.usage
    assert u.cache_creation is not None
    expected = TokenCounts.from_anthropic(
        u.input_tokens,
        u.output_tokens,
        u.cache_read_input_tokens or 0,
        u.cache_creation_input_tokens or 0,
        u.cache_creation.ephemeral_5m_input_tokens,
        u.cache_creation.ephemeral_1h_input_tokens,
    )
    streamed = (await collect(backends("anthropic"), request())).finish
    assert streamed.counts == expected
    assert streamed.counts.prompt_tokens == usage.prompt_tokens


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_every_call_streams_with_usage_asked_for(
    backends: Backends, mock: MockProvider, kind: str
) -> None:
    """Generate is the service collecting this stream: no non-streamed call is ever made."""
    backend = backends(kind)
    for _ in range(3):
        await collect(backend, request())
    assert mock.calls == 3
    for recorded in mock.requests:
        assert recorded.body["stream"] is True
        if kind == "openai":
            assert recorded.body["stream_options"] == {"include_usage": True}
        assert recorded.headers["x-stainless-retry-count"] == "0"


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_events_start_deltas_finish(
    backends: Backends, mock: MockProvider, kind: str
) -> None:
    mock.script(Reply.ok("one two three", usage=Usage(50, 3)))
    req = request("Count to three.")
    outcome = await collect(backends(kind), req)
    assert outcome.start.prompt_tokens == prompt_token_bound("Count to three.")
    assert not outcome.start.measured
    assert [d.text for d in outcome.deltas] == ["one ", "two ", "three"]
    assert all(d.tokens == 1 for d in outcome.deltas)
    finish = outcome.finish
    assert finish.finish_reason is FinishReason.EOS
    assert finish.queued_ms == 0.0
    assert finish.first_token_at is not None and finish.last_token_at is not None
    assert finish.first_token_at <= finish.last_token_at


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_a_reply_without_usage_is_marked_not_reported(
    backends: Backends, mock: MockProvider, kind: str
) -> None:
    mock.script(Reply.ok("no usage here", omit_usage=True))
    outcome = await collect(backends(kind), request("Hi there"))
    finish = outcome.finish
    assert not finish.usage_reported
    assert finish.prompt_tokens == prompt_token_bound("Hi there")
    assert finish.completion_tokens == 3  # the chunks seen
    assert outcome.text == "no usage here"


@pytest.mark.parametrize(
    ("kind", "finish", "reason"),
    [
        ("openai", "length", FinishReason.LENGTH),
        ("openai", "stop_sequence", FinishReason.EOS),  # OpenAI cannot tell them apart
        ("anthropic", "length", FinishReason.LENGTH),
        ("anthropic", "stop_sequence", FinishReason.STOP_SEQUENCE),
    ],
)
async def test_finish_reasons(
    backends: Backends, mock: MockProvider, kind: str, finish: str, reason: FinishReason
) -> None:
    mock.script(Reply.ok("cut short", finish=finish))
    assert (await collect(backends(kind), request())).finish.finish_reason is reason


async def test_sampling_reaches_the_provider(backends: Backends, mock: MockProvider) -> None:
    sampling = SamplingParams(
        max_new_tokens=20, temperature=0.7, top_p=0.9, top_k=5, stop=("END",), seed=3
    )
    req = request().__class__(request_id="s", prompt="p", sampling=sampling)
    await collect(backends("openai"), req)
    await collect(backends("openai_compatible"), req)
    await collect(backends("anthropic"), req)
    oa, compat, an = (r.body for r in mock.requests)
    assert oa["max_completion_tokens"] == 20 and "top_k" not in oa
    assert (oa["temperature"], oa["top_p"], oa["stop"], oa["seed"]) == (0.7, 0.9, ["END"], 3)
    assert compat["max_tokens"] == 20 and compat["top_k"] == 5
    assert (an["max_tokens"], an["stop_sequences"], an["model"]) == (20, ["END"], "mock-model-1")
    # anthropic 2.x's messages API takes no sampling parameters.
    assert not {"temperature", "top_p", "top_k", "seed"} & set(an)


def test_info_describes_the_remote_model(backends: Backends) -> None:
    backend = backends("anthropic", model={"tier": "premium", "quality": 0.9})
    info = backend.info
    assert (info.name, info.kind, info.provider) == ("m", ModelKind.REMOTE, "mock-anthropic")
    assert info.source == info.provider_model == "mock-model-1"
    assert (info.tier, info.quality, info.context_length) == (Tier.PREMIUM, 0.9, 100_000)
    assert info.prices.input == Decimal("1.0") and info.structured_output
    assert (info.max_new_tokens_cap, info.default_max_new_tokens) == (4096, 32)


def test_resolve_sampling(backends: Backends) -> None:
    backend = backends("openai", model={"default_min_new_tokens": 4})
    resolved = backend.resolve_sampling(SamplingParams())
    # The provider cannot honour a minimum length: the model's default does not apply.
    assert (resolved.max_new_tokens, resolved.min_new_tokens) == (32, 0)
    assert backend.resolve_sampling(SamplingParams(min_new_tokens=0)).min_new_tokens == 0
    with pytest.raises(InvalidRequest, match=r"must be in \[1, 4096\].*got 5000"):
        backend.resolve_sampling(SamplingParams(max_new_tokens=5000))
    with pytest.raises(InvalidRequest, match=r"min_new_tokens must be in \[0, 8\].*got 9"):
        backend.resolve_sampling(SamplingParams(max_new_tokens=8, min_new_tokens=9))
    with pytest.raises(FailedPrecondition, match="min_new_tokens=3 cannot be honoured"):
        backend.resolve_sampling(SamplingParams(min_new_tokens=3))


def test_check_input_refuses_only_what_cannot_fit(backends: Backends) -> None:
    backend = backends("openai", model={"context_length": 1000})
    backend.check_input(request("x" * 3000, max_new_tokens=200))  # ~750 + 200 fits
    with pytest.raises(InvalidRequest, match=r"about 1000 tokens.*\(200\).*\(1000\)"):
        backend.check_input(request("x" * 4000, max_new_tokens=200))


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_a_caller_that_stops_early_closes_the_call(
    backends: Backends, mock: MockProvider, kind: str
) -> None:
    """Closing the stream (client gone) or cancelling it (deadline) frees the replica at
    once, and no error is raised."""
    mock.default_reply = Reply.ok("a b c d e f g h", chunk_delay_s=0.05)
    backend = backends(kind)
    replica = backend._pool.replicas.replicas[0]  # type: ignore[union-attr]
    stream = backend.stream(request())
    assert isinstance(await anext(stream), BackendStart)
    assert isinstance(await anext(stream), BackendDelta)
    assert replica.outstanding == 1
    await stream.aclose()  # type: ignore[attr-defined]
    assert replica.outstanding == 0

    task = asyncio.create_task(collect(backend, request()))
    await asyncio.sleep(0.12)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert replica.outstanding == 0 and replica.failures_in_row == 0
    assert (await collect(backend, request())).text == "a b c d e f g h"
