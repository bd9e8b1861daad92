"""Cython token-batching core against its pure-Python twin and a plain numpy copy.

Workload: 256 sequences of 50-500 tokens (fixed seed). For each function of
``optiserve._batching`` the best-of-N time is compared with its twin in
``optiserve._batching_py``; collation is also compared with a plain numpy copy of the same
bytes it produces (its three ``[B, L]`` int64 outputs copied as one contiguous block: the
memcpy floor). Prints one JSON line last.

    python benchmarks/collate.py
"""

from __future__ import annotations

import functools
import json
import random
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from optiserve import _batching as ext
from optiserve import _batching_py as py

SEQS = 256
LO, HI = 50, 500


def best_of(fn: Callable[[], Any], repeat: int, number: int) -> float:
    """Best mean seconds per call over ``repeat`` rounds of ``number`` calls."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - start) / number)
    return best


def main() -> None:
    rng = random.Random(0)
    lists = [[rng.randrange(0, 32000) for _ in range(rng.randint(LO, HI))] for _ in range(SEQS)]
    arrays = [np.array(s, dtype=np.int64) for s in lists]
    ids, mask, pos = ext.collate(lists, 0)
    source = np.stack([ids, mask, pos])  # the bytes collate writes, in one contiguous block

    def numpy_copy() -> Any:
        return np.copy(source)

    t_py = best_of(lambda: py.collate(lists, 0), 3, 1)
    t_ext_lists = best_of(lambda: ext.collate(lists, 0), 7, 20)
    t_ext_arrays = best_of(lambda: ext.collate(arrays, 0), 7, 20)
    t_copy = best_of(numpy_copy, 7, 20)

    row_ids = np.arange(SEQS, dtype=np.int64) * 7 + 3
    keep = row_ids[rng.sample(range(SEQS), SEQS // 2)]
    widths = np.array([rng.randint(LO, HI) for _ in range(8)], dtype=np.int64)
    sizes = np.array([rng.randint(1, 32) for _ in range(8)], dtype=np.int64)
    new_tokens = np.array([rng.randrange(0, 32000) for _ in range(SEQS)], dtype=np.int64)
    generated = np.array([rng.randint(1, 128) for _ in range(SEQS)], dtype=np.int64)
    max_new = np.array([rng.randint(1, 128) for _ in range(SEQS)], dtype=np.int64)
    eos = np.array([2, 31999], dtype=np.int64)
    tails = np.array([s[-4:] for s in lists], dtype=np.int64)
    tail_lens = np.full(SEQS, 4, dtype=np.int64)
    stops = [[rng.randrange(0, 32000) for _ in range(rng.randint(1, 4))] for _ in range(2 * SEQS)]
    stops[5] = lists[2][-3:]  # one real match
    stop_tokens = np.array([t for s in stops for t in s], dtype=np.int64)
    stop_offsets = np.cumsum([0] + [len(s) for s in stops]).astype(np.int64)
    stop_rows = np.array([i // 2 for i in range(2 * SEQS)], dtype=np.int64)

    kept_rows = np.sort(np.array(rng.sample(range(SEQS), SEQS // 2), dtype=np.int64))
    slot_lengths = np.array([len(s) for s in lists], dtype=np.int64)

    cases: dict[str, tuple[Callable[[Any], Any], int]] = {
        "filter_indices": (lambda m: m.filter_indices(row_ids, keep), 200),
        "compact_plan": (lambda m: m.compact_plan(kept_rows, SEQS), 2000),
        "align_index": (lambda m: m.align_index(slot_lengths, HI), 20),
        "concat_layout": (lambda m: m.concat_layout(widths, sizes), 2000),
        "finish_codes": (lambda m: m.finish_codes(new_tokens, generated, max_new, eos), 200),
        "match_stop_ids": (
            lambda m: m.match_stop_ids(tails, tail_lens, stop_tokens, stop_offsets, stop_rows),
            50,
        ),
    }
    result: dict[str, Any] = {
        "collate_speedup_vs_python": round(t_py / t_ext_lists, 1),
        "collate_vs_numpy_copy": round(t_ext_arrays / t_copy, 2),
        "collate_lists_vs_numpy_copy": round(t_ext_lists / t_copy, 2),
        "collate_ms_python": round(t_py * 1e3, 3),
        "collate_ms_cython_lists": round(t_ext_lists * 1e3, 3),
        "collate_ms_cython_arrays": round(t_ext_arrays * 1e3, 3),
        "numpy_copy_ms": round(t_copy * 1e3, 3),
    }
    for name, (call, number) in cases.items():
        assert np.array_equal(np.asarray(call(ext)[0]), np.asarray(call(py)[0])), name
        t_twin = best_of(functools.partial(call, py), 5, max(1, number // 10))
        t_cy = best_of(functools.partial(call, ext), 7, number)
        result[f"{name}_speedup_vs_python"] = round(t_twin / t_cy, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
