"""Semantic cache quality: precision and recall of served answers, guard vs raw cosine.

Every lookup goes through the code the server runs per lookup: the FAISS partition index,
the top candidates (``CANDIDATES``) at or above the cosine threshold
(``CacheConfig.semantic_threshold``), and :func:`optiserve.cache.semantic.match` with the
real false-hit :class:`~optiserve.cache.guard.Guard` (hard vetoes, then the logistic model's
probability against the guard threshold), loaded as the server loads it:
``Guard.load(CacheConfig.guard_weights, CacheConfig.guard_threshold)`` (None = the threshold
calibrated in the weights file; ``guard_threshold`` in the JSON line).

Data (``../shared/data/paraphrase``; ``tests/cache/data``):

* qqp: the evaluation half of ``qqp_dev.jsonl`` (``split_halves``' second half, the split of
  :mod:`optiserve.tools.train_guard`; the guard's training and threshold calibration read
  only the other half), pairs ``a``, ``b`` labelled duplicate or not;
* paraphrase: ``chatgpt_paraphrases.jsonl`` (all duplicates: recall only);
* ``hard_negatives.jsonl`` (pairs that must never share an answer) and ``must_hits.jsonl``
  (rewordings that should hit).

Evaluations:

* Per pair (headline ``qqp_*``, ``paraphrase_recall``): each pair in its own partition (as if
  from its own conversation or tenant); the cache holds ``a`` and is asked ``b``, which is
  the question the labels answer. A hit is correct when the pair is a duplicate.
  precision = correct hits / hits; recall = correct hits / duplicate pairs.
* Shared partition (``shared_*``): every ``a`` in one partition, every ``b`` asked; a hit is
  correct only when the pair is a duplicate and the entry served is that pair's ``a`` (or a
  textually identical question); any other hit counts as false (the labels cannot judge it).
* Guard operating points: guard thresholds ``OPERATING_POINTS`` (0.80, the default
  ``guard.threshold`` (calibrated: 0.735), 0.70, 0.67, 0.63), each a ``Guard.load`` at that
  threshold on the per-pair qqp and paraphrase runs through :func:`match` (qqp precision,
  qqp recall, paraphrase recall: the README table). Cosine gate and vetoes are the same at
  every point.
* Raw-cosine baseline (``raw_cosine_precision_at_same_recall``), measured in the same run:
  no guard, top-1 cosine, threshold lowered from the top until its per-pair qqp recall
  reaches the default guard's; its precision there (exact over the pairs' cosines, not a
  grid), and its paraphrase recall at that threshold (stderr).
* Trace (``trace_*``): every distinct question (verbatim text; a verbatim repeat would be an
  exact-layer hit) of the qqp evaluation half, in a fixed shuffled order (``TRACE_SEED``),
  through ONE partition, the way the cache runs: each question first looks up (``match()`` on
  the entries stored so far); a hit is counted, anything else (MISS or REJECTED) is stored.
  Duplicate classes: union-find over the duplicate-labelled pairs of the evaluation half,
  questions identified by normalised text (lower case, whitespace collapsed), so identical
  normalised text is one class. A hit is *right* when the query and the served entry's
  question are in one class; *labelled wrong* when not, and some pair of the evaluation
  half labels exactly those two questions (normalised) non-duplicate; *unlabelled*
  otherwise. ``trace_served_precision`` = right / hits (unlabelled counts as wrong: a lower
  bound); ``trace_precision_labelled`` = right / (right + labelled wrong). A lookup *could
  hit* when some question of its class is stored at that moment (it was looked up earlier
  and missed); ``trace_hit_rate`` = hits among those lookups / those lookups (a right hit
  is always one of them; a wrong hit on such a lookup counts as a hit, a hit on a lookup
  that could not hit does not enter the rate); ``trace_right_hit_rate`` = right hits / those
  lookups; ``trace_hit_rate_all`` = hits / all lookups (both on stderr). The stderr detail
  shows five hits and five REJECTED lookups (first in trace order) with cosine, guard
  probability and guard reason (for a rejection: of the best candidate refused).
* ``hard_negative_false_hits``: hard-negative pairs, each in its own partition (store ``a``,
  ask ``b``): hits (every one is false); ``must_hit_recall``: the same on the must-hit pairs,
  hits / pairs. Both with the outcome of each lookup (miss below the cosine gate, veto,
  low guard probability, hit) on stderr.
* ``guard_ms_p50``: median wall time of one ``guard.check(a, b, cosine)`` on real pairs (the
  first ``TIMING_PAIRS`` of the evaluation half, their own cosine), in a warm process (after
  ``TIMING_WARMUP`` checks of other pairs) with the cached question ``a`` already in the
  guard's parse memo and the new question ``b`` parsed by the call: the first check of a
  lookup in a running server (``guard_ms.new_query`` on stderr). The stderr detail adds the
  same with both questions parsed (``guard_ms.cold``) and with both memoised
  (``guard_ms.memo``: features and logistic model only), p50 and p90 each.
  One Python thread; on a shared machine this includes whatever else runs on the cores.

Every precision comes with its 95% Wilson score interval (:func:`wilson`; ``*_ci95`` keys).
The guard threshold swept (cosine gate and vetoes fixed; per pair each lookup has one
candidate, so its guard probability decides it at any threshold) and raw top-1 cosine swept
are drawn to ``out/semantic_cache_pr.png`` unless ``--no-plot``. ``--quick`` takes the first
``QUICK_PAIRS`` pairs of the evaluation half and of the paraphrase set (a smoke run).

Prints a JSON detail object on stderr and one JSON line last on stdout (issue 10's keys).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from optiserve.cache.config import CacheConfig
from optiserve.cache.embedder import Embedder
from optiserve.cache.entry import CacheEntry
from optiserve.cache.exact import EntryTable
from optiserve.cache.guard import Guard
from optiserve.cache.index import IndexParams, VectorIndex, set_openmp_threads
from optiserve.cache.semantic import SemanticMatch, match
from optiserve.domain.types import CacheOutcome, FinishReason
from optiserve.tools.train_guard import load_pairs, split_halves

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "out"
DATA = ROOT.parent.parent / "shared" / "data" / "paraphrase"
TEST_DATA = ROOT.parent / "tests" / "cache" / "data"

FloatArray = npt.NDArray[np.float32]
FloatArray64 = npt.NDArray[np.floating[Any]]
Pair = dict[str, Any]

#: Pairs of the evaluation half (and of the paraphrase set) ``--quick`` keeps.
QUICK_PAIRS = 600
#: Seed of the trace's question order.
TRACE_SEED = 10
#: Guard thresholds measured on the per-pair runs; None = the default (``guard.threshold``).
OPERATING_POINTS: tuple[float | None, ...] = (0.80, None, 0.70, 0.67, 0.63)
#: Pairs timed for ``guard_ms_p50``, and warm-up checks (of other pairs) before them.
TIMING_PAIRS = 200
TIMING_WARMUP = 50
#: Example hits and rejections of the trace shown on stderr.
EXAMPLES = 5
#: z of a two-sided 95% interval.
Z95 = 1.959963984540054


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of a proportion ``successes / n`` ((0, 1) when n is 0)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _ci(successes: int, n: int) -> list[float]:
    low, high = wilson(successes, n)
    return [round(low, 4), round(high, 4)]


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

    @property
    def precision_ci95(self) -> list[float]:
        """Wilson 95% interval of the precision."""
        return _ci(self.correct, self.hits)

    def summary(self) -> dict[str, Any]:
        """Precision (with interval) and recall, rounded, for the detail object."""
        return {
            "precision": round(self.precision, 4),
            "precision_ci95": self.precision_ci95,
            "recall": round(self.recall, 4),
            "hits": self.hits,
            "correct": self.correct,
        }


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


def _entry(entry_id: int, partition: str, question: str, vector: FloatArray) -> CacheEntry:
    return CacheEntry(
        entry_id=entry_id,
        partition=partition,
        exact_key=f"k{entry_id}",
        query=question,
        text=question,
        model="m",
        completion_tokens=1,
        cost_usd=0.0,
        finish_reason=FinishReason.EOS,
        created_at=0.0,
        vector=vector,
    )


def lookups(
    stored: Sequence[str],
    stored_vec: FloatArray,
    asked: Sequence[str],
    asked_vec: FloatArray,
    guard: Guard | None,
    threshold: float,
    *,
    shared: bool = False,
) -> list[SemanticMatch]:
    """Store every ``stored[i]``, then ask every ``asked[i]`` through :func:`match`: in
    partition ``p{i}`` (its own pair only), or all in one partition when ``shared``."""
    table = EntryTable(max_entries=len(stored) + 1, max_bytes=1 << 40)
    index = VectorIndex(IndexParams(dim=stored_vec.shape[1], use_gpu=False))
    for i, question in enumerate(stored):
        entry = _entry(i + 1, "p" if shared else f"p{i}", question, stored_vec[i])
        table.put(entry)
        index.add(entry.partition, entry.entry_id, stored_vec[i])
    return [
        match(
            index,
            table,
            guard,
            partition="p" if shared else f"p{i}",
            query=question,
            vector=asked_vec[i],
            threshold=threshold,
            now=1.0,
        )
        for i, question in enumerate(asked)
    ]


def evaluate(
    pairs: list[Pair],
    a_vec: FloatArray,
    b_vec: FloatArray,
    guard: Guard | None,
    threshold: float,
    *,
    shared: bool = False,
) -> tuple[Outcome, list[SemanticMatch]]:
    """Insert every ``a``, ask every ``b`` through :func:`match`; count right and wrong hits.

    Returns the counts and each lookup's result (in pair order)."""
    found = lookups(
        [str(p["a"]) for p in pairs],
        a_vec,
        [str(p["b"]) for p in pairs],
        b_vec,
        guard,
        threshold,
        shared=shared,
    )
    hits = correct = 0
    for pair, result in zip(pairs, found, strict=True):
        if result.entry is None:
            continue
        hits += 1
        if pair["duplicate"] and _norm(result.entry.query) == _norm(str(pair["a"])):
            correct += 1
    duplicates = sum(1 for p in pairs if p["duplicate"])
    outcome = Outcome(lookups=len(pairs), duplicates=duplicates, hits=hits, correct=correct)
    return outcome, found


