"""Cache latency: end-to-end Generate through gRPC for exact hits, semantic hits and miss
lookups with 10k cached entries; the cache's own index search at 1M entries (with raw FAISS
beside it); GPTCache 0.1.44 on the same 10k entries in the same run.

* The server is the real one (``OptiserveApp``: gRPC servicer, interceptors, pipeline with
  the response cache, a tiny local model) in its own process on 127.0.0.1; it reopens the
  populated cache from SQLite (the restart path). A miss is measured as an only-if-cached
  request: everything a miss does (exact, embedding, search, guard) except generating;
  the server answers NOT_FOUND.
* Entries: 10,000 distinct questions from ``qqp_dev.jsonl``, stored through the facade
  (``ResponseCache.store_sync``: embedding, index, SQLite). Exact hits ask stored questions
  verbatim; semantic hits ask duplicate-pair paraphrases the cache serves; misses ask
  Quora questions that are not stored and that the cache does not serve (the full miss
  path: exact miss, embedding, search, guard when a candidate is close).
* 1M: ``index_1m.py``: the cache's partition search over a 1M-vector HNSW graph (built
  once, saved under ``benchmarks/out/``), raw FAISS on the same graph as its baseline (both
  on stderr, the cache's figures in the JSON line).
* GPTCache 0.1.44: ``sqlite,faiss`` data manager, SBERT with the same all-MiniLM-L6-v2
  files, ``SearchDistanceEvaluation``, post-processing ``first``; the 10k entries imported
  with the same vectors; ``get()`` timed on the same semantic-hit queries (its hits only).
  Its SBERT runs on torch, timed both at torch's default thread count and at one thread
  (the setting optiserve's embedder and FAISS use); the faster is reported, so GPTCache is
  never handicapped (both are on stderr: ``gptcache_p50_ms_by_torch_threads``).
* Rounds: the gRPC measurements and GPTCache's take turns, ``--rounds`` times (default 3);
  each figure is the median of its rounds, so a burst of load from another process on a
  shared machine lands on one round of one side, not on the ratio.
* The embedder alone: p50 of one ``embed()`` per backend (ONNX int8, ONNX fp32, torch;
  ``embedder_p50_ms``) and the int8 embedder's cosine to the fp32 one
  (``embedder_cosine_vs_fp32``), on the stored and the queried questions, and the bytes of
  both ONNX graphs (``embedder_size_bytes``), all from
  :func:`optiserve.cache.embedder_fidelity.measure_embedder_quantization` (stderr).
* Process settings: this process and the server apply the app's
  (:func:`optiserve.process_settings.apply_process_settings`); ``--faiss-threads`` sets the
  OpenMP team size of the cache's FAISS calls (``CacheConfig.faiss_threads``).
* Also on stderr: the same semantic hits looked up in process through the facade
  (``lookup_sync``, no gRPC), the like-for-like figure beside GPTCache's in-process
  ``get()`` (``semantic_hit_in_process_p50_ms``, ``speedup_in_process_vs_gptcache``).

Prints one JSON line last with the keys of issue 4.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import index_1m
from optiserve.cache import CacheConfig, ResponseCache
from optiserve.domain.types import (
    CacheMode,
    CachePolicy,
    ChatMessage,
    FinishReason,
    GenerateRequest,
    SamplingParams,
)
from optiserve.tools.train_guard import load_pairs

ROOT = Path(__file__).resolve().parent
DATA = ROOT.parent.parent / "shared" / "data" / "paraphrase"
MODEL = "bench-model"
N_ENTRIES = 10_000
N_QUERIES = 300
#: The bench model's default max_new_tokens (part of the cache partition).
SERVER_MAX_NEW_TOKENS = 16


def request(question: str, mode: CacheMode = CacheMode.DEFAULT) -> GenerateRequest:
    """The domain request the benchmark stores and asks."""
    return GenerateRequest(
        request_id="b",
        messages=(ChatMessage("user", question),),
        model=MODEL,
        # What the service stores and looks up after the model resolves the sampling.
        sampling=SamplingParams(max_new_tokens=SERVER_MAX_NEW_TOKENS, min_new_tokens=0),
        cache=CachePolicy(mode=mode),
    )


def percentiles(times: list[float]) -> tuple[float, float]:
    """(p50, p99) in milliseconds."""
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def time_grpc(
    target: str, questions: list[str], mode: int, expect: str, warm_up: int = 30
) -> list[float]:
    """Milliseconds per unary Generate call; checks each answer is what ``expect`` says."""
    import grpc

    from optiserve_client.v1 import optiserve_pb2 as pb
    from optiserve_client.v1 import optiserve_pb2_grpc as pb_grpc

    times: list[float] = []
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.OptiServeStub(channel)

        def call(q: str) -> str:
            msg = pb.GenerateRequest(
                messages=[pb.ChatMessage(role="user", content=q)],
                model=MODEL,
                cache=pb.CachePolicy(mode=mode),  # type: ignore[arg-type]
            )
            try:
                reply = stub.Generate(msg, timeout=10)
            except grpc.RpcError as exc:
                return str(exc.code().name)  # NOT_FOUND for an only-if-cached miss
            return (
                "exact"
                if reply.summary.trace.cache[-1].layer == pb.CACHE_LAYER_EXACT
                else ("semantic")
            )

        for q in questions[:warm_up]:
            call(q)
        for q in questions:
            started = time.perf_counter()
            got = call(q)
            times.append((time.perf_counter() - started) * 1000)
            if got != expect:
                raise AssertionError(f"{q!r}: expected {expect}, got {got}")
    return times


def pick_workload(n: int) -> list[str]:
    """``n`` distinct qqp questions: every pair's ``a``, then non-duplicates' ``b``."""
    qqp = load_pairs(DATA / "qqp_dev.jsonl")
    stored: list[str] = []
    seen: set[str] = set()
    for pair in qqp:
        for q in (pair["a"], pair["b"] if not pair["duplicate"] else None):
            if q and q not in seen and len(stored) < n:
                seen.add(q)
                stored.append(q)
    return stored


def populate(cache: ResponseCache, stored: list[str]) -> float:
    """Store every question through the facade; seconds taken."""
    started = time.perf_counter()
    for i, q in enumerate(stored):
        cache.store_sync(request(q), MODEL, f"answer {i}", 20, 0.0004, FinishReason.EOS)
    return time.perf_counter() - started


def semantic_queries(cache: ResponseCache, stored: set[str]) -> list[str]:
    """Paraphrases the cache serves from a different stored question (semantic hits)."""
    out: list[str] = []
    for pair in load_pairs(DATA / "qqp_dev.jsonl"):
        if not pair["duplicate"] or pair["a"] not in stored or pair["b"] in stored:
            continue
        result = cache.lookup_sync(request(pair["b"]), MODEL)
        if result.entry is not None and result.entry.layer.value == "semantic":
            out.append(pair["b"])
        if len(out) == N_QUERIES:
            break
    return out


def miss_queries(cache: ResponseCache, stored: set[str], taken: set[str]) -> list[str]:
    """Quora questions not stored that the cache does not answer (similar ones may exist)."""
    out: list[str] = []
    for pair in load_pairs(DATA / "qqp_dev.jsonl"):
        q = pair["b"]
        if q in stored or q in taken:
            continue
        if cache.lookup_sync(request(q), MODEL).entry is None:
            out.append(q)
        if len(out) == N_QUERIES:
            break
    return out


def gptcache_setup(
    stored: list[str], vectors: np.ndarray[Any, Any], model_path: str
) -> Callable[[str], Any]:
    """GPTCache 0.1.44 holding ``stored`` (with ``vectors``); returns its ``get(question)``."""

    def load(module: str) -> Any:
        return importlib.import_module(module)  # gptcache ships no type information

    gptcache = load("gptcache")
    get = load("gptcache.adapter.api").get
    first = load("gptcache.processor.post").first
    get_prompt = load("gptcache.processor.pre").get_prompt
    distance = load("gptcache.similarity_evaluation.distance")
    manager_factory = load("gptcache.manager").manager_factory
    sbert_cls = load("gptcache.embedding").SBERT

    folder = tempfile.mkdtemp(prefix="gptcache-")
    sbert = sbert_cls(model_path)
    manager = manager_factory(
        "sqlite,faiss",
        data_dir=folder,
        vector_params={"dimension": 384},
        max_size=len(stored) + 10,
        # With "sqlite,faiss" GPTCache 0.1.44 ignores max_size: its LRU bound is
        # eviction_params["max_size"] (default 1,000), which would silently evict 9 of every
        # 10 imported entries and leave it a 1k-entry cache.
        eviction_params={"max_size": len(stored) + 10},
    )
    cache = gptcache.Cache()
    cache.init(
        pre_embedding_func=get_prompt,
        embedding_func=sbert.to_embeddings,
        data_manager=manager,
        similarity_evaluation=distance.SearchDistanceEvaluation(),
        post_process_messages_func=first,
        config=gptcache.Config(similarity_threshold=0.8),
    )
    manager.import_data(
        questions=list(stored),
        answers=[f"answer {i}" for i in range(len(stored))],
        embedding_datas=[v.astype(np.float32) for v in vectors],
        session_ids=[None] * len(stored),
    )
    held = manager.s.count()
    if held != len(stored):
        raise RuntimeError(f"GPTCache holds {held} of the {len(stored)} imported entries")
    return lambda question: get(question, cache_obj=cache)


def time_gptcache(get: Callable[[str], Any], queries: list[str], threads: int) -> list[float]:
    """Milliseconds per GPTCache ``get()`` with torch at ``threads`` threads (hits only)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for q in queries[:10]:
            get(q)
        times: list[float] = []
        for q in queries:
            started = time.perf_counter()
            answer = get(q)
            elapsed = (time.perf_counter() - started) * 1000
            if answer is not None:
                times.append(elapsed)
        return times
    finally:
        torch.set_num_threads(before)


