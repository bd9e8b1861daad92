"""The semantic cache's own index search at 1M vectors, with raw FAISS beside it.

What is timed is the cache's code path: :meth:`optiserve.cache.index.PartitionIndex.search`
(the partition lock, ``k`` = the candidates the semantic layer asks for, the over-fetch for
tombstones, the tombstone filter, the conversion of the results), one query at a time, on a
thread whose OpenMP team size is the cache's (``CacheConfig.faiss_threads``, set as the
cache's worker threads set it); run as a script it first applies the process settings the
app applies at start. The baseline is
raw ``faiss`` ``index.search`` of the same index object with the same ``k``, in the same
run: rounds alternate between the two (and which goes first), and each figure is the
median round's, so a burst of load from another process lands on one round of one side.
Recall@1 of each is the share of queries whose first result is the exact top-1 (brute
force over all vectors). A last pass marks ``--dead`` of the vectors removed (tombstones
the search must over-fetch and filter, below the cache's rebuild point) and times the
cache's search again.

Data: synthetic embeddings drawn like sentence embeddings rather than isotropic noise:
20,000 topic centres, each vector a centre plus noise, normalised. Queries are stored
vectors perturbed to what a paraphrase looks like to MiniLM. The HNSW graph (``--kind
hnsw``, the default; built as the cache builds it: ``new_hnsw`` with the cache's
parameters, ``add_with_ids``) is saved under ``benchmarks/out/`` with the queries and their
exact top-1 and loaded on later runs; ``build_s`` says how long building took. The cache
adopts it (:meth:`PartitionIndex.adopt`): search parameters and transparent huge pages as
in the cache (``--no-huge-pages`` leaves them off, to measure what they bring). ``--kind
flat`` times the exact index the cache uses below ``flat_max_entries``.

Full run (the README's 1M figures; the first run builds the graph, a long build on a small
machine)::

    python benchmarks/index_1m.py

Quick check while developing: ``python benchmarks/index_1m.py --n 20000``.

Prints one JSON line last. Its keys keep the ``_1m`` suffix whatever ``--n`` is
(``index_entries`` says how many vectors were searched): ``index_*`` are the cache's search,
``faiss_*`` the raw FAISS baseline. ``cache_latency.py`` calls :func:`measure`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from optiserve.cache.config import CacheConfig
from optiserve.cache.index import (
    IndexParams,
    PartitionIndex,
    new_hnsw,
    set_openmp_threads,
)
from optiserve.cache.semantic import CANDIDATES
from optiserve.config import Config
from optiserve.process_settings import apply_process_settings

OUT = Path(__file__).resolve().parent / "out"
N = 1_000_000
DIM = 384
SEED = 1234
QUERIES = 1000
ROUNDS = 3
#: Share of the vectors removed for the tombstone pass (the cache rebuilds at a quarter).
DEAD = 0.01

FloatArray = npt.NDArray[np.float32]
IdArray = npt.NDArray[np.int64]


def _normalise(x: FloatArray) -> FloatArray:
    out: FloatArray = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out.astype(np.float32)


def synthetic(n: int, seed: int = SEED) -> FloatArray:
    """``n`` clustered unit vectors of ``DIM`` dimensions (deterministic for ``seed``)."""
    rng = np.random.default_rng(seed)
    centres = _normalise(rng.standard_normal((20_000, DIM), dtype=np.float32))
    out = np.empty((n, DIM), dtype=np.float32)
    step = 100_000
    for start in range(0, n, step):
        m = min(step, n - start)
        topic = rng.integers(0, len(centres), m)
        noise = rng.standard_normal((m, DIM), dtype=np.float32) * np.float32(1.3 / DIM**0.5)
        out[start : start + m] = _normalise(centres[topic] + noise)
    return out


def index_params(config: CacheConfig, kind: str, n: int, huge_pages: bool) -> IndexParams:
    """The cache's index parameters; ``flat_max_entries`` picks the kind for ``n`` vectors."""
    return IndexParams(
        dim=DIM,
        flat_max_entries=n if kind == "flat" else 0,
        hnsw_m=config.hnsw_m,
        hnsw_ef_search=config.hnsw_ef_search,
        hnsw_ef_construction=config.hnsw_ef_construction,
        use_gpu=False,
        huge_pages=huge_pages,
    )


