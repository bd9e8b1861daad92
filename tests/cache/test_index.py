"""FAISS threading: every thread that searches uses the configured OpenMP team size."""

from __future__ import annotations

import threading

import faiss
import numpy as np

from optiserve.cache.index import IndexParams, PartitionIndex, configure_faiss


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
