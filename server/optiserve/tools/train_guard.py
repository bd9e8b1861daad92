"""Train the false-hit guard's logistic model (numpy only, deterministic).

Usage::

    python -m optiserve.tools.train_guard [--data ../shared/data/paraphrase/qqp_dev.jsonl]

Splits ``qqp_dev.jsonl`` into two fixed halves with seed ``SPLIT_SEED`` (the benchmark uses
the same split and reports only on the evaluation half), embeds the training half with the
cache's own embedder, and fits an L2-regularised logistic regression on
:func:`guard.features` by Newton's method, on the pairs the guard actually judges (cosine at
or above ``COSINE_THRESHOLD`` and no hard veto). The acceptance threshold is calibrated on
the training half as the highest probability that still serves ``TARGET_RECALL`` of the
duplicates (precision first: the highest threshold that keeps the recall goal). Writes
``guard_weights.json`` next to this module. Deterministic: no random state but the split.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from optiserve.cache.guard import FEATURES, WEIGHTS_FILE, analyse

SPLIT_SEED = 20240
#: Ridge strength on the standardised features.
L2 = 1.0
#: Share of the training half's duplicates the calibrated threshold must still serve
#: (a margin over the 0.40 goal, so the evaluation half lands above it).
TARGET_RECALL = 0.45
#: The cosine threshold the guard is calibrated for (``CacheConfig.semantic_threshold``).
COSINE_THRESHOLD = 0.80

Array = npt.NDArray[np.float64]


def load_pairs(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a paraphrase file (``a``, ``b``, ``duplicate``)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def split_halves(
    n: int, seed: int = SPLIT_SEED
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(train indices, evaluation indices): a fixed random half each."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2 :])


def fit_logistic(
    x: Array, y: Array, l2: float = L2, iters: int = 50
) -> tuple[Array, float, Array, Array]:
    """(weights, bias, mean, scale) of a ridge logistic regression fitted by Newton steps."""
    mean = x.mean(axis=0)
    scale = x.std(axis=0) + 1e-9
    z = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
    w = np.zeros(z.shape[1])
    penalty = np.diag(np.r_[np.full(z.shape[1] - 1, l2), 0.0])
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(z @ w)))
        grad = z.T @ (p - y) + penalty @ w
        hess = (z * (p * (1 - p))[:, None]).T @ z + penalty
        step = np.linalg.solve(hess, grad)
        w -= step
        if float(np.abs(step).max()) < 1e-8:
            break
    return w[:-1], float(w[-1]), mean, scale


def calibrate(prob: Array, y: Array, total_positives: int, target: float = TARGET_RECALL) -> float:
    """Highest threshold whose accepted pairs include ``target`` of ``total_positives``."""
    order = np.argsort(-prob)
    served = np.cumsum(y[order])
    reach = np.nonzero(served >= target * total_positives)[0]
    if len(reach) == 0:
        return float(prob.min())
    return float(prob[order][reach[0]])


def _embed(embedder: Any, texts: list[str], folder: Path | None) -> npt.NDArray[np.float32]:
    """Embeddings of ``texts``, kept in ``folder`` (keyed by texts and model) when given."""
    if folder is None:
        vectors: npt.NDArray[np.float32] = embedder.embed_many(texts)
        return vectors
    key = hashlib.sha256(
        ("\x00".join(texts) + str(embedder.path) + embedder.backend).encode()
    ).hexdigest()[:16]
    file = folder / f"guard-train-{key}.npy"
    if file.exists():
        loaded: npt.NDArray[np.float32] = np.load(file)
        return loaded
    vectors = embedder.embed_many(texts)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(file, vectors)
    return vectors


def main(argv: list[str] | None = None) -> None:
    """Train and write the weights file."""
    from optiserve.cache.embedder import Embedder

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_data = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "paraphrase"
    parser.add_argument("--data", type=Path, default=default_data / "qqp_dev.jsonl")
    parser.add_argument("--out", type=Path, default=WEIGHTS_FILE)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--vectors", type=Path, default=None, help="folder to keep embeddings between runs"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)

    rows = load_pairs(args.data)
    train, _ = split_halves(len(rows))
    embedder = Embedder(threads=args.threads)
    a = _embed(embedder, [rows[i]["a"] for i in train], args.vectors)
    b = _embed(embedder, [rows[i]["b"] for i in train], args.vectors)
    cosine = np.sum(a * b, axis=1)
    analysed = [
        analyse(rows[i]["a"], rows[i]["b"], float(c)) for i, c in zip(train, cosine, strict=True)
    ]
    x = np.stack([f for f, _ in analysed])
    vetoed = np.array([bool(v) for _, v in analysed])
    y = np.array([1.0 if rows[i]["duplicate"] else 0.0 for i in train])
    judged = (cosine >= COSINE_THRESHOLD) & ~vetoed
    weights, bias, mean, scale = fit_logistic(x[judged], y[judged])
    prob = 1.0 / (1.0 + np.exp(-(((x - mean) / scale) @ weights + bias)))
    threshold = calibrate(prob[judged], y[judged], int(y.sum()))
    accepted = judged & (prob >= threshold)
    document = {
        "features": list(FEATURES),
        "weights": [round(float(v), 6) for v in weights],
        "bias": round(bias, 6),
        "mean": [round(float(v), 6) for v in mean],
        "scale": [round(float(v), 6) for v in scale],
        "threshold": round(threshold, 6),
        "cosine_threshold": COSINE_THRESHOLD,
        "target_recall": TARGET_RECALL,
        "trained_on": f"{args.data.name}, half 0 of split seed {SPLIT_SEED} ({len(train)} pairs)",
        "train_precision": round(float(y[accepted].mean()), 4),
        "train_recall": round(float(y[accepted].sum() / y.sum()), 4),
    }
    args.out.write_text(json.dumps(document, indent=1) + "\n")
    print(json.dumps({k: document[k] for k in ("threshold", "train_precision", "train_recall")}))


if __name__ == "__main__":
    main()
