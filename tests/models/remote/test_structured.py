"""Structured output: the schema mapped to each provider's native feature, the answer checked
before it is yielded, a non-conforming answer retried once."""

from __future__ import annotations

import json
from typing import Any

import pytest

from optiserve.domain.errors import Unavailable
from optiserve.domain.types import GenerateRequest
from providers.mock_provider import MockProvider, Reply, Usage

from .helpers import Backends, collect, request

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["city", "population"],
    "additionalProperties": False,
}
GOOD = '{"city": "Paris", "population": 2100000}'
BAD = '{"city": "Paris", "population": "lots"}'
CHUNKS = ('{"city": ', '"Paris", ', '"population": 2100000}')


def structured(**fields: Any) -> GenerateRequest:
    return request("Largest city of France?", json_schema=json.dumps(SCHEMA), **fields)


async def test_openai_response_format(backends: Backends, mock: MockProvider) -> None:
    mock.script(Reply.ok(GOOD, chunks=CHUNKS, usage=Usage(40, 12)))
    outcome = await collect(backends("openai"), structured())
    assert mock.requests[0].body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": SCHEMA, "strict": True},
    }
    # Held back until checked, then one delta counting the provider's chunks.
    assert [(d.text, d.tokens) for d in outcome.deltas] == [(GOOD, 3)]
    assert (outcome.finish.prompt_tokens, outcome.finish.completion_tokens) == (40, 12)


async def test_anthropic_forced_tool_call(backends: Backends, mock: MockProvider) -> None:
    mock.script(Reply.ok(GOOD, chunks=CHUNKS, usage=Usage(40, 12)))
    outcome = await collect(backends("anthropic"), structured())
    body = mock.requests[0].body
    assert body["tools"] == [
        {
            "name": "respond",
            "description": "Give the answer as this tool's input.",
            "input_schema": SCHEMA,
        }
    ]
    assert body["tool_choice"] == {"type": "tool", "name": "respond"}
    assert outcome.text == json.dumps(json.loads(GOOD))  # json.dumps of the tool input
    assert len(outcome.deltas) == 1 and outcome.finish.completion_tokens == 12


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
@pytest.mark.parametrize("bad", [BAD, '{"city": "Par'], ids=["wrong-type", "not-json"])
async def test_a_non_conforming_answer_is_retried_once(
    backends: Backends, mock: MockProvider, kind: str, bad: str
) -> None:
    mock.script(Reply.ok(bad, usage=Usage(40, 12)), Reply.ok(GOOD, usage=Usage(40, 10)))
    outcome = await collect(backends(kind), structured())
    assert json.loads(outcome.text) == json.loads(GOOD)
    assert mock.calls == 2
    # Both answers were paid for: the finish sums them.
    assert (outcome.finish.prompt_tokens, outcome.finish.completion_tokens) == (80, 22)


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_still_non_conforming_is_unavailable_with_the_error(
    backends: Backends, mock: MockProvider, kind: str
) -> None:
    mock.default_reply = Reply.ok(BAD)
    with pytest.raises(Unavailable) as caught:
        await collect(backends(kind, max_retries=3), structured())
    assert str(caught.value).startswith(
        "provider answer does not match response_format.json_schema: 'lots' is not of type "
        "'integer' (at population)"
    )
    assert mock.calls == 2  # one retry for the answer, whatever max_retries allows


async def test_the_answer_retry_counts_against_the_call_bound(
    backends: Backends, mock: MockProvider
) -> None:
    mock.default_reply = Reply.ok(BAD)
    with pytest.raises(Unavailable, match="does not match"):
        await collect(backends("openai", max_retries=0), structured())
    assert mock.calls == 1


async def test_a_cut_structured_stream_is_retried_as_nothing_was_sent(
    backends: Backends, mock: MockProvider
) -> None:
    mock.script(Reply.cut(GOOD, after_chunks=2), Reply.ok(GOOD))
    outcome = await collect(backends("anthropic"), structured())
    assert json.loads(outcome.text) == json.loads(GOOD) and mock.calls == 2
