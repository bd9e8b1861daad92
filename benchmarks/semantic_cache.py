"""Semantic cache quality: precision and recall of served answers, guard vs raw cosine.

For each data set the cache holds every pair's ``a`` and is asked every pair's ``b``
through the same code the server runs (FAISS partition index, top candidates,
:func:`optiserve.cache.semantic.match` with the shipped guard). Headline numbers put each
pair in its own partition (as if each pair came from its own conversation or tenant): the
question is "is b answered by a's answer", which is what the labels say and what the raw
cosine figures in the data README measure. A second run puts all ``a`` in one shared
partition (``b`` may then match another pair's question, which the labels cannot judge; such
a hit counts as false) and is printed on stderr. A hit is correct when the pair is a
duplicate and the entry served is that pair's ``a`` (or a textually identical question).

* qqp: the evaluation half of ``qqp_dev.jsonl`` (the guard was trained on the other half,
  same split as ``optiserve.tools.train_guard``);
* paraphrase: ``chatgpt_paraphrases.jsonl`` (all duplicates: recall).

Metrics: precision = correct hits / hits; recall = correct hits / duplicate pairs;
false-hit rate = false hits / lookups; the raw-cosine baseline (no guard, top-1, cosine
threshold swept) is measured in the same run and its precision read off at the recall the
guarded cache reaches. A threshold sweep of both is drawn to ``out/semantic_cache_pr.png``.

Prints one JSON line last with the keys of issue 4.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from optiserve.cache.config import CacheConfig
from optiserve.cache.embedder import Embedder
from optiserve.cache.entry import CacheEntry
from optiserve.cache.exact import EntryTable
from optiserve.cache.guard import Guard
from optiserve.cache.index import IndexParams, VectorIndex, set_openmp_threads
from optiserve.cache.semantic import CANDIDATES, match
from optiserve.domain.types import FinishReason
from optiserve.tools.train_guard import load_pairs, split_halves

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "out"
DATA = ROOT.parent.parent / "shared" / "data" / "paraphrase"

FloatArray = npt.NDArray[np.float32]
#: Guard thresholds also measured (stderr) to show the precision/recall trade-off.
OPERATING_POINTS = (0.80, 0.70, 0.67, 0.63)


@dataclass
class Outcome:
    """Counts of one run over a data set."""

    lookups: int
    duplicates: int
    hits: int
    correct: int

    @property
    def precision(self) -> float:
        """Correct hits / hits (1.0 with no hit)."""
        return self.correct / self.hits if self.hits else 1.0

    @property
    def recall(self) -> float:
        """Correct hits / duplicate pairs."""
        return self.correct / self.duplicates if self.duplicates else 0.0

    @property
    def false_hit_rate(self) -> float:
        """False hits / lookups."""
        return (self.hits - self.correct) / self.lookups if self.lookups else 0.0


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def embed_cached(embedder: Embedder, texts: list[str], tag: str) -> FloatArray:
    """Embeddings of ``texts``; reused from ``out/`` when the texts and model are the same."""
    digest = hashlib.sha256(
        ("\x00".join(texts) + str(embedder.path) + embedder.backend).encode()
    ).hexdigest()[:16]
    file = OUT / f"emb-{tag}-{digest}.npy"
    if file.exists():
        loaded: FloatArray = np.load(file)
        return loaded
    vectors = embedder.embed_many(texts, batch_size=32)
    OUT.mkdir(parents=True, exist_ok=True)
    np.save(file, vectors)
    return vectors


def evaluate(
    pairs: list[dict[str, object]],
    a_vec: FloatArray,
    b_vec: FloatArray,
    guard: Guard | None,
    threshold: float,
    *,
    shared: bool = False,
) -> Outcome:
    """Insert every ``a``, ask every ``b`` through :func:`match`; count right and wrong hits."""
    table = EntryTable(max_entries=len(pairs) + 1, max_bytes=1 << 40)
    index = VectorIndex(IndexParams(dim=a_vec.shape[1], use_gpu=False))
    for i, pair in enumerate(pairs):
        entry = CacheEntry(
            entry_id=i + 1,
            partition="p" if shared else f"p{i}",
            exact_key=f"k{i}",
            query=str(pair["a"]),
            text=str(pair["a"]),
            model="m",
            completion_tokens=1,
            cost_usd=0.0,
            finish_reason=FinishReason.EOS,
            created_at=0.0,
            vector=a_vec[i],
        )
        table.put(entry)
        index.add(entry.partition, entry.entry_id, a_vec[i])
    hits = correct = 0
    for i, pair in enumerate(pairs):
        found = match(
            index,
            table,
            guard,
            partition="p" if shared else f"p{i}",
            query=str(pair["b"]),
            vector=b_vec[i],
            threshold=threshold,
            now=1.0,
        )
        if found.entry is None:
            continue
        hits += 1
        if pair["duplicate"] and _norm(found.entry.query) == _norm(str(pair["a"])):
            correct += 1
    duplicates = sum(1 for p in pairs if p["duplicate"])
    return Outcome(lookups=len(pairs), duplicates=duplicates, hits=hits, correct=correct)


def candidates(
    pairs: list[dict[str, object]], a_vec: FloatArray, b_vec: FloatArray, guard: Guard
) -> tuple[list[list[tuple[float, float, bool, bool]]], int]:
    """Per query: (cosine, guard probability or -1 when vetoed, correct, top1) of candidates."""
    index = VectorIndex(IndexParams(dim=a_vec.shape[1], use_gpu=False))
    for i in range(len(pairs)):
        index.add(f"p{i}", i, a_vec[i])
    out: list[list[tuple[float, float, bool, bool]]] = []
    for i, pair in enumerate(pairs):
        rows = []
        for rank, (j, sim) in enumerate(index.search(f"p{i}", b_vec[i], CANDIDATES)):
            verdict = guard.check(str(pairs[j]["a"]), str(pair["b"]), sim)
            vetoed = "mismatch" in verdict.reason
            ok = bool(pair["duplicate"]) and _norm(str(pairs[j]["a"])) == _norm(str(pair["a"]))
            rows.append((sim, -1.0 if vetoed else verdict.probability, ok, rank == 0))
        out.append(rows)
    return out, sum(1 for p in pairs if p["duplicate"])


def sweep(
    cands: list[list[tuple[float, float, bool, bool]]],
    duplicates: int,
    cosine: float | None,
    probs: npt.NDArray[np.float64] | None,
    cos_grid: npt.NDArray[np.float64] | None,
) -> list[tuple[float, float, float]]:
    """(threshold, precision, recall) along a guard-probability or raw-cosine sweep."""
    points = []
    grid = probs if probs is not None else cos_grid
    assert grid is not None
    for t in grid:
        hits = correct = 0
        for rows in cands:
            for sim, p, ok, top1 in rows:
                if probs is not None:
                    assert cosine is not None
                    if sim < cosine:
                        break
                    if p >= t:
                        hits += 1
                        correct += ok
                        break
                else:
                    if top1 and sim >= t:
                        hits += 1
                        correct += ok
                    break
        points.append((float(t), correct / hits if hits else 1.0, correct / duplicates))
    return points


def raw_precision_at_recall(points: list[tuple[float, float, float]], recall: float) -> float:
    """Raw-cosine precision at the highest threshold that reaches ``recall``."""
    reach = [p for _, p, r in points if r >= recall]
    return reach[-1] if reach else float("nan")


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the JSON line."""
    parser = argparse.ArgumentParser(description="semantic cache precision/recall")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    config = CacheConfig()
    # Searches run here as on the cache's worker threads (their OpenMP team size).
    set_openmp_threads(config.faiss_threads)
    embedder = Embedder(threads=2, onnx_dir=OUT / "onnx")
    guard = Guard.load(config.guard_weights, config.guard_threshold)
    qqp = load_pairs(args.data / "qqp_dev.jsonl")
    _, eval_idx = split_halves(len(qqp))
    qqp_eval: list[dict[str, object]] = [qqp[i] for i in eval_idx]
    para: list[dict[str, object]] = list(load_pairs(args.data / "chatgpt_paraphrases.jsonl"))
    vecs = {}
    for name, pairs in (("qqp-eval", qqp_eval), ("paraphrase", para)):
        vecs[name] = (
            embed_cached(embedder, [str(p["a"]) for p in pairs], name + "-a"),
            embed_cached(embedder, [str(p["b"]) for p in pairs], name + "-b"),
        )
    threshold = config.semantic_threshold
    q = evaluate(qqp_eval, *vecs["qqp-eval"], guard, threshold)
    p = evaluate(para, *vecs["paraphrase"], guard, threshold)
    raw_default = evaluate(qqp_eval, *vecs["qqp-eval"], None, threshold)
    q_shared = evaluate(qqp_eval, *vecs["qqp-eval"], guard, threshold, shared=True)
    raw_shared = evaluate(qqp_eval, *vecs["qqp-eval"], None, threshold, shared=True)

    cands, dups = candidates(qqp_eval, *vecs["qqp-eval"], guard)
    guard_points = sweep(cands, dups, threshold, np.linspace(0.0, 0.99, 45), None)
    raw_points = sweep(cands, dups, None, None, np.linspace(0.70, 0.995, 60))
    raw_at_same = raw_precision_at_recall(raw_points, q.recall)
    raw_threshold = max((t for t, _, r in raw_points if r >= q.recall), default=threshold)
    raw_para = evaluate(para, *vecs["paraphrase"], None, raw_threshold)
    operating_points = {}
    for guard_threshold in OPERATING_POINTS:
        alt = Guard.load(config.guard_weights, guard_threshold)
        alt_q = evaluate(qqp_eval, *vecs["qqp-eval"], alt, threshold)
        alt_p = evaluate(para, *vecs["paraphrase"], alt, threshold)
        operating_points[str(guard_threshold)] = {
            "qqp_precision": round(alt_q.precision, 4),
            "qqp_recall": round(alt_q.recall, 4),
            "paraphrase_recall": round(alt_p.recall, 4),
        }
    detail = {
        "guard_operating_points": operating_points,
        "qqp_eval_pairs": len(qqp_eval),
        "qqp_hits": q.hits,
        "qqp_correct": q.correct,
        "raw_cosine_at_default_threshold": {
            "precision": round(raw_default.precision, 4),
            "recall": round(raw_default.recall, 4),
            "false_hit_rate": round(raw_default.false_hit_rate, 4),
        },
        "shared_partition": {
            "guard": {
                "precision": round(q_shared.precision, 4),
                "recall": round(q_shared.recall, 4),
            },
            "raw_cosine": {
                "precision": round(raw_shared.precision, 4),
                "recall": round(raw_shared.recall, 4),
            },
        },
        "raw_cosine_at_same_qqp_recall": {
            "threshold": round(raw_threshold, 4),
            "qqp_precision": round(raw_at_same, 4),
            "paraphrase_recall": round(raw_para.recall, 4),
        },
        "guard_threshold": guard.threshold,
        "paraphrase_pairs": len(para),
        "embedder": embedder.backend,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(detail), file=sys.stderr)
    if not args.no_plot:
        plot(guard_points, raw_points, (q.recall, q.precision), OUT / "semantic_cache_pr.png")
    print(
        json.dumps(
            {
                "qqp_precision": round(q.precision, 4),
                "qqp_recall": round(q.recall, 4),
                "qqp_false_hit_rate": round(q.false_hit_rate, 4),
                "paraphrase_recall": round(p.recall, 4),
                "raw_cosine_precision_at_same_recall": round(raw_at_same, 4),
                "threshold": threshold,
            }
        )
    )


def plot(
    guard_points: list[tuple[float, float, float]],
    raw_points: list[tuple[float, float, float]],
    default: tuple[float, float],
    file: Path,
) -> None:
    """Precision/recall curves of the guarded cache and raw cosine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    ax.plot(
        [r for _, _, r in raw_points], [p for _, p, _ in raw_points], label="raw cosine (top-1)"
    )
    ax.plot(
        [r for _, _, r in guard_points],
        [p for _, p, _ in guard_points],
        label="cosine gate + guard (guard threshold swept)",
    )
    ax.scatter([default[0]], [default[1]], marker="*", s=150, color="k", zorder=5, label="default")
    ax.set_xlabel("recall (duplicates served the right answer)")
    ax.set_ylabel("precision (hits that were right)")
    ax.set_title("Semantic cache on the qqp_dev evaluation half")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    file.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(file, dpi=120, bbox_inches="tight")
    print(json.dumps({"plot": str(file)}), file=sys.stderr)


if __name__ == "__main__":
    main()
