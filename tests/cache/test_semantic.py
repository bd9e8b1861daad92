"""Semantic layer end to end through the facade: hits, guard rejections, partitions."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from cachehelpers import chat

from optiserve.cache import ResponseCache
from optiserve.cache.embedder import Embedder
from optiserve.cache.index import IndexParams, PartitionIndex
from optiserve.domain.types import CacheLayer, CacheOutcome, FinishReason

Factory = Callable[..., ResponseCache]


def test_embedder_matches_sentence_transformers(
    embedder: Embedder, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from sentence_transformers import SentenceTransformer

    texts = [
        "How do I reset my password?",
        "FAISS is a vector index.",
        "",
        "What is the best way to learn machine learning from scratch in 2024?",
        "Why is the sky blue?",
        "How many moons does Jupiter have?",
    ]
    reference = SentenceTransformer(str(embedder.path), device="cpu").encode(
        texts, normalize_embeddings=True
    )
    fp32 = Embedder(onnx_dir=tmp_path_factory.mktemp("fp32"), quantize="none")
    exact = fp32.embed_many(texts)
    assert exact.shape == (len(texts), 384)
    assert float(np.min(np.sum(exact * reference, axis=1))) > 0.9999
    assert embedder.quantize == "int8"  # the default the cache runs with
    quantized = embedder.embed_many(texts)
    assert float(np.mean(np.sum(quantized * reference, axis=1))) >= 0.99


def test_empty_and_oversized_text(embedder: Embedder) -> None:
    empty = embedder.embed("")
    huge = embedder.embed("word " * 20_000)
    for v in (empty, huge):
        assert v.shape == (384,)
        assert np.isfinite(v).all()
        assert abs(float(np.linalg.norm(v)) - 1.0) < 1e-4
    assert embedder.count_tokens("word " * 20_000) == embedder.max_tokens


async def test_paraphrase_hits_with_trace(make_cache: Factory) -> None:
    cache = make_cache()
    await cache.store(
        chat("How do I reset my password?"), "m", "Click 'forgot'.", 4, 0.002, FinishReason.EOS
    )
    result = await cache.lookup(chat("How can I reset my password?"), "m")
    assert result.entry is not None
    assert result.entry.layer is CacheLayer.SEMANTIC
    assert result.entry.text == "Click 'forgot'."
    semantic = result.trace[-1]
    assert semantic.layer is CacheLayer.SEMANTIC
    assert semantic.outcome is CacheOutcome.HIT
    assert semantic.similarity > 0.9
    assert semantic.entry_id == result.entry.entry_id
    assert semantic.guard_verdict.startswith("accept")
    assert result.trace[0].outcome is CacheOutcome.MISS  # exact layer first
    assert cache.stats().semantic_hits == 1


@pytest.mark.parametrize(
    ("stored", "asked"),
    [
        ("Is Python a compiled language?", "Is Python not a compiled language?"),
        ("What is 15% of 200?", "What is 15% of 300?"),
        ("How do I install Python 2 on Ubuntu?", "How do I install Python 3 on Ubuntu?"),
        ("What is the population of France?", "What is the population of Germany?"),
        ("Why should I learn Java?", "Why shouldn't I learn Java?"),
    ],
)
async def test_guard_refuses_different_meaning(
    make_cache: Factory, stored: str, asked: str
) -> None:
    cache = make_cache(persist=False)
    await cache.store(chat(stored), "m", "answer", 1, 0.001, FinishReason.EOS)
    result = await cache.lookup(chat(asked, threshold=0.5), "m")
    assert result.entry is None, result.trace
    assert result.trace[-1].outcome in (CacheOutcome.REJECTED, CacheOutcome.MISS)


async def test_no_cross_partition_hit(make_cache: Factory) -> None:
    cache = make_cache(persist=False)
    q = "What is the refund policy for annual plans?"
    combos = list(itertools.product(("acme", "globex"), ("You are terse.", "You are verbose.")))
    for tenant, system in combos:
        await cache.store(
            chat(q, tenant=tenant, system=system),
            "m",
            f"{tenant}|{system}",
            5,
            0.01,
            FinishReason.EOS,
        )
    for tenant, system in combos:
        for asked in (q, "What's the refund policy for annual plans?"):
            result = await cache.lookup(chat(asked, tenant=tenant, system=system), "m")
            assert result.entry is not None
            assert result.entry.text == f"{tenant}|{system}"
    # A tenant with no entry gets nothing even at threshold 0.
    stranger = await cache.lookup(chat(q, tenant="initech", threshold=0.0), "m")
    assert stranger.entry is None
    other_model = await cache.lookup(chat(q, tenant="acme", system="You are terse."), "m2")
    assert other_model.entry is None


async def test_per_request_threshold(make_cache: Factory) -> None:
    cache = make_cache(persist=False)
    await cache.store(chat("How do I reset my password?"), "m", "a", 1, 0.0, FinishReason.EOS)
    strict = await cache.lookup(chat("How can I reset my password?", threshold=1.0), "m")
    assert strict.entry is None
    assert strict.trace[-1].outcome is CacheOutcome.MISS


def test_partition_index_flat_to_hnsw_and_remove() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((300, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = PartitionIndex(IndexParams(dim=16, flat_max_entries=100, use_gpu=False))
    index.add(np.arange(50), vectors[:50])
    assert index.kind == "flat"
    assert index.search(vectors[7])[0][0] == 7
    index.remove([7])
    assert index.search(vectors[7])[0][0] != 7
    index.add(np.arange(50, 300), vectors[50:])
    assert index.kind == "hnsw"
    assert len(index) == 299
    assert index.search(vectors[200])[0] == (200, pytest.approx(1.0, abs=1e-5))
    index.remove([200])
    assert all(i != 200 for i, _ in index.search(vectors[200], 5))
    index.add(np.array([200]), vectors[200:201])
    assert index.search(vectors[200])[0][0] == 200


async def test_lookup_and_store_do_not_block_the_event_loop(
    make_cache: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio
    import time

    cache = make_cache(persist=False)
    assert cache.embedder is not None
    real = cache.embedder.embed

    def slow_embed(text: str) -> np.ndarray:  # type: ignore[type-arg]
        time.sleep(0.2)
        return real(text)

    monkeypatch.setattr(cache.embedder, "embed", slow_embed)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    await cache.store(chat("How do I reset my password?"), "m", "a", 1, 0.0, FinishReason.EOS)
    await cache.lookup(chat("How can I reset my password?"), "m")
    task.cancel()
    assert ticks >= 20  # the loop kept running through 0.4 s of embedding


DEGENERATE = ("\x00", " ", "\t\n", "\x01", "???", "...", "😀", "🎉🎉", "ᚠᛇᚻ", "ℵ ?")


def test_semantic_eligibility_rule(embedder: Embedder) -> None:
    from optiserve.cache.eligibility import NO_KNOWN_WORDS, NO_LETTERS, semantic_skip_reason

    for text in ("\x00", " ", "", "\t\n", "???", "...", "😀", "🎉🎉", "—–"):
        assert semantic_skip_reason(text, embedder) == NO_LETTERS, repr(text)
        assert semantic_skip_reason(text) == NO_LETTERS, repr(text)
    for text in ("ᚠᛇᚻ", "ℵ ?"):  # letters, but every word an unknown token
        assert semantic_skip_reason(text, embedder) == NO_KNOWN_WORDS, repr(text)
    for text in ("a", "42", "x²", "中文", "How do I reset my password?", "???a"):
        assert semantic_skip_reason(text, embedder) == "", repr(text)


async def test_degenerate_questions_are_exact_only(make_cache: Factory, tmp_path: Path) -> None:
    cache = make_cache(tmp_path)
    for i, text in enumerate(DEGENERATE):
        await cache.store(chat(text), "m", f"answer {i}", 1, 0.0, FinishReason.EOS)
    for opened in (cache, make_cache(tmp_path)):  # and after a restart (index rebuilt)
        for i, text in enumerate(DEGENERATE):
            exact = await opened.lookup(chat(text), "m")
            assert exact.entry is not None and exact.entry.text == f"answer {i}", repr(text)
            assert exact.entry.layer is CacheLayer.EXACT
        for text in ("\x02", "  ", "!!!", "🙂", "ᚱ"):
            result = await opened.lookup(chat(text, threshold=0.0), "m")
            assert result.entry is None, (text, result.trace)
            assert result.trace[-1].outcome is CacheOutcome.SKIPPED
            assert result.trace[-1].detail.startswith("semantic layer skipped: ")
        # None of them is in the index: a real question finds nothing even at threshold 0.
        real = await opened.lookup(chat("What is a list?", threshold=0.0), "m")
        assert real.entry is None
        assert real.trace[-1].detail == "no entry in this partition"
