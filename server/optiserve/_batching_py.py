"""Pure-Python/numpy twin of the Cython module ``optiserve._batching``.

Same functions, same results; selected with ``OPTISERVE_NO_EXTENSIONS=1`` or when the
extension is not built. The tests run against both. The twins favour being obviously
correct over being fast: they are the reference the extension is checked against.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

Int64Array = npt.NDArray[np.int64]
Int8Array = npt.NDArray[np.int8]


def collate(
    seqs: Sequence[Sequence[int] | Int64Array], pad_id: int
) -> tuple[Int64Array, Int64Array, Int64Array]:
    """Left-pad token lists into ``(input_ids, attention_mask, position_ids)``, each ``[B, L]``.

    ``L = max(len(s))``. Real tokens sit at the right with mask 1 and positions 0..len-1;
    padding (first) has ``pad_id``, mask 0 and position 0: the layout decoder-only
    generation needs.
    """
    width = max([len(s) for s in seqs] + [0])
    batch = len(seqs)
    ids = np.full((batch, width), pad_id, dtype=np.int64)
    mask = np.zeros((batch, width), dtype=np.int64)
    pos = np.zeros((batch, width), dtype=np.int64)
    for row, seq in enumerate(seqs):
        n = len(seq)
        start = width - n
        for j in range(n):
            ids[row, start + j] = seq[j]
            mask[row, start + j] = 1
            pos[row, start + j] = j
    return ids, mask, pos


def filter_indices(row_ids: Int64Array, keep_ids: Int64Array) -> Int64Array:
    """Row positions (ascending) of the rows whose id is in ``keep_ids``.

    The gather index for ``CausalLMBatch.filter``: ids in ``keep_ids`` that are not rows are
    ignored, duplicates in ``keep_ids`` count once.
    """
    keep = {int(k) for k in keep_ids}
    return np.array([i for i, r in enumerate(row_ids) if int(r) in keep], dtype=np.int64)


def concat_layout(widths: Int64Array, sizes: Int64Array) -> tuple[Int64Array, int]:
    """Where each batch lands when batches are concatenated (the row plan).

    Returns ``(row_starts, width)``: batch ``i`` fills rows
    ``row_starts[i] : row_starts[i] + sizes[i]``; ``row_starts`` has one extra final entry,
    the total number of rows. ``width`` is the common width, the largest of ``widths``.
    """
    if len(widths) != len(sizes):
        raise ValueError(f"widths and sizes differ in length: {len(widths)} != {len(sizes)}")
    width = max([int(w) for w in widths] + [0])
    starts = [0]
    for size in sizes:
        starts.append(starts[-1] + int(size))
    return np.array(starts, dtype=np.int64), width


def compact_plan(keep: Int64Array, n_rows: int) -> tuple[Int64Array, Int64Array, Int64Array]:
    """The move plan of ``CausalLMBatch.filter`` over slot ``0 .. n_rows - 1``.

    ``keep`` lists the kept rows' positions (ascending, unique, in ``[0, n_rows)``). Kept rows
    past the first ``len(keep)`` slots move into the freed slots below, lowest first.
    Returns ``(order, dst, src)``: ``order[i]`` is the old position of the row that ends
    in slot ``i``; the moves are ``src[j] -> dst[j]`` (``dst < len(keep) <= src``).
    """
    n_keep = len(keep)
    positions = [int(k) for k in keep]
    kept = set(positions)
    if positions != sorted(kept) or any(not 0 <= k < n_rows for k in kept):
        raise ValueError("keep must hold unique positions in [0, n_rows), ascending")
    holes = [i for i in range(n_keep) if i not in kept]
    movers = sorted(k for k in kept if k >= n_keep)
    order = list(range(n_keep))
    for hole, mover in zip(holes, movers, strict=True):
        order[hole] = mover
    return (
        np.array(order, dtype=np.int64),
        np.array(holes, dtype=np.int64),
        np.array(movers, dtype=np.int64),
    )


def align_index(lengths: Int64Array, width: int) -> Int64Array:
    """``[B, width]`` gather index that left-aligns right-aligned rows.

    Row ``r`` of a left-padded ``width``-column array has ``lengths[r]`` real cells at the
    right; gathering columns ``index[r]`` moves them to columns ``0 .. lengths[r] - 1``
    (the padding cells rotate to the right). Lengths must be in ``[0, width]``.
    """
    out = np.zeros((len(lengths), width), dtype=np.int64)
    for r, n in enumerate(int(x) for x in lengths):
        if not 0 <= n <= width:
            raise ValueError(f"length {n} is outside [0, {width}]")
        for j in range(width):
            out[r, j] = (j + width - n) % width
    return out


def finish_codes(
    new_tokens: Int64Array, generated: Int64Array, max_new: Int64Array, eos_ids: Int64Array
) -> Int8Array:
    """Per row: 0 keep going, 1 the new token is an end-of-sequence id, 2 length reached.

    ``generated`` counts tokens generated so far including ``new_tokens``; EOS wins over
    length when both hold.
    """
    if not len(new_tokens) == len(generated) == len(max_new):
        raise ValueError("new_tokens, generated and max_new must have the same length")
    eos = {int(e) for e in eos_ids}
    out = []
    for token, count, limit in zip(new_tokens, generated, max_new, strict=True):
        out.append(1 if int(token) in eos else 2 if count >= limit else 0)
    return np.array(out, dtype=np.int8)


def match_stop_ids(
    tails: Int64Array,
    tail_lens: Int64Array,
    stop_tokens: Int64Array,
    stop_offsets: Int64Array,
    stop_rows: Int64Array,
) -> Int64Array:
    """For each row, the first stop sequence (over token ids) its tail ends with, else -1.

    ``tails[r]`` holds row ``r``'s last generated tokens right-aligned, ``tail_lens[r]`` of
    them valid. Stop sequence ``s`` is ``stop_tokens[stop_offsets[s]:stop_offsets[s + 1]]``
    and belongs to row ``stop_rows[s]``. Empty stop sequences never match.
    """
    n_rows = tails.shape[0]
    if len(tail_lens) != n_rows:
        raise ValueError("tail_lens must have one entry per row of tails")
    if len(stop_offsets) != len(stop_rows) + 1:
        raise ValueError("stop_offsets must have one more entry than stop_rows")
    out = [-1] * n_rows
    for s, row in enumerate(int(r) for r in stop_rows):
        if not 0 <= row < n_rows or out[row] >= 0:
            continue
        stop = [int(t) for t in stop_tokens[stop_offsets[s] : stop_offsets[s + 1]]]
        valid = min(int(tail_lens[row]), tails.shape[1])
        tail = [int(t) for t in tails[row, tails.shape[1] - valid :]] if valid else []
        if stop and len(stop) <= len(tail) and tail[len(tail) - len(stop) :] == stop:
            out[row] = s
    return np.array(out, dtype=np.int64)