def _kind(result: SemanticMatch) -> str:
    """How a lookup ended: hit, veto, low_score (the guard's probability below its
    threshold) or miss (below the cosine gate). A REJECTED lookup is named by the guard's
    reason on its best candidate refused."""
    if result.entry is not None:
        return "hit"
    if result.lookup.outcome is CacheOutcome.REJECTED:
        return "veto" if "mismatch" in result.lookup.guard_verdict else "low_score"
    return "miss"


def guard_score(guard: Guard, cached: str, query: str, cosine: float) -> float:
    """The guard's probability for serving ``cached``'s answer to ``query``; -1 when a hard
    veto refuses the pair at any threshold."""
    x, vetoes = guard.analyse(cached, query, cosine)
    return -1.0 if vetoes else guard.probability_of(x)


def pair_scores(pairs: list[Pair], found: list[SemanticMatch], guard: Guard) -> FloatArray64:
    """Per pair, the guard score (:func:`guard_score`) of its lookup's only candidate (the
    pair's ``a``: each partition holds one entry); -1 below the cosine gate."""
    return np.array(
        [
            -1.0
            if r.lookup.outcome is CacheOutcome.MISS
            else guard_score(guard, str(p["a"]), str(p["b"]), r.lookup.similarity)
            for p, r in zip(pairs, found, strict=True)
        ],
        dtype=np.float64,
    )


