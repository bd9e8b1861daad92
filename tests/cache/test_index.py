"""FAISS threading (the cache's threads set their OpenMP team size, nobody else's), the
GPU resources an index owns, huge pages, and adopting a built graph."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np
import pytest
from cachehelpers import chat

from optiserve.cache import ResponseCache
from optiserve.cache.index import (
    IndexParams,
    PartitionIndex,
    VectorIndex,
    advise_huge_pages,
    new_hnsw,
)
from optiserve.domain.types import FinishReason

Factory = Callable[..., ResponseCache]


def _unit(n: int, dim: int, seed: int) -> np.ndarray:  # type: ignore[type-arg]
    vectors = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_cache_searches_on_its_threads_with_its_openmp_team(
    make_cache: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # OpenMP keeps the team size per OS thread and a new thread starts at OMP_NUM_THREADS
    # (the tests set 1), so 3 can only come from the cache's worker initializer.
    mine = faiss.omp_get_max_threads()
    seen: list[tuple[str, int]] = []
    real_search = PartitionIndex.search

    def spy(self: PartitionIndex, vector: np.ndarray, k: int = 1) -> list[tuple[int, float]]:  # type: ignore[type-arg]
        seen.append((threading.current_thread().name, faiss.omp_get_max_threads()))
        return real_search(self, vector, k)

    monkeypatch.setattr(PartitionIndex, "search", spy)
    cache = make_cache(persist=False, faiss_threads=3)
    cache.store_sync(chat("How do I reset my password?"), "m", "a", 1, 0.0, FinishReason.EOS)
    hit = cache.lookup_sync(chat("How can I reset my password?"), "m")
    assert hit.entry is not None
    assert seen and all(name.startswith("cache") and team == 3 for name, team in seen), seen
    assert faiss.omp_get_max_threads() == mine, "the caller's thread was left as it was"


def test_vector_index_owns_its_gpu_resources() -> None:
    index = VectorIndex(IndexParams(dim=8, use_gpu=False))
    assert not index.gpu
    vectors = _unit(4, 8, 0)
    for i, v in enumerate(vectors):
        index.add("p", i, v)
    assert index.search("p", vectors[2], 1)[0][0] == 2
    assert index.search("other", vectors[2], 1) == []


def test_adopt_a_built_graph_searches_like_the_cache() -> None:
    params = IndexParams(dim=16, flat_max_entries=0, hnsw_m=8, hnsw_ef_construction=40)
    vectors = _unit(500, 16, 2)
    ids = np.arange(1000, 1500, dtype=np.int64)
    built = new_hnsw(params)
    built.add_with_ids(vectors, ids)
    partition = PartitionIndex.adopt(params, built, ids, vectors)
    assert partition.kind == "hnsw"
    assert len(partition) == 500
    assert partition.search(vectors[7], 3)[0][0] == 1007
    partition.remove([1007])
    assert all(i != 1007 for i, _ in partition.search(vectors[7], 3))
    with pytest.raises(ValueError, match="holds 500 vectors"):
        PartitionIndex.adopt(params, built, ids[:10], vectors[:10])
    flat = faiss.IndexIDMap2(faiss.IndexFlatIP(16))
    flat.add_with_ids(vectors, ids)
    exact = PartitionIndex.adopt(replace(params, flat_max_entries=1000), flat, ids, vectors)
    assert exact.kind == "flat"
    assert exact.search(vectors[9], 1)[0][0] == 1009
    with pytest.raises(ValueError, match="HNSW"):
        PartitionIndex.adopt(params, faiss.IndexFlatIP(16), ids[:0], vectors[:0])


def test_huge_pages_keep_the_answers() -> None:
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((3000, 384)).astype(np.float32)  # 4.6 MB of vectors
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = new_hnsw(IndexParams(dim=384, hnsw_m=16, hnsw_ef_construction=40))
    index.add_with_ids(vectors, np.arange(3000, dtype=np.int64))
    before = index.search(vectors[:50], 3)
    advised = advise_huge_pages(index)
    after = index.search(vectors[:50], 3)
    np.testing.assert_array_equal(before[1], after[1])
    assert advised % (2 << 20) == 0
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if thp.exists() and "[never]" not in thp.read_text():
        assert advised >= 2 << 20  # the vectors, at least
