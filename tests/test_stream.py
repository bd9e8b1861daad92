"""StreamGenerate, and the detokenizer and stop matcher it relies on."""

from __future__ import annotations

from pathlib import Path

import pytest

from optiserve.models.local.text import IncrementalDetokenizer, StopMatcher
from optiserve_client import AsyncClient, Client

PROMPT = "Create a new socket using the given address family"


def test_stream_matches_generate(client: Client) -> None:
    whole = client.generate(PROMPT, max_new_tokens=20)
    chunks = list(client.stream(PROMPT, max_new_tokens=20))
    assert chunks[-1].completion is not None
    assert all(c.completion is None for c in chunks[:-1])
    text = "".join(c.text for c in chunks)
    assert text == whole.text == chunks[-1].completion.text
    assert len([c for c in chunks if c.text]) > 1, "text should arrive in several deltas"
    done = chunks[-1].completion
    assert done.usage.completion_tokens == whole.usage.completion_tokens
    assert done.timings.time_to_first_token_ms > 0


async def test_async_client_streams(server: object) -> None:
    target = server.target  # type: ignore[attr-defined]
    async with AsyncClient(target, timeout=60) as client:
        parts = [c async for c in client.stream(PROMPT, max_new_tokens=8)]
        result = await client.generate(PROMPT, max_new_tokens=8)
        assert "".join(p.text for p in parts) == result.text
        assert await client.health() == "SERVING"
        assert [m.name for m in await client.list_models()] == ["tiny"]


@pytest.mark.parametrize(
    "text",
    ["héllo wörld", "日本語のテキスト", "emoji 🙂🚀 and ünïcödé", "plain ascii, spaces  x"],
)
def test_detokenizer_never_splits_characters(tiny_model_dir: Path, text: str) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text.split()), "the text should span several byte-level tokens"
    detok = IncrementalDetokenizer(tok)
    deltas = [detok.push(i) for i in ids]
    assert "".join(deltas) == tok.decode(ids)
    assert all("\ufffd" not in d for d in deltas)


def test_stop_matcher_across_deltas() -> None:
    m = StopMatcher(["STOP", "\n\n"])
    out = [m.feed(d) for d in ["hello S", "T", "OP and more"]]
    assert "".join(out) == "hello "
    assert m.stopped
    assert m.feed("anything") == ""


def test_stop_matcher_releases_false_prefix() -> None:
    m = StopMatcher(["STOP"])
    assert m.feed("ab ST") == "ab "
    assert m.feed("ART") == "START"
    assert m.feed(" ST") == " "
    assert m.flush() == "ST"
    assert not m.stopped


def test_stop_matcher_without_stops_is_transparent() -> None:
    m = StopMatcher([])
    assert m.feed("abc") == "abc"
    assert m.flush() == ""