def guard_sweep(
    scores: FloatArray64, labels: list[bool], thresholds: FloatArray64
) -> list[tuple[float, float, float]]:
    """(guard threshold, precision, recall) of the per-pair run, guard threshold swept
    (cosine gate and vetoes fixed): a lookup hits at threshold t when its score >= t."""
    ok = np.array(labels)
    dups = max(1, int(ok.sum()))
    points = []
    for t in thresholds:
        served = (scores >= 0) & (scores >= t)
        hits = int(served.sum())
        right = int((served & ok).sum())
        points.append((float(t), right / hits if hits else 1.0, right / dups))
    return points


def raw_cosines(found: list[SemanticMatch]) -> FloatArray64:
    """Per-pair top-1 cosine of each lookup (its partition holds only the pair's ``a``)."""
    return np.array([r.lookup.similarity for r in found], dtype=np.float64)


def raw_sweep(
    sims: FloatArray64, labels: list[bool], thresholds: FloatArray64
) -> list[tuple[float, float, float]]:
    """(threshold, precision, recall) of raw top-1 cosine, threshold swept."""
    ok = np.array(labels)
    dups = max(1, int(ok.sum()))
    points = []
    for t in thresholds:
        served = sims >= t
        hits = int(served.sum())
        right = int((served & ok).sum())
        points.append((float(t), right / hits if hits else 1.0, right / dups))
    return points


