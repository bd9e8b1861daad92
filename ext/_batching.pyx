# cython: language_level=3
# distutils: extra_compile_args = -O3
"""Cython token bookkeeping for continuous batching (twin: ``optiserve._batching_py``).

Every function here has a pure-Python/numpy twin with the same signature and results;
``optiserve.batching`` picks one. Inner loops touch only C integers and typed memoryviews
(the list fast path of :func:`collate` reads borrowed item pointers without refcounting).
"""

import numpy as np

from libc.stdint cimport int8_t, int64_t
from libc.stdlib cimport free, malloc, qsort
from libc.string cimport memcpy, memset
from cpython.ref cimport PyObject


cdef extern from "Python.h":
    PyObject* PyList_GET_ITEM(PyObject* lst, Py_ssize_t i)
    PyObject* PyTuple_GET_ITEM(PyObject* tup, Py_ssize_t i)


cdef inline void _fill_row(
    int64_t* ids, int64_t* mask, int64_t* pos, Py_ssize_t n, Py_ssize_t width, int64_t pad_id,
) noexcept nogil:
    """Write one left-padded row's padding cells and its mask and positions (ids written by
    the caller). One simple loop (or memset) per array and region, so the compiler
    vectorizes them.
    """
    cdef Py_ssize_t j, pad = width - n
    if pad_id == 0:
        memset(ids, 0, pad * sizeof(int64_t))
    else:
        for j in range(pad):
            ids[j] = pad_id
    memset(mask, 0, pad * sizeof(int64_t))
    memset(pos, 0, pad * sizeof(int64_t))
    mask += pad
    pos += pad
    for j in range(n):
        mask[j] = 1
    for j in range(n):
        pos[j] = j


cdef inline int _copy_ints(PyObject* seq, bint is_list, int64_t* out, Py_ssize_t n) except -1:
    """Unbox ``n`` Python ints of a list or tuple into ``out`` (borrowed item pointers)."""
    cdef Py_ssize_t j
    cdef int64_t value
    if is_list:
        for j in range(n):
            value = <object>PyList_GET_ITEM(seq, j)
            out[j] = value
    else:
        for j in range(n):
            value = <object>PyTuple_GET_ITEM(seq, j)
            out[j] = value
    return 0


def collate(seqs, int64_t pad_id):
    """Left-pad token lists into ``(input_ids, attention_mask, position_ids)``, each ``[B, L]``.

    ``L = max(len(s))``. Real tokens sit at the right with mask 1 and positions 0..len-1;
    padding (first) has ``pad_id``, mask 0 and position 0. Rows may be lists or tuples of
    ints (unboxed in place) or int arrays.
    """
    cdef list rows = list(seqs)
    cdef Py_ssize_t batch = len(rows)
    cdef Py_ssize_t width = 0
    cdef Py_ssize_t row, n, start
    cdef const int64_t[::1] src
    cdef object seq
    cdef int64_t[:, ::1] ids_v, mask_v, pos_v
    cdef int64_t* ids_p
    cdef int64_t* mask_p
    cdef int64_t* pos_p
    cdef Py_ssize_t* lens = <Py_ssize_t*>malloc((batch + 1) * sizeof(Py_ssize_t))
    if lens == NULL:
        raise MemoryError()
    try:
        for row in range(batch):
            n = len(rows[row])
            lens[row] = n
            if n > width:
                width = n
        # One allocation for the three outputs: fewer allocator round trips, and a large
        # block the allocator keeps instead of returning (and page-faulting) every call.
        out = np.empty((3, batch, width), dtype=np.int64)
        ids, mask, pos = out[0], out[1], out[2]
        if batch == 0 or width == 0:
            return ids, mask, pos
        ids_v = ids
        mask_v = mask
        pos_v = pos
        ids_p = &ids_v[0, 0]
        mask_p = &mask_v[0, 0]
        pos_p = &pos_v[0, 0]
        for row in range(batch):
            n = lens[row]
            start = width - n
            seq = rows[row]
            if type(seq) is list or type(seq) is tuple:
                _copy_ints(<PyObject*>seq, type(seq) is list, ids_p + row * width + start, n)
            elif n:
                src = np.ascontiguousarray(seq, dtype=np.int64)
                memcpy(ids_p + row * width + start, &src[0], n * sizeof(int64_t))
            _fill_row(
                ids_p + row * width, mask_p + row * width, pos_p + row * width, n, width, pad_id
            )
        return ids, mask, pos
    finally:
        free(lens)