def embedder_figures(cache_dir: Path, texts: list[str], rounds: int) -> dict[str, Any]:
    """p50 ms of one ``embed()`` per backend (median of ``rounds`` interleaved rounds) and
    the cosine of the cache's int8 embeddings of ``texts`` to the fp32 ONNX embedder's,
    measured by :func:`~optiserve.cache.embedder_fidelity.measure_embedder_quantization`
    (the torch backend timed the same way beside it)."""
    from optiserve.cache.embedder import Embedder
    from optiserve.cache.embedder_fidelity import embed_p50_ms, measure_embedder_quantization

    fidelity = measure_embedder_quantization(onnx_dir=cache_dir, texts=texts, rounds=rounds)
    torch_p50 = embed_p50_ms({"torch": Embedder(backend="torch")}, texts, rounds)["torch"]
    p50s = {"onnx-int8": fidelity.p50_ms_int8, "onnx": fidelity.p50_ms_fp32, "torch": torch_p50}
    return {
        "embedder_p50_ms": {name: round(v, 3) for name, v in p50s.items()},
        "embedder_cosine_vs_fp32": {
            "mean": round(fidelity.mean_cosine, 5),
            "min": round(fidelity.min_cosine, 4),
        },
        "embedder_size_bytes": {
            "onnx-int8": fidelity.size_bytes_int8,
            "onnx": fidelity.size_bytes_fp32,
        },
    }