def raw_at_recall(
    sims: FloatArray64, labels: list[bool], correct_needed: int
) -> tuple[float, int, int]:
    """(threshold, hits, correct) of raw top-1 cosine at the highest threshold whose
    correct hits reach ``correct_needed`` (the guarded run's recall); nan threshold when
    no threshold does."""
    order = np.argsort(-sims, kind="stable")
    s = sims[order]
    right = np.cumsum(np.array(labels)[order])
    for k in range(len(s)):
        last_of_tie = k + 1 == len(s) or s[k + 1] < s[k]
        if last_of_tie and right[k] >= correct_needed:
            return float(s[k]), k + 1, int(right[k])
    return float("nan"), 0, 0


class Classes:
    """Duplicate classes: union-find over normalised question texts."""

    def __init__(self) -> None:
        self._parent: dict[str, str] = {}

    def find(self, text: str) -> str:
        """The class representative of ``text`` (normalised)."""
        node = _norm(text)
        root = self._parent.setdefault(node, node)
        while root != self._parent[root]:
            root = self._parent[root]
        while node != root:  # path compression
            self._parent[node], node = root, self._parent[node]
        return root

    def union(self, a: str, b: str) -> None:
        """Put ``a`` and ``b`` in one class."""
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self._parent[rb] = ra


@dataclass
class TraceResult:
    """Counts of the trace (see the module docstring for the definitions)."""

    lookups: int = 0
    hits: int = 0
    right: int = 0
    labelled_wrong: int = 0
    unlabelled: int = 0
    could_hit: int = 0
    hits_when_could_hit: int = 0
    rejected: int = 0
    #: REJECTED lookups whose best candidate a hard veto refused (the rest: low probability).
    rejected_veto: int = 0
    stored: int = 0
    #: Pairs labelled non-duplicate whose questions union-find put in one class.
    label_conflicts: int = 0

    @property
    def served_precision(self) -> float:
        """Right / hits (unlabelled counts as wrong)."""
        return self.right / self.hits if self.hits else 1.0

    @property
    def labelled_precision(self) -> float:
        """Right / (right + labelled wrong)."""
        judged = self.right + self.labelled_wrong
        return self.right / judged if judged else 1.0

    @property
    def hit_rate(self) -> float:
        """Hits among lookups that could hit / lookups that could hit."""
        return self.hits_when_could_hit / self.could_hit if self.could_hit else 0.0


