"""FAISS threading: every thread that searches uses the configured OpenMP team size."""

from __future__ import annotations

import threading
from pathlib import Path

import faiss
import numpy as np

from optiserve.cache.index import (
    IndexParams,
    PartitionIndex,
    advise_huge_pages,
    configure_faiss,
    new_hnsw,
)


def test_search_on_a_fresh_thread_uses_one_openmp_thread() -> None:
    configure_faiss()
    index = PartitionIndex(IndexParams(dim=8, flat_max_entries=4, use_gpu=False))
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((16, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index.add(np.arange(16), vectors)
    assert index.kind == "hnsw"
    seen: list[tuple[int, int]] = []

    def worker() -> None:
        # OpenMP keeps the team size per OS thread; a new thread starts at OMP_NUM_THREADS
        # or one per core (the tests set OMP_NUM_THREADS=1, so start this one at 3).
        faiss.omp_set_num_threads(3)
        found = index.search(vectors[3], 1)
        seen.append((found[0][0], faiss.omp_get_max_threads()))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [(3, 1)]


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
