"""Fine-tune a pair verifier for the semantic cache (a cross-encoder, see
:mod:`optiserve.tools.verifier_model`): an experiment of issue 10, not used when serving.

What it measured (3 layers, 1 epoch, 29.8 min on 2 CPU cores): on the held-out calibration
slice, among the pairs the guard judges (cosine >= 0.80, no veto), precision 0.843 at
recall 0.40 alone (the logistic guard: 0.831), 0.86 stacked with the guard's features, but
only 0.07-0.29 of ``chatgpt_paraphrases.jsonl`` served (the guard: 0.87): trained on Quora
questions only, it does not carry over to reworded statements. Not shipped for that reason.

Usage::

    python -m optiserve.tools.train_verifier [--layers 3] [--epochs 1] [--threads 2]

Data (``../shared/data/paraphrase``):

* ``qqp_train.jsonl`` (56,296 Quora pairs), minus a calibration slice: the pairs of about
  ``CALIBRATION_SHARE`` of its duplicate-connected question groups (whole groups, so no
  question is on both sides);
* plus the training half of ``qqp_dev.jsonl`` (the split of
  :func:`optiserve.tools.train_guard.split_halves`); its evaluation half is never read here.

Every pair is used in both orders. Deterministic for a given seed and thread count (one
shuffle from ``SEED``, fixed batches). Writes ``delta.safetensors`` (the fine-tuned weights
in fp16) into ``--out``, then prints the fp32 scorer's precision at recall 0.30/0.40/0.50
on the calibration slice's judged pairs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from optiserve.cache.embedder import default_model_path
from optiserve.tools.train_guard import load_pairs, split_halves
from optiserve.tools.verifier_model import build_scorer, delta_state

log = logging.getLogger("train_verifier")

SEED = 1234
#: Share of qqp_train's question groups held out for calibration.
CALIBRATION_SHARE = 0.12
OUT_DIR = Path("verifier-out")
DATA_DIR = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "paraphrase"
MAX_TOKENS = 96


def group_keys(rows: list[dict[str, Any]]) -> list[str]:
    """Per pair, a key of its connected group of questions (union-find over all pairs)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for row in rows:
        ra, rb = find(row["a"]), find(row["b"])
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return [find(row["a"]) for row in rows]


def calibration_mask(
    rows: list[dict[str, Any]], share: float = CALIBRATION_SHARE
) -> np.ndarray[Any, np.dtype[np.bool_]]:
    """True for the pairs of qqp_train held out for calibration (whole groups, by hash)."""
    marks = []
    for key in group_keys(rows):
        digest = hashlib.sha256(f"{SEED}:{key}".encode()).digest()
        marks.append(int.from_bytes(digest[:8], "big") / 2**64 < share)
    return np.array(marks, dtype=bool)


def training_pairs(data: Path) -> tuple[list[tuple[str, str, float]], list[dict[str, Any]]]:
    """(training triples in both orders, calibration rows)."""
    train_rows = load_pairs(data / "qqp_train.jsonl")
    held = calibration_mask(train_rows)
    dev_rows = load_pairs(data / "qqp_dev.jsonl")
    dev_train, _ = split_halves(len(dev_rows))
    rows = [r for r, h in zip(train_rows, held, strict=True) if not h]
    rows += [dev_rows[i] for i in dev_train]
    triples = []
    for r in rows:
        y = 1.0 if r["duplicate"] else 0.0
        triples.append((r["a"], r["b"], y))
        triples.append((r["b"], r["a"], y))
    return triples, [r for r, h in zip(train_rows, held, strict=True) if h]


