"""The response cache through the real server: exact and semantic hits, streaming replay,
partitions, per-request modes, restarts and statistics."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from optiserve.app import ServerThread
from optiserve.config import Config
from optiserve_client import Client, InvalidArgument, NotFound, OptiserveClientError
from optiserve_client.v1 import optiserve_pb2 as pb
from optiserve_client.v1 import optiserve_pb2_grpc as pb_grpc

QUESTION = "How do I reverse a list in Python?"
PARAPHRASE = "How can I reverse a list in Python?"
OTHER_MEANING = "How do I sort a list in Python?"


@pytest.fixture(scope="module")
def cache_config(make_config: Callable[..., Config]) -> Config:
    return make_config(cache={"enabled": True, "replay_chunk_chars": 4})


@pytest.fixture(scope="module")
def cache_server(cache_config: Config) -> Iterator[ServerThread]:
    server = ServerThread(cache_config)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def cc(cache_server: ServerThread) -> Iterator[Client]:
    with Client(cache_server.target, timeout=60) as c:
        yield c


@pytest.fixture
def settle(cache_server: ServerThread) -> Callable[[], None]:
    """Wait for the cache writes in flight: they run after the answer has gone out."""
    return cache_server.wait_for_cache_writes


def test_exact_hit_counts_no_new_tokens(cc: Client, settle: Callable[[], None]) -> None:
    first = cc.generate("Explain exact hits please", max_new_tokens=12)
    settle()
    assert first.provider == "local"
    assert [c["outcome"] for c in first.cache][:1] == ["miss"]
    second = cc.generate("Explain exact hits please", max_new_tokens=12)
    assert second.text == first.text
    assert second.provider == "cache"
    assert second.finish_reason == "cached"
    assert second.usage.completion_tokens == 0
    assert second.usage.cached_tokens == first.usage.completion_tokens
    assert second.cache[0]["layer"] == "exact"
    assert second.cache[0]["outcome"] == "hit"
    assert second.cost_saved_usd == first.cost_usd
    different = cc.generate("Explain exact hits please", max_new_tokens=11)
    assert different.provider == "local", "max_new_tokens is part of the key"


def test_semantic_hit_and_guard(cc: Client, settle: Callable[[], None]) -> None:
    original = cc.generate(QUESTION, max_new_tokens=10)
    settle()
    assert original.provider == "local"
    hit = cc.generate(PARAPHRASE, max_new_tokens=10)
    assert hit.provider == "cache", hit.cache
    assert hit.text == original.text
    semantic = [c for c in hit.cache if c["layer"] == "semantic"]
    assert semantic[0]["outcome"] == "hit"
    assert 0.8 < float(semantic[0]["similarity"]) <= 1.0  # type: ignore[arg-type]
    other = cc.generate(OTHER_MEANING, max_new_tokens=10)
    assert other.provider == "local", "a question with another meaning must not hit"


def test_stream_replays_cached_answer_in_chunks(cc: Client, settle: Callable[[], None]) -> None:
    prompt = "Replay me as a stream"
    generated = list(cc.stream(prompt, max_new_tokens=12))
    settle()
    assert generated[-1].completion is not None
    assert generated[-1].completion.provider == "local"
    replayed = list(cc.stream(prompt, max_new_tokens=12))
    done = replayed[-1].completion
    assert done is not None
    assert done.provider == "cache"
    assert done.finish_reason == "cached"
    assert done.text == generated[-1].completion.text
    pieces = [c.text for c in replayed if c.text]
    assert all(len(p) <= 4 for p in pieces)
    assert len(pieces) == -(-len(done.text) // 4)
    assert done.timings.time_to_first_token_ms < 50


def test_no_hit_across_tenants_or_system_prompts(cache_server: ServerThread) -> None:
    with (
        Client(cache_server.target, api_key="tenant-a", timeout=60) as a,
        Client(cache_server.target, api_key="tenant-b", timeout=60) as b,
    ):
        assert a.generate("Shared question here", max_new_tokens=8).provider == "local"
        cache_server.wait_for_cache_writes()
        assert a.generate("Shared question here", max_new_tokens=8).provider == "cache"
        assert b.generate("Shared question here", max_new_tokens=8).provider == "local"
        for system in ("You are a pirate.", "You are a lawyer."):
            r = a.generate(
                messages=[("system", system), ("user", "Same user turn")], max_new_tokens=8
            )
            assert r.provider == "local", f"system prompt {system!r} hit another's entry"


def test_cache_modes(cc: Client, settle: Callable[[], None]) -> None:
    prompt = "Modes are per request"
    with pytest.raises(NotFound) as info:
        cc.generate(prompt, max_new_tokens=8, cache_mode="only_if_cached")
    assert "only-if-cached" in info.value.message
    assert cc.generate(prompt, max_new_tokens=8, cache_mode="bypass").provider == "local"
    settle()
    with pytest.raises(NotFound):
        cc.generate(prompt, max_new_tokens=8, cache_mode="only_if_cached")
    assert cc.generate(prompt, max_new_tokens=8, cache_mode="refresh").provider == "local"
    settle()
    assert cc.generate(prompt, max_new_tokens=8, cache_mode="only_if_cached").provider == "cache"
    assert cc.generate(prompt, max_new_tokens=8, cache_mode="bypass").provider == "local"
    sampled = cc.generate(prompt, max_new_tokens=8, temperature=0.7, seed=1)
    assert sampled.provider == "local"
    assert sampled.cache[0]["outcome"] == "skipped"


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"semantic_threshold": 1.5}, "semantic_threshold"),
        ({"semantic_threshold": -0.1}, "semantic_threshold"),
        ({"cache_ttl_s": -1.0}, "ttl"),
    ],
)
def test_bad_cache_policy(cc: Client, kwargs: dict[str, float], needle: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        cc.generate("x", max_new_tokens=2, **kwargs)  # type: ignore[arg-type]
    assert needle in info.value.message
    assert cc.health() == "SERVING"


def test_cancelled_stream_is_never_cached(cache_server: ServerThread, cc: Client) -> None:
    request = pb.GenerateRequest(
        prompt="A stream cancelled midway", sampling=pb.SamplingParams(max_new_tokens=400)
    )
    with grpc.insecure_channel(cache_server.target) as channel:
        call = pb_grpc.OptiServeStub(channel).StreamGenerate(request, timeout=60)
        next(call)
        call.cancel()
    cache_server.wait_for_cache_writes()
    with pytest.raises(NotFound):
        cc.generate("A stream cancelled midway", max_new_tokens=400, cache_mode="only_if_cached")


def test_usage_reports_cache_statistics(cc: Client, settle: Callable[[], None]) -> None:
    cc.generate("Statistics question", max_new_tokens=6)
    settle()
    cc.generate("Statistics question", max_new_tokens=6)
    usage = cc.usage()
    assert usage.cache.enabled
    assert usage.cache.exact_hits >= 1
    assert usage.cache.stores >= 1
    assert usage.cache.entries >= 1
    assert usage.cache.index_device == "cpu"
    assert usage.total.exact_hits >= 1


def test_restart_keeps_committed_entries(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    from dataclasses import replace

    config = replace(make_config(cache={"enabled": True}), data_dir=str(tmp_path))
    first = ServerThread(config)
    first.start()
    try:
        with Client(first.target, timeout=60) as c:
            original = c.generate("Persist me across restarts", max_new_tokens=8)
    finally:
        first.stop()
    second = ServerThread(config)
    second.start()
    try:
        with Client(second.target, timeout=60) as c:
            again = c.generate(
                "Persist me across restarts", max_new_tokens=8, cache_mode="only_if_cached"
            )
            assert again.text == original.text
            paraphrase = c.generate(
                "Persist me across a restart", max_new_tokens=8, cache_mode="only_if_cached"
            )
            assert paraphrase.text == original.text
    finally:
        second.stop()


DEGENERATE = ["\x00", " ", "  ", "\t", "\n", "\x01", "???", "...", "!!!", "😀", "🎉🎉"]


def _trace(target: str, prompt: str, max_new_tokens: int) -> pb.GenerateResponse:
    """A raw Generate: the client's Completion leaves the trace's ``detail`` out."""
    request = pb.GenerateRequest(
        prompt=prompt,
        # min = max: an answer is never empty (an empty one is not cached).
        sampling=pb.SamplingParams(max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens),
    )
    with grpc.insecure_channel(target) as channel:
        response: pb.GenerateResponse = pb_grpc.OptiServeStub(channel).Generate(request, timeout=60)
    return response


def test_degenerate_prompts_skip_the_semantic_layer(
    cache_server: ServerThread, settle: Callable[[], None]
) -> None:
    """Prompts without letters or digits embed alike (cosine ~1): none may be served
    another's answer; each repeat is still an exact hit."""
    first: dict[str, str] = {}
    for prompt in DEGENERATE:
        response = _trace(cache_server.target, prompt, 7)
        settle()
        assert response.summary.provider == "local", (prompt, response.summary.trace)
        semantic = [c for c in response.summary.trace.cache if c.layer == pb.CACHE_LAYER_SEMANTIC]
        assert [c.outcome for c in semantic] == [pb.CACHE_OUTCOME_SKIPPED], prompt
        assert "no letters or digits" in semantic[0].detail
        first[prompt] = response.text
    # An empty answer is never cached (the tiny model's answer to an emoji may be empty).
    assert sum(1 for text in first.values() if text) >= len(DEGENERATE) - 2, first
    for prompt in (p for p in DEGENERATE if first[p]):
        again = _trace(cache_server.target, prompt, 7)
        assert again.summary.provider == "cache", (prompt, first[prompt])
        assert again.text == first[prompt]
        assert [(c.layer, c.outcome) for c in again.summary.trace.cache] == [
            (pb.CACHE_LAYER_EXACT, pb.CACHE_OUTCOME_HIT)
        ]


