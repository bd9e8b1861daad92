"""Train the false-hit guard's logistic model (numpy only, deterministic).

Usage::

    python -m optiserve.cache.train_guard [--data ../shared/data/paraphrase/qqp_dev.jsonl]

Splits ``qqp_dev.jsonl`` into two fixed halves with seed ``SPLIT_SEED`` (the benchmark uses
the same split and reports only on the evaluation half), embeds the training half with the
cache's own embedder, fits an L2-regularised logistic regression on :func:`guard.features`
by Newton's method, calibrates the acceptance threshold on the training half, and writes
``guard_weights.json`` next to this module.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from optiserve.cache.guard import FEATURES, WEIGHTS_FILE, features

SPLIT_SEED = 20240
#: Ridge strength on the standardised features.
L2 = 1.0
#: The calibrated threshold is the lowest probability whose precision on the training
#: half stays at or above this among candidates above the cosine threshold.
TARGET_PRECISION = 0.96
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


def calibrate(prob: Array, y: Array, target: float = TARGET_PRECISION) -> float:
    """Lowest probability threshold whose precision on (prob, y) is ≥ ``target``."""
    order = np.argsort(-prob)
    precision = np.cumsum(y[order]) / np.arange(1, len(order) + 1)
    ok = np.nonzero(precision >= target)[0]
    if len(ok) == 0:
        return 0.99
    return float(prob[order][ok[-1]])


def main(argv: list[str] | None = None) -> None:
    """Train and write the weights file."""
    from optiserve.cache.embedder import Embedder

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_data = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "paraphrase"
    parser.add_argument("--data", type=Path, default=default_data / "qqp_dev.jsonl")
    parser.add_argument("--out", type=Path, default=WEIGHTS_FILE)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)

    rows = load_pairs(args.data)
    train, _ = split_halves(len(rows))
    embedder = Embedder()
    a = embedder.embed_many([rows[i]["a"] for i in train])
    b = embedder.embed_many([rows[i]["b"] for i in train])
    cosine = np.sum(a * b, axis=1)
    x = np.stack(
        [features(rows[i]["a"], rows[i]["b"], float(c)) for i, c in zip(train, cosine, strict=True)]
    )
    y = np.array([1.0 if rows[i]["duplicate"] else 0.0 for i in train])
    weights, bias, mean, scale = fit_logistic(x, y)
    prob = 1.0 / (1.0 + np.exp(-(((x - mean) / scale) @ weights + bias)))
    gate = cosine >= COSINE_THRESHOLD
    threshold = calibrate(prob[gate], y[gate])
    document = {
        "features": list(FEATURES),
        "weights": [round(float(v), 6) for v in weights],
        "bias": round(bias, 6),
        "mean": [round(float(v), 6) for v in mean],
        "scale": [round(float(v), 6) for v in scale],
        "threshold": round(threshold, 6),
        "cosine_threshold": COSINE_THRESHOLD,
        "trained_on": f"{args.data.name} half 0 of split seed {SPLIT_SEED} ({len(train)} pairs)",
        "target_precision": TARGET_PRECISION,
    }
    args.out.write_text(json.dumps(document, indent=1) + "\n")
    print(json.dumps({"threshold": threshold, "written": str(args.out)}))


if __name__ == "__main__":
    main()