@dataclass
class Workload:
    """The vectors (id = row), the queries and each query's exact top-1 id."""

    vectors: FloatArray
    queries: FloatArray
    truth: IdArray


def workload(n: int, queries: int) -> Workload:
    """Vectors, queries and exact top-1 (cached under ``out/``: brute force is slow at 1M)."""
    vectors = synthetic(n)
    file = OUT / f"index_queries_n{n}_q{queries}_s{SEED}.npz"
    if file.exists():
        data = np.load(file)
        return Workload(vectors, data["queries"], data["truth"])
    rng = np.random.default_rng(SEED + 1)
    source = rng.choice(n, queries, replace=False)
    noise = rng.standard_normal((queries, DIM), dtype=np.float32) * np.float32(0.48 / DIM**0.5)
    asked = _normalise(vectors[source] + noise)
    flat = faiss.IndexFlatIP(DIM)
    flat.add(vectors)
    _, truth = flat.search(asked, 1)
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez(file, queries=asked, truth=truth[:, 0], source=source)
    return Workload(vectors, asked, truth[:, 0].astype(np.int64))


def built_index(params: IndexParams, kind: str, vectors: FloatArray) -> tuple[Any, float]:
    """The FAISS index the cache would build over ``vectors`` (ids = rows), and the
    seconds building it took (0.0 when a saved HNSW graph was loaded)."""
    n = len(vectors)
    ids = np.arange(n, dtype=np.int64)
    if kind == "flat":
        flat = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
        started = time.perf_counter()
        flat.add_with_ids(vectors, ids)
        return flat, time.perf_counter() - started
    name = f"index_hnsw_n{n}_m{params.hnsw_m}_efc{params.hnsw_ef_construction}_s{SEED}.faiss"
    file = OUT / name
    if file.exists():
        return faiss.read_index(str(file)), 0.0
    index = new_hnsw(params)
    set_openmp_threads(os.cpu_count() or 1)  # the build may use every core
    started = time.perf_counter()
    index.add_with_ids(vectors, ids)
    build_s = time.perf_counter() - started
    OUT.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(file))
    return index, build_s


def _time_cache(
    partition: PartitionIndex, queries: FloatArray, k: int
) -> tuple[list[float], list[int]]:
    times: list[float] = []
    found: list[int] = []
    for q in queries:
        started = time.perf_counter()
        results = partition.search(q, k)
        times.append((time.perf_counter() - started) * 1000)
        found.append(results[0][0] if results else -1)
    return times, found


def _time_faiss(index: Any, queries: FloatArray, k: int) -> tuple[list[float], list[int]]:
    times: list[float] = []
    found: list[int] = []
    for q in queries:
        started = time.perf_counter()
        _, ids = index.search(q.reshape(1, -1), k)
        times.append((time.perf_counter() - started) * 1000)
        found.append(int(ids[0, 0]))
    return times, found