def serve(data_dir: Path, entries: int, faiss_threads: int) -> None:
    """Server process: the real optiserve server (``OptiserveApp``: servicer, pipeline with
    the response cache, a tiny local model) reopening the populated cache from ``data_dir``.
    Prints its target and a JSON line, serves until stdin closes."""
    from optiserve.app import ServerThread
    from optiserve.config import Config, LoggingConfig, ModelConfig, ServerConfig
    from optiserve.tools.tinymodels import TinySpec, build_tiny_model

    model_dir = build_tiny_model(data_dir / "tiny-model", TinySpec(hidden_size=64, layers=2))
    config = Config(
        server=ServerConfig(port=0),
        logging=LoggingConfig(level="WARNING", format="text"),
        cache=CacheConfig(max_entries=entries * 2, faiss_threads=faiss_threads),
        models=(
            ModelConfig(
                name=MODEL, source=str(model_dir), default_max_new_tokens=SERVER_MAX_NEW_TOKENS
            ),
        ),
        data_dir=str(data_dir),
    )
    started = time.perf_counter()
    server = ServerThread(config)
    server.start()
    cache = server.app.cache
    assert cache is not None
    reopened = {
        "entries": cache.stats().entries,
        "start_s": round(time.perf_counter() - started, 2),
    }
    print(server.target, flush=True)
    print(json.dumps(reopened), flush=True)
    sys.stdin.read()
    server.stop()