def trace(
    pairs: list[Pair],
    a_vec: FloatArray,
    b_vec: FloatArray,
    guard: Guard,
    threshold: float,
) -> tuple[TraceResult, dict[str, list[dict[str, Any]]]]:
    """Run the evaluation half's distinct questions through one partition (module
    docstring); returns the counts and example hits and rejections."""
    classes = Classes()
    non_duplicate: set[frozenset[str]] = set()
    for p in pairs:
        if p["duplicate"]:
            classes.union(str(p["a"]), str(p["b"]))
    for p in pairs:
        if not p["duplicate"]:
            non_duplicate.add(frozenset((_norm(str(p["a"])), _norm(str(p["b"])))))
    result = TraceResult()
    result.label_conflicts = sum(
        1
        for p in pairs
        if not p["duplicate"] and classes.find(str(p["a"])) == classes.find(str(p["b"]))
    )
    texts: dict[str, FloatArray] = {}
    for i, p in enumerate(pairs):
        texts.setdefault(str(p["a"]), a_vec[i])
        texts.setdefault(str(p["b"]), b_vec[i])
    questions = list(texts)
    order = np.random.default_rng(TRACE_SEED).permutation(len(questions))
    table = EntryTable(max_entries=len(questions) + 1, max_bytes=1 << 40)
    index = VectorIndex(IndexParams(dim=a_vec.shape[1], use_gpu=False))
    stored_in_class: Counter[str] = Counter()
    examples: dict[str, list[dict[str, Any]]] = {"hits": [], "rejections": []}
    for n, i in enumerate(order.tolist()):
        question = questions[i]
        vector = texts[question]
        root = classes.find(question)
        could = stored_in_class[root] > 0
        found = match(
            index,
            table,
            guard,
            partition="t",
            query=question,
            vector=vector,
            threshold=threshold,
            now=1.0,
        )
        result.lookups += 1
        result.could_hit += could
        if found.entry is not None:
            served = found.entry.query
            result.hits += 1
            result.hits_when_could_hit += could
            if classes.find(served) == root:
                verdict = "right"
                result.right += 1
            elif frozenset((_norm(served), _norm(question))) in non_duplicate:
                verdict = "labelled wrong"
                result.labelled_wrong += 1
            else:
                verdict = "unlabelled"
                result.unlabelled += 1
            if len(examples["hits"]) < EXAMPLES:
                examples["hits"].append(_example(guard, question, served, found, verdict))
            continue
        if found.lookup.outcome is CacheOutcome.REJECTED:
            result.rejected += 1
            result.rejected_veto += _kind(found) == "veto"
            if len(examples["rejections"]) < EXAMPLES:
                best = table.peek(int(found.lookup.entry_id))
                cached = best.query if best is not None else "?"
                examples["rejections"].append(_example(guard, question, cached, found, None))
        entry = _entry(n + 1, "t", question, vector)
        table.put(entry)
        index.add("t", entry.entry_id, vector)
        stored_in_class[root] += 1
        result.stored += 1
    return result, examples


def _example(
    guard: Guard, query: str, cached: str, found: SemanticMatch, verdict: str | None
) -> dict[str, Any]:
    """A trace lookup for stderr: the served (or best refused) question, its cosine, and the
    guard's probability and reason on that pair (the check :func:`match` ran, run again:
    ``match`` keeps only the reason)."""
    check = guard.check(cached, query, found.lookup.similarity)
    out: dict[str, Any] = {
        "query": query,
        "cached": cached,
        "cosine": round(found.lookup.similarity, 4),
        "guard_probability": round(check.probability, 4),
        "guard": check.reason,
    }
    if verdict is not None:
        out["label"] = verdict
    return out


def run_pair_set(
    embedder: Embedder, name: str, guard: Guard, threshold: float
) -> tuple[list[Pair], list[SemanticMatch], list[SemanticMatch]]:
    """A ``tests/cache/data`` set through :func:`match` per pair (store a, ask b), with the
    guard and with raw cosine."""
    pairs: list[Pair] = load_pairs(TEST_DATA / f"{name}.jsonl")
    a_text = [str(p["a"]) for p in pairs]
    b_text = [str(p["b"]) for p in pairs]
    a_vec = embed_cached(embedder, a_text, name + "-a")
    b_vec = embed_cached(embedder, b_text, name + "-b")
    guarded = lookups(a_text, a_vec, b_text, b_vec, guard, threshold)
    raw = lookups(a_text, a_vec, b_text, b_vec, None, threshold)
    return pairs, guarded, raw


def _pair_set_detail(
    guard: Guard,
    pairs: list[Pair],
    guarded: list[SemanticMatch],
    raw: list[SemanticMatch],
    show: str,
) -> dict[str, Any]:
    """Outcomes by kind of pair, and the pairs whose outcome is ``show`` (hit / not hit),
    with the guard's probability where it judged the pair (None below the cosine gate)."""
    by_kind: dict[str, Counter[str]] = {}
    listed = []
    for p, r in zip(pairs, guarded, strict=True):
        kind = _kind(r)
        by_kind.setdefault(str(p.get("kind", "")), Counter())[kind] += 1
        if (kind == "hit") == (show == "hit"):
            listed.append(
                {
                    "a": p["a"],
                    "b": p["b"],
                    "kind": p.get("kind", ""),
                    "cosine": round(r.lookup.similarity, 4),
                    "guard_probability": None
                    if kind == "miss"
                    else round(
                        guard.check(str(p["a"]), str(p["b"]), r.lookup.similarity).probability,
                        4,
                    ),
                    "guard": r.lookup.guard_verdict or r.lookup.detail,
                }
            )
    return {
        "pairs": len(pairs),
        "hits": sum(r.entry is not None for r in guarded),
        "raw_cosine_hits": sum(r.entry is not None for r in raw),
        "outcomes": dict(Counter(_kind(r) for r in guarded)),
        "by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
        ("hits_listed" if show == "hit" else "not_hit_listed"): listed[:20],
    }