def _median_round(rounds: list[list[float]]) -> tuple[float, float]:
    """(p50, p99) of the round with the median p99."""
    stats = sorted(
        ((float(np.percentile(t, 50)), float(np.percentile(t, 99))) for t in rounds),
        key=lambda r: r[1],
    )
    return stats[len(stats) // 2]


def measure(
    n: int = N,
    *,
    kind: str = "hnsw",
    queries: int = QUERIES,
    rounds: int = ROUNDS,
    dead: float = DEAD,
    huge_pages: bool = True,
    config: CacheConfig | None = None,
) -> dict[str, Any]:
    """Time the cache's partition search and raw FAISS on the same index; the report."""
    config = config or CacheConfig()
    params = index_params(config, kind, n, huge_pages)
    work = workload(n, queries)
    index, build_s = built_index(params, kind, work.vectors)
    ids = np.arange(n, dtype=np.int64)
    partition = PartitionIndex.adopt(params, index, ids, work.vectors)
    # Searches run as on the cache's worker threads: their OpenMP team size, set once.
    set_openmp_threads(config.faiss_threads)
    k = CANDIDATES
    warm = work.queries[: min(100, len(work.queries))]
    _time_faiss(index, warm, k)
    _time_cache(partition, warm, k)
    ours: list[list[float]] = []
    raw: list[list[float]] = []
    found_ours: list[int] = []
    found_raw: list[int] = []
    for r in range(max(1, rounds)):
        sides = ("faiss", "cache") if r % 2 == 0 else ("cache", "faiss")
        for side in sides:
            if side == "cache":
                times, found_ours = _time_cache(partition, work.queries, k)
                ours.append(times)
            else:
                times, found_raw = _time_faiss(index, work.queries, k)
                raw.append(times)
    p50, p99 = _median_round(ours)
    raw_p50, raw_p99 = _median_round(raw)
    report: dict[str, Any] = {
        "kind": partition.kind,
        "index_entries": float(len(partition)),
        "k": k,
        "ef_search": params.hnsw_ef_search if kind == "hnsw" else None,
        "faiss_threads": config.faiss_threads,
        "queries": len(work.queries),
        "rounds": len(ours),
        "build_s": round(build_s, 1),
        "index_lookup_p50_ms_1m": p50,
        "index_lookup_p99_ms_1m": p99,
        "index_recall_at_1_1m": float(np.mean(np.asarray(found_ours) == work.truth)),
        "faiss_lookup_p50_ms_1m": raw_p50,
        "faiss_lookup_p99_ms_1m": raw_p99,
        "faiss_recall_at_1_1m": float(np.mean(np.asarray(found_raw) == work.truth)),
        "cache_overhead_p50_ms_1m": p50 - raw_p50,
        "same_top1_as_faiss": float(np.mean(np.asarray(found_ours) == np.asarray(found_raw))),
        "index_huge_page_bytes_1m": float(partition.huge_page_bytes),
    }
    report.update(_tombstone_pass(partition, work, k, dead, rounds))
    return report


def _tombstone_pass(
    partition: PartitionIndex, work: Workload, k: int, dead: float, rounds: int
) -> dict[str, float]:
    """Remove ``dead`` of the vectors (never a query's answer) and time the search again."""
    if partition.kind != "hnsw":
        return {}  # a CPU flat index removes in place: no tombstones
    n = len(work.vectors)
    count = min(int(n * dead), max(0, n // 4 - 1))  # below the cache's rebuild point
    if count <= 0:
        return {}
    keep = set(int(t) for t in work.truth)
    rng = np.random.default_rng(SEED + 2)
    chosen = [int(i) for i in rng.permutation(n) if int(i) not in keep][:count]
    partition.remove(chosen)
    times: list[list[float]] = []
    found: list[int] = []
    for _ in range(max(1, rounds)):
        t, found = _time_cache(partition, work.queries, k)
        times.append(t)
    p50, p99 = _median_round(times)
    return {
        "tombstones": float(len(chosen)),
        "index_lookup_p50_ms_1m_tombstones": p50,
        "index_lookup_p99_ms_1m_tombstones": p99,
        "index_recall_at_1_1m_tombstones": float(np.mean(np.asarray(found) == work.truth)),
    }


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the JSON line."""
    parser = argparse.ArgumentParser(description="the cache's index search vs raw FAISS")
    parser.add_argument("--n", type=int, default=N, help="vectors in the index")
    parser.add_argument("--kind", choices=("hnsw", "flat"), default="hnsw")
    parser.add_argument("--queries", type=int, default=QUERIES)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--dead", type=float, default=DEAD, help="share removed (tombstones)")
    parser.add_argument("--no-huge-pages", action="store_true")
    parser.add_argument("--faiss-threads", type=int, default=CacheConfig().faiss_threads)
    args = parser.parse_args(argv)
    load = [round(x, 2) for x in os.getloadavg()]
    config = CacheConfig(faiss_threads=args.faiss_threads)
    apply_process_settings(Config(cache=config))  # what the server's start applies
    report = measure(
        args.n,
        kind=args.kind,
        queries=min(args.queries, args.n),
        rounds=args.rounds,
        dead=args.dead,
        huge_pages=not args.no_huge_pages,
        config=config,
    )
    report["load_average"] = load
    report["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    for key, value in report.items():
        if isinstance(value, float) and key.endswith(("_ms_1m", "_ms_1m_tombstones")):
            report[key] = round(value, 4)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