cdef int _cmp_int64(const void* a, const void* b) noexcept nogil:
    cdef int64_t x = (<const int64_t*>a)[0]
    cdef int64_t y = (<const int64_t*>b)[0]
    return (x > y) - (x < y)


cdef inline bint _contains(const int64_t* sorted_vals, Py_ssize_t n, int64_t v) noexcept nogil:
    cdef Py_ssize_t lo = 0, hi = n, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if sorted_vals[mid] < v:
            lo = mid + 1
        else:
            hi = mid
    return lo < n and sorted_vals[lo] == v


def filter_indices(const int64_t[::1] row_ids, const int64_t[::1] keep_ids):
    """Row positions (ascending) of the rows whose id is in ``keep_ids``.

    The gather index for ``CausalLMBatch.filter``: ids in ``keep_ids`` that are not rows are
    ignored, duplicates in ``keep_ids`` count once.
    """
    cdef Py_ssize_t n_rows = row_ids.shape[0], n_keep = keep_ids.shape[0], i, count = 0
    out = np.empty(n_rows, dtype=np.int64)
    cdef int64_t[::1] out_v = out
    if n_keep == 0 or n_rows == 0:
        return out[:0]
    cdef int64_t* keep = <int64_t*>malloc(n_keep * sizeof(int64_t))
    if keep == NULL:
        raise MemoryError()
    try:
        with nogil:
            for i in range(n_keep):
                keep[i] = keep_ids[i]
            qsort(keep, n_keep, sizeof(int64_t), _cmp_int64)
            for i in range(n_rows):
                if _contains(keep, n_keep, row_ids[i]):
                    out_v[count] = i
                    count += 1
    finally:
        free(keep)
    return out[:count]


def concat_layout(const int64_t[::1] widths, const int64_t[::1] sizes):
    """Where each batch lands when batches are concatenated (the row plan).

    Returns ``(row_starts, width)``: batch ``i`` fills rows
    ``row_starts[i] : row_starts[i] + sizes[i]``; ``row_starts`` has one extra final entry,
    the total number of rows. ``width`` is the common width, the largest of ``widths``.
    """
    cdef Py_ssize_t n = widths.shape[0], i
    if sizes.shape[0] != n:
        raise ValueError(f"widths and sizes differ in length: {n} != {sizes.shape[0]}")
    starts = np.empty(n + 1, dtype=np.int64)
    cdef int64_t[::1] starts_v = starts
    cdef int64_t width = 0, total = 0
    with nogil:
        for i in range(n):
            if widths[i] > width:
                width = widths[i]
            starts_v[i] = total
            total += sizes[i]
        starts_v[n] = total
    return starts, int(width)


def compact_plan(const int64_t[::1] keep, Py_ssize_t n_rows):
    """The move plan of ``CausalLMBatch.filter`` over slot ``0 .. n_rows - 1``.

    ``keep`` lists the kept rows' positions (ascending, unique, in ``[0, n_rows)``). Kept rows
    past the first ``len(keep)`` slots move into the freed slots below, lowest first.
    Returns ``(order, dst, src)``: ``order[i]`` is the old position of the row that ends
    in slot ``i``; the moves are ``src[j] -> dst[j]`` (``dst < len(keep) <= src``).
    """
    cdef Py_ssize_t n_keep = keep.shape[0], i, k, n_moves = 0, hole = 0
    cdef bint bad = False
    order = np.empty(n_keep, dtype=np.int64)
    dst = np.empty(n_keep, dtype=np.int64)
    src = np.empty(n_keep, dtype=np.int64)
    cdef int64_t[::1] order_v = order
    cdef int64_t[::1] dst_v = dst
    cdef int64_t[::1] src_v = src
    with nogil:
        for i in range(n_keep):
            if keep[i] < 0 or keep[i] >= n_rows or (i > 0 and keep[i] <= keep[i - 1]):
                bad = True
                break
            order_v[i] = i
        if not bad:
            # ``keep`` is ascending: the kept positions below n_keep are its first entries,
            # the movers its last ones; the holes are the gaps among 0 .. n_keep - 1.
            k = 0
            for i in range(n_keep):
                if k < n_keep and keep[k] == i:
                    k += 1
                else:
                    dst_v[n_moves] = i
                    n_moves += 1
            for i in range(n_moves):
                src_v[i] = keep[n_keep - n_moves + i]
                order_v[dst_v[i]] = src_v[i]
    if bad:
        raise ValueError("keep must hold unique positions in [0, n_rows), ascending")
    return order, dst[:n_moves], src[:n_moves]