def _ask(target: str, prompt: str, ttl_s: float | None = None) -> pb.GenerateResponse:
    policy = pb.CachePolicy()
    if ttl_s is not None:
        policy.ttl_seconds = ttl_s
    request = pb.GenerateRequest(
        prompt=prompt,
        sampling=pb.SamplingParams(max_new_tokens=9, min_new_tokens=9),
        cache=policy,
    )
    with grpc.insecure_channel(target) as channel:
        response: pb.GenerateResponse = pb_grpc.OptiServeStub(channel).Generate(request, timeout=60)
    return response


@pytest.mark.parametrize(
    ("stored", "asked", "layer"),
    [
        ("When does this entry expire?", "When does this entry expire?", pb.CACHE_LAYER_EXACT),
        (
            "How do I expire a cache entry?",
            "How can I expire a cache entry?",
            pb.CACHE_LAYER_SEMANTIC,
        ),
    ],
    ids=["exact", "semantic"],
)
def test_an_expired_entry_is_counted_and_named_in_the_trace(
    cache_server: ServerThread,
    cc: Client,
    settle: Callable[[], None],
    stored: str,
    asked: str,
    layer: int,
) -> None:
    original = _ask(cache_server.target, stored, ttl_s=1.0)
    settle()
    assert original.summary.provider == "local"
    fresh = _ask(cache_server.target, asked)
    assert fresh.summary.provider == "cache", "the entry must hit while it is live"
    before = cc.usage().cache.expirations
    time.sleep(2.0)
    late = _ask(cache_server.target, asked)
    assert late.summary.provider == "local", "an expired entry was served"
    lines = [c for c in late.summary.trace.cache if c.layer == layer]
    assert lines and lines[0].outcome == pb.CACHE_OUTCOME_MISS, late.summary.trace
    detail = lines[0].detail
    assert detail.startswith("the entry matched but expired "), detail
    assert detail.endswith(" s ago (ttl 1 s)"), detail
    ago = float(detail.removeprefix("the entry matched but expired ").split(" s ago")[0])
    assert 0.5 <= ago <= 10.0, detail
    assert cc.usage().cache.expirations == before + 1


def test_a_json_schema_is_refused_before_the_cache(cc: Client, settle: Callable[[], None]) -> None:
    """A model without structured output refuses a schema, whatever the cache holds."""
    prompt = "Answer this as JSON"
    cc.generate(prompt, max_new_tokens=6)
    settle()
    for mode in ("default", "only_if_cached", "bypass"):
        with pytest.raises(OptiserveClientError) as info:
            cc.generate(prompt, max_new_tokens=6, json_schema='{"type": "object"}', cache_mode=mode)
        assert info.value.code == "FAILED_PRECONDITION", (mode, info.value)
        assert "cannot honour response_format.json_schema" in info.value.message
    with pytest.raises(InvalidArgument) as bad:
        cc.generate(prompt, max_new_tokens=6, json_schema="not json")
    assert "response_format.json_schema" in bad.value.message
    assert cc.generate(prompt, max_new_tokens=6).provider == "cache"