def batches(
    triples: list[tuple[str, str, float]], tokenizer: Any, size: int, rng: np.random.Generator
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Shuffled, length-bucketed, padded batches of (ids, mask, types, labels)."""
    order = rng.permutation(len(triples))
    encoded = tokenizer.encode_batch([(triples[i][0], triples[i][1]) for i in order])
    lengths = np.array([len(e.ids) for e in encoded])
    out = []
    chunk = size * 50  # sort within chunks: similar lengths per batch, order still random
    for start in range(0, len(order), chunk):
        span = np.arange(start, min(start + chunk, len(order)))
        idx = span[np.argsort(lengths[span], kind="stable")]
        for b in range(0, len(idx), size):
            part = idx[b : b + size]
            width = int(lengths[part].max())
            ids = np.zeros((len(part), width), dtype=np.int64)
            types = np.zeros_like(ids)
            mask = np.zeros_like(ids)
            for row, j in enumerate(part):
                e = encoded[j]
                n = len(e.ids)
                ids[row, :n] = e.ids
                types[row, :n] = e.type_ids
                mask[row, :n] = 1
            labels = np.array([triples[order[j]][2] for j in part], dtype=np.float32)
            out.append(
                (
                    torch.from_numpy(ids),
                    torch.from_numpy(mask),
                    torch.from_numpy(types),
                    torch.from_numpy(labels),
                )
            )
    perm = rng.permutation(len(out))
    return [out[i] for i in perm]


def pair_tokenizer(base: Path, max_tokens: int = MAX_TOKENS) -> Any:
    """The base model's tokenizer set up for question pairs (truncated, not padded)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(base / "tokenizer.json"))
    tok.enable_truncation(max_length=max_tokens)
    tok.no_padding()
    return tok


def evaluate(scorer: Any, tokenizer: Any, rows: list[dict[str, Any]]) -> dict[str, float]:
    """Precision at recall 0.30/0.40/0.50 of the fp32 scorer on the pairs the guard judges
    (cosine >= 0.80 with the cache's embedder, no hard veto)."""
    from optiserve.cache.embedder import Embedder
    from optiserve.cache.guard import analyse

    embedder = Embedder(threads=2)
    a = embedder.embed_many([r["a"] for r in rows])
    b = embedder.embed_many([r["b"] for r in rows])
    cosine = np.sum(a * b, axis=1)
    judged = [
        i for i, r in enumerate(rows) if cosine[i] >= 0.80 and not analyse(r["a"], r["b"], 0.9)[1]
    ]
    scores = []
    with torch.inference_mode():
        for i in judged:
            e = tokenizer.encode(rows[i]["a"], rows[i]["b"])
            ids = torch.tensor([e.ids])
            scores.append(float(scorer(ids, torch.ones_like(ids), torch.tensor([e.type_ids]))))
    y = np.array([1.0 if rows[i]["duplicate"] else 0.0 for i in judged])
    order = np.argsort(-np.array(scores))
    right = np.cumsum(y[order])
    total = sum(1.0 for r in rows if r["duplicate"])
    out = {}
    for recall in (0.30, 0.40, 0.50):
        k = int(np.searchsorted(right / total, recall))
        out[f"precision_at_recall_{recall:.2f}"] = (
            round(float(right[k] / (k + 1)), 4) if k < len(right) else float("nan")
        )
    return out


def main(argv: list[str] | None = None) -> None:
    """Train and write ``delta.safetensors``."""
    from safetensors.torch import save_file

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA_DIR)
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=0, help="train on this many pairs only")
    parser.add_argument(
        "--resume", type=Path, default=None, help="start from these fine-tuned weights"
    )
    parser.add_argument("--seed", type=int, default=SEED, help="shuffle and init seed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    base = default_model_path()
    triples, calibration = training_pairs(args.data)
    if args.limit:
        triples = triples[: args.limit]
    tokenizer = pair_tokenizer(base)
    scorer = build_scorer(base, args.layers)
    if args.resume is not None:
        from safetensors.torch import load_file

        from optiserve.tools.verifier_model import apply_delta

        apply_delta(scorer, load_file(str(args.resume)))
    for name, param in scorer.named_parameters():
        param.requires_grad = name.startswith(("bert.encoder.", "head.")) or ("token_type" in name)
    epoch_batches = batches(triples, tokenizer, args.batch, rng)
    total = max(1, int(len(epoch_batches) * args.epochs))
    plan = (epoch_batches * math.ceil(args.epochs))[:total]
    head = [p for n, p in scorer.named_parameters() if n.startswith("head.")]
    body = [
        p for n, p in scorer.named_parameters() if p.requires_grad and not n.startswith("head.")
    ]
    optimizer = torch.optim.AdamW(
        [{"params": body, "lr": args.lr}, {"params": head, "lr": args.lr * 20}],
        weight_decay=0.01,
    )
    warmup = max(1, total // 16)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / (total - warmup)))
    )
    loss_fn = torch.nn.BCEWithLogitsLoss()
    log.info(
        "training %d layers on %d ordered pairs (%d steps); %d calibration pairs held out",
        args.layers,
        len(triples),
        total,
        len(calibration),
    )
    scorer.train()
    started = time.monotonic()
    running = 0.0
    for step, (ids, mask, types, labels) in enumerate(plan, 1):
        loss = loss_fn(scorer(ids, mask, types), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(scorer.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        value = float(loss.detach())
        running = 0.98 * running + 0.02 * value if step > 1 else value
        if step % 200 == 0 or step == total:
            rate = step / (time.monotonic() - started)
            log.info("step %d/%d loss %.4f, %.2f steps/s", step, total, running, rate)
    scorer.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    delta = {k: v.to(torch.float16).contiguous() for k, v in delta_state(scorer).items()}
    meta = {
        "layers": str(args.layers),
        "seed": str(args.seed),
        "resumed_from": str(args.resume.name) if args.resume else "",
        "epochs": str(args.epochs),
        "trained_on": json.dumps(
            {"pairs": len(triples) // 2, "orders": 2, "calibration_share": CALIBRATION_SHARE}
        ),
    }
    save_file(delta, str(args.out / "delta.safetensors"), metadata=meta)
    log.info(
        "wrote %s (%.1f min)", args.out / "delta.safetensors", (time.monotonic() - started) / 60
    )
    print(json.dumps(evaluate(scorer, tokenizer, calibration)))


if __name__ == "__main__":
    main()