def align_index(const int64_t[::1] lengths, Py_ssize_t width):
    """``[B, width]`` gather index that left-aligns right-aligned rows.

    Row ``r`` of a left-padded ``width``-column array has ``lengths[r]`` real cells at the
    right; gathering columns ``index[r]`` moves them to columns ``0 .. lengths[r] - 1``
    (the padding cells rotate to the right). Lengths must be in ``[0, width]``.
    """
    cdef Py_ssize_t n = lengths.shape[0], r, j, shift
    out = np.empty((n, width), dtype=np.int64)
    cdef int64_t[:, ::1] out_v = out
    cdef Py_ssize_t bad = -1
    with nogil:
        for r in range(n):
            if lengths[r] < 0 or lengths[r] > width:
                bad = r
                break
            shift = width - lengths[r]
            for j in range(lengths[r]):
                out_v[r, j] = shift + j
            for j in range(lengths[r], width):
                out_v[r, j] = j - lengths[r]
    if bad >= 0:
        raise ValueError(f"length {lengths[bad]} is outside [0, {width}]")
    return out


def finish_codes(
    const int64_t[::1] new_tokens,
    const int64_t[::1] generated,
    const int64_t[::1] max_new,
    const int64_t[::1] eos_ids,
):
    """Per row: 0 keep going, 1 the new token is an end-of-sequence id, 2 length reached.

    ``generated`` counts tokens generated so far including ``new_tokens``; EOS wins over
    length when both hold.
    """
    cdef Py_ssize_t n = new_tokens.shape[0], n_eos = eos_ids.shape[0], i, k
    if generated.shape[0] != n or max_new.shape[0] != n:
        raise ValueError("new_tokens, generated and max_new must have the same length")
    out = np.zeros(n, dtype=np.int8)
    cdef int8_t[::1] out_v = out
    with nogil:
        for i in range(n):
            for k in range(n_eos):
                if new_tokens[i] == eos_ids[k]:
                    out_v[i] = 1
                    break
            if out_v[i] == 0 and generated[i] >= max_new[i]:
                out_v[i] = 2
    return out


def match_stop_ids(
    const int64_t[:, ::1] tails,
    const int64_t[::1] tail_lens,
    const int64_t[::1] stop_tokens,
    const int64_t[::1] stop_offsets,
    const int64_t[::1] stop_rows,
):
    """For each row, the first stop sequence (over token ids) its tail ends with, else -1.

    ``tails[r]`` holds row ``r``'s last generated tokens right-aligned, ``tail_lens[r]`` of
    them valid. Stop sequence ``s`` is ``stop_tokens[stop_offsets[s]:stop_offsets[s + 1]]``
    and belongs to row ``stop_rows[s]``. Empty stop sequences never match.
    """
    cdef Py_ssize_t n_rows = tails.shape[0], width = tails.shape[1]
    cdef Py_ssize_t n_stops = stop_rows.shape[0], s, r, k, length, begin
    if tail_lens.shape[0] != n_rows:
        raise ValueError("tail_lens must have one entry per row of tails")
    if stop_offsets.shape[0] != n_stops + 1:
        raise ValueError("stop_offsets must have one more entry than stop_rows")
    out = np.full(n_rows, -1, dtype=np.int64)
    cdef int64_t[::1] out_v = out
    cdef bint ok
    with nogil:
        for s in range(n_stops):
            r = stop_rows[s]
            if r < 0 or r >= n_rows or out_v[r] >= 0:
                continue
            begin = stop_offsets[s]
            length = stop_offsets[s + 1] - begin
            if length <= 0 or length > tail_lens[r] or length > width:
                continue
            ok = True
            for k in range(length):
                if tails[r, width - length + k] != stop_tokens[begin + k]:
                    ok = False
                    break
            if ok:
                out_v[r] = s
    return out