def time_lookups(cache: ResponseCache, questions: list[str]) -> list[float]:
    """Milliseconds per blocking facade lookup (``lookup_sync``) of each question."""
    times: list[float] = []
    for q in questions:
        started = time.perf_counter()
        cache.lookup_sync(request(q), MODEL)
        times.append((time.perf_counter() - started) * 1000)
    return times


def median(values: list[float]) -> float:
    """Median of ``values`` (NaN when empty)."""
    return float(np.median(values)) if values else float("nan")


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the JSON line."""
    parser = argparse.ArgumentParser(description="cache latency")
    parser.add_argument("--no-gptcache", action="store_true")
    parser.add_argument("--entries", type=int, default=N_ENTRIES)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per side")
    parser.add_argument("--skip-1m", action="store_true", help="development only")
    parser.add_argument(
        "--faiss-threads",
        type=int,
        default=CacheConfig().faiss_threads,
        help="OpenMP threads per FAISS call on the cache's threads (CacheConfig.faiss_threads)",
    )
    parser.add_argument("--serve", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(Path(args.serve), args.entries, args.faiss_threads)
        return
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from optiserve.config import Config
    from optiserve.process_settings import apply_process_settings
    from optiserve_client.v1 import optiserve_pb2 as pb

    report: dict[str, Any] = {"load_average": [round(x, 2) for x in os.getloadavg()]}
    rounds = max(1, args.rounds)
    # Per round: (p50, p99) of each gRPC kind; GPTCache p50 per torch thread count.
    ours: dict[str, list[tuple[float, float]]] = {"exact": [], "semantic": [], "miss": []}
    gpt_threads = sorted({torch.get_num_threads(), 1}, reverse=True)
    gpt: dict[int, list[float]] = {t: [] for t in gpt_threads}
    config = CacheConfig(max_entries=args.entries * 2, faiss_threads=args.faiss_threads)
    # As the server does at start (GPTCache's timings set torch's threads themselves).
    apply_process_settings(Config(cache=config))
    report["faiss_threads"] = config.faiss_threads

    with tempfile.TemporaryDirectory(prefix="optiserve-cache-bench-") as tmp:
        cache = ResponseCache.open(config, Path(tmp))
        assert cache.embedder is not None
        cache.embedder.embed("warm up")
        stored = pick_workload(args.entries)
        report["populate_s"] = round(populate(cache, stored), 1)
        report["entries"] = cache.stats().entries
        semantic = semantic_queries(cache, set(stored))
        exact = stored[:: max(1, len(stored) // N_QUERIES)][:N_QUERIES]
        misses = miss_queries(cache, set(stored), set(semantic))
        # The same semantic hits through the facade in this process (no gRPC): what the
        # lookup itself costs, beside GPTCache's in-process get().
        in_process = median([percentiles(time_lookups(cache, semantic))[0] for _ in range(rounds)])
        report["semantic_hit_in_process_p50_ms"] = round(in_process, 3)
        vectors = np.stack([cache.embedder.embed(q) for q in stored])
        model_path = str(cache.embedder.path)
        report["embedder_backend"] = cache.embedder.backend
        report["semantic_queries"] = len(semantic)
        cache.close()
        report.update(
            embedder_figures(Path(tmp) / "onnx", semantic + stored[: len(semantic)], rounds)
        )
        gpt_get: Callable[[str], Any] | None = None
        gpt_hits: list[str] = []
        if not args.no_gptcache:
            gpt_get = gptcache_setup(stored, vectors, model_path)
            torch.set_num_threads(1)  # finding its hits (untimed; warms it up)
            gpt_hits = [q for q in semantic if gpt_get(q) is not None]
            torch.set_num_threads(gpt_threads[0])
            report["gptcache_hits"] = f"{len(gpt_hits)}/{len(semantic)}"
        # The server is its own process (clients are), reopening the cache from SQLite.
        server = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--serve",
                tmp,
                "--entries",
                str(args.entries),
                "--faiss-threads",
                str(args.faiss_threads),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            target = server.stdout.readline().strip()
            report["server_reopen"] = json.loads(server.stdout.readline())
            for r in range(rounds):
                warm = 30 if r == 0 else 0
                kinds = (
                    ("exact", exact, pb.CACHE_MODE_DEFAULT, "exact"),
                    ("semantic", semantic, pb.CACHE_MODE_DEFAULT, "semantic"),
                    ("miss", misses, pb.CACHE_MODE_ONLY_IF_CACHED, "NOT_FOUND"),
                )
                for kind, questions, mode, expect in kinds:
                    ours[kind].append(percentiles(time_grpc(target, questions, mode, expect, warm)))
                if gpt_get is not None and gpt_hits:
                    for threads in gpt_threads:
                        gpt[threads].append(
                            percentiles(time_gptcache(gpt_get, gpt_hits, threads))[0]
                        )
        finally:
            server.terminate()
            server.wait(timeout=30)

    index: dict[str, Any] = {
        k: float("nan")
        for k in ("index_lookup_p50_ms_1m", "index_lookup_p99_ms_1m", "index_recall_at_1_1m")
    }
    if not args.skip_1m:
        index = index_1m.measure(config=config)
        # The cache's search and raw FAISS on the same graph, side by side.
        report["index_1m"] = {
            k: round(v, 4) if isinstance(v, float) else v for k, v in index.items()
        }
    report["index_lookup_p50_ms_1m"] = round(index["index_lookup_p50_ms_1m"], 3)
    report["index_huge_page_bytes_1m"] = index.get("index_huge_page_bytes_1m", 0.0)

    exact_p50 = median([p50 for p50, _ in ours["exact"]])
    sem_p50 = median([p50 for p50, _ in ours["semantic"]])
    sem_p99 = median([p99 for _, p99 in ours["semantic"]])
    miss_p50 = median([p50 for p50, _ in ours["miss"]])
    report["rounds_semantic_p50_ms"] = [round(p50, 3) for p50, _ in ours["semantic"]]
    gpt_p50 = float("nan")
    if gpt_hits:
        by_threads = {t: median(v) for t, v in gpt.items()}
        report["gptcache_p50_ms_by_torch_threads"] = {t: round(v, 3) for t, v in by_threads.items()}
        report["rounds_gptcache_p50_ms"] = {t: [round(x, 3) for x in v] for t, v in gpt.items()}
        gpt_p50 = min(by_threads.values())
        report["speedup_in_process_vs_gptcache"] = round(gpt_p50 / in_process, 2)
    report["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(report), file=sys.stderr)
    print(
        json.dumps(
            {
                "exact_hit_p50_ms": round(exact_p50, 3),
                "semantic_hit_p50_ms": round(sem_p50, 3),
                "semantic_hit_p99_ms": round(sem_p99, 3),
                "miss_lookup_p50_ms": round(miss_p50, 3),
                "index_lookup_p99_ms_1m": round(index["index_lookup_p99_ms_1m"], 3),
                "index_recall_at_1_1m": round(index["index_recall_at_1_1m"], 4),
                "gptcache_hit_p50_ms": round(gpt_p50, 3),
                "speedup_vs_gptcache": round(gpt_p50 / sem_p50, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