def _ms(times: list[float]) -> dict[str, float]:
    return {"p50": float(np.median(times)), "p90": float(np.percentile(times, 90))}


def guard_timing(
    guard: Guard, pairs: list[Pair], a_vec: FloatArray, b_vec: FloatArray
) -> dict[str, dict[str, float]]:
    """Milliseconds of one ``check(a, b, cosine)`` (p50, p90) on the first
    ``TIMING_PAIRS`` pairs, after ``TIMING_WARMUP`` checks of the pairs after them.

    Each pair gets a fresh guard with ``guard``'s weights and threshold (an empty parse
    memo): ``new_query`` with ``a`` parsed beforehand (the cached question, as after its
    first lookup) and ``b`` parsed by the call; ``cold`` with both parsed by the call;
    ``memo`` with both already memoised.
    """

    def fresh() -> Guard:
        return Guard(guard.weights, guard.bias, guard.mean, guard.scale, guard.threshold)

    n = min(TIMING_PAIRS, len(pairs))
    calls = [
        (str(p["a"]), str(p["b"]), float(a_vec[i] @ b_vec[i]))
        for i, p in enumerate(pairs[: n + TIMING_WARMUP])
    ]
    warm = fresh()
    for a, b, cosine in calls[n : n + TIMING_WARMUP] or calls[:TIMING_WARMUP]:
        warm.check(a, b, cosine)
    times: dict[str, list[float]] = {"new_query": [], "cold": [], "memo": []}
    for a, b, cosine in calls[:n]:
        g = fresh()
        t0 = time.perf_counter()
        g.check(a, b, cosine)
        times["cold"].append((time.perf_counter() - t0) * 1000.0)
        t0 = time.perf_counter()
        g.check(a, b, cosine)
        times["memo"].append((time.perf_counter() - t0) * 1000.0)
        g = fresh()
        g.analyse(a, a, 1.0)  # the cached question's parse, memoised
        t0 = time.perf_counter()
        g.check(a, b, cosine)
        times["new_query"].append((time.perf_counter() - t0) * 1000.0)
    return {k: _ms(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the JSON line."""
    parser = argparse.ArgumentParser(description="semantic cache precision/recall")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument(
        "--quick", action="store_true", help=f"first {QUICK_PAIRS} pairs only (smoke run)"
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    config = CacheConfig()
    # Searches run here as on the cache's worker threads (their OpenMP team size).
    set_openmp_threads(config.faiss_threads)
    embedder = Embedder(threads=2, onnx_dir=OUT / "onnx")
    guard = Guard.load(config.guard_weights, config.guard_threshold)

    qqp = load_pairs(args.data / "qqp_dev.jsonl")
    _, eval_idx = split_halves(len(qqp))
    qqp_eval: list[Pair] = [qqp[i] for i in eval_idx]
    para: list[Pair] = list(load_pairs(args.data / "chatgpt_paraphrases.jsonl"))
    if args.quick:
        qqp_eval, para = qqp_eval[:QUICK_PAIRS], para[:QUICK_PAIRS]
    vecs = {}
    for name, pairs in (("qqp-eval", qqp_eval), ("paraphrase", para)):
        vecs[name] = (
            embed_cached(embedder, [str(p["a"]) for p in pairs], name + "-a"),
            embed_cached(embedder, [str(p["b"]) for p in pairs], name + "-b"),
        )
    threshold = config.semantic_threshold
    labels = [bool(p["duplicate"]) for p in qqp_eval]

    # Per pair, the default guard, and raw cosine.
    q, q_found = evaluate(qqp_eval, *vecs["qqp-eval"], guard, threshold)
    p, _ = evaluate(para, *vecs["paraphrase"], guard, threshold)
    raw_default, _ = evaluate(qqp_eval, *vecs["qqp-eval"], None, threshold)
    sims = raw_cosines(q_found)
    raw_threshold, raw_hits, raw_correct = raw_at_recall(sims, labels, q.correct)
    raw_at_same = raw_correct / raw_hits if raw_hits else float("nan")
    raw_para_recall = float("nan")
    if raw_hits:
        raw_para, _ = evaluate(para, *vecs["paraphrase"], None, raw_threshold)
        raw_para_recall = raw_para.recall

    # Shared partition.
    q_shared, _ = evaluate(qqp_eval, *vecs["qqp-eval"], guard, threshold, shared=True)
    raw_shared, _ = evaluate(qqp_eval, *vecs["qqp-eval"], None, threshold, shared=True)

    # Guard operating points (the default one is the run above).
    operating_points: dict[str, dict[str, Any]] = {}
    for point in OPERATING_POINTS:
        at = guard.threshold if point is None else point
        if f"{at:g}" in operating_points:
            continue
        if at == guard.threshold:
            alt, alt_q, alt_p = guard, q, p
        else:
            alt = Guard.load(config.guard_weights, at)
            alt_q, _ = evaluate(qqp_eval, *vecs["qqp-eval"], alt, threshold)
            alt_p, _ = evaluate(para, *vecs["paraphrase"], alt, threshold)
        operating_points[f"{at:g}"] = {
            "guard_threshold": alt.threshold,
            "default": at == guard.threshold,
            "qqp_precision": round(alt_q.precision, 4),
            "qqp_precision_ci95": alt_q.precision_ci95,
            "qqp_recall": round(alt_q.recall, 4),
            "paraphrase_recall": round(alt_p.recall, 4),
            "qqp_hits": alt_q.hits,
        }

    # Per pair the guard's score decides a lookup at any threshold: the sweep (plot) must
    # give what match() gave at each operating point.
    scores = pair_scores(qqp_eval, q_found, guard)
    sweep_consistent = all(
        (int((scores >= v["guard_threshold"]).sum()), round(point[1], 4), round(point[2], 4))
        == (v["qqp_hits"], v["qqp_precision"], v["qqp_recall"])
        for v in operating_points.values()
        for point in guard_sweep(scores, labels, np.array([v["guard_threshold"]]))
    )

    # Trace through one partition, the test sets, the guard's latency.
    tr, examples = trace(qqp_eval, *vecs["qqp-eval"], guard, threshold)
    hard = run_pair_set(embedder, "hard_negatives", guard, threshold)
    must = run_pair_set(embedder, "must_hits", guard, threshold)
    must_hits = sum(r.entry is not None for r in must[1])
    must_recall = must_hits / len(must[0]) if must[0] else 0.0
    timing = guard_timing(guard, qqp_eval, *vecs["qqp-eval"])

    trace_judged = tr.right + tr.labelled_wrong
    detail = {
        "guard_threshold": guard.threshold,
        "guard_weights": config.guard_weights or "shipped",
        "cosine_threshold": threshold,
        "quick": args.quick,
        "qqp_eval_pairs": len(qqp_eval),
        "qqp_duplicates": q.duplicates,
        "per_pair": {
            "qqp": {**q.summary(), "false_hit_rate": round(q.false_hit_rate, 4)},
            "paraphrase": {**p.summary(), "pairs": len(para)},
            "outcomes": dict(Counter(_kind(r) for r in q_found)),
        },
        "operating_points": operating_points,
        "sweep_consistent": sweep_consistent,
        "raw_cosine_at_default_threshold": {
            **raw_default.summary(),
            "false_hit_rate": round(raw_default.false_hit_rate, 4),
        },
        "raw_cosine_at_same_qqp_recall": {
            "threshold": round(raw_threshold, 4),
            "qqp_precision": round(raw_at_same, 4),
            "qqp_precision_ci95": _ci(raw_correct, raw_hits),
            "qqp_recall": round(raw_correct / max(1, q.duplicates), 4),
            "paraphrase_recall": round(raw_para_recall, 4),
        },
        "shared_partition": {"guard": q_shared.summary(), "raw_cosine": raw_shared.summary()},
        "trace": {
            "questions": tr.lookups,
            "hits": tr.hits,
            "right": tr.right,
            "labelled_wrong": tr.labelled_wrong,
            "unlabelled": tr.unlabelled,
            "served_precision": round(tr.served_precision, 4),
            "served_precision_ci95": _ci(tr.right, tr.hits),
            "precision_labelled": round(tr.labelled_precision, 4),
            "precision_labelled_ci95": _ci(tr.right, trace_judged),
            "could_hit": tr.could_hit,
            "hits_when_could_hit": tr.hits_when_could_hit,
            "hit_rate": round(tr.hit_rate, 4),
            "right_hit_rate": round(tr.right / tr.could_hit, 4) if tr.could_hit else 0.0,
            "hit_rate_all": round(tr.hits / tr.lookups, 4) if tr.lookups else 0.0,
            "rejected": tr.rejected,
            "rejected_veto": tr.rejected_veto,
            "rejected_low_score": tr.rejected - tr.rejected_veto,
            "stored": tr.stored,
            "label_conflicts": tr.label_conflicts,
            "example_hits": examples["hits"],
            "example_rejections": examples["rejections"],
        },
        "hard_negatives": _pair_set_detail(guard, *hard, show="hit"),
        "must_hits": _pair_set_detail(guard, *must, show="miss"),
        "guard_ms": {k: {m: round(x, 4) for m, x in v.items()} for k, v in timing.items()},
        "guard_timed_pairs": min(TIMING_PAIRS, len(qqp_eval)),
        "embedder": embedder.backend,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(detail), file=sys.stderr)
    if not args.no_plot:
        plot(
            guard_sweep(scores, labels, np.linspace(0.0, 1.0, 101)),
            raw_sweep(sims, labels, np.linspace(0.70, 0.995, 60)),
            [(key, v["qqp_recall"], v["qqp_precision"]) for key, v in operating_points.items()],
            OUT / "semantic_cache_pr.png",
        )
    hard_hits = sum(r.entry is not None for r in hard[1])
    print(
        json.dumps(
            {
                "qqp_precision": round(q.precision, 4),
                "qqp_precision_ci95": q.precision_ci95,
                "qqp_recall": round(q.recall, 4),
                "shared_precision": round(q_shared.precision, 4),
                "shared_precision_ci95": q_shared.precision_ci95,
                "shared_recall": round(q_shared.recall, 4),
                "trace_served_precision": round(tr.served_precision, 4),
                "trace_served_precision_ci95": _ci(tr.right, tr.hits),
                "trace_precision_labelled": round(tr.labelled_precision, 4),
                "trace_precision_labelled_ci95": _ci(tr.right, trace_judged),
                "trace_hit_rate": round(tr.hit_rate, 4),
                "paraphrase_recall": round(p.recall, 4),
                "hard_negative_false_hits": hard_hits,
                "must_hit_recall": round(must_recall, 4),
                "guard_ms_p50": round(timing["new_query"]["p50"], 4),
                "guard_threshold": guard.threshold,
                "raw_cosine_precision_at_same_recall": round(raw_at_same, 4),
                "raw_cosine_precision_at_same_recall_ci95": _ci(raw_correct, raw_hits),
                "threshold": threshold,
            }
        )
    )


def plot(
    guard_points: list[tuple[float, float, float]],
    raw_points: list[tuple[float, float, float]],
    operating: list[tuple[str, float, float]],
    file: Path,
) -> None:
    """Precision/recall curves of the guarded cache (guard threshold swept) and raw
    cosine, with the guard's operating points."""
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
    ax.scatter(
        [r for _, r, _ in operating],
        [p for _, _, p in operating],
        marker="*",
        s=120,
        color="k",
        zorder=5,
        label="operating points (guard threshold)",
    )
    names: dict[tuple[float, float], list[str]] = {}
    for name, r, p in operating:  # points with the same figures share one label
        names.setdefault((r, p), []).append(name)
    for (r, p), same in names.items():
        label = "/".join(same)
        ax.annotate(label, (r, p), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel("recall (duplicates served the right answer)")
    ax.set_ylabel("precision (hits that were right)")
    ax.set_title("Semantic cache on the qqp_dev evaluation half")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    file.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(file, dpi=120, bbox_inches="tight")
    plt.close(fig)
    print(json.dumps({"plot": str(file)}), file=sys.stderr)


if __name__ == "__main__":
    main()
