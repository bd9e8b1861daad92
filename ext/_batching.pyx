# cython: language_level=3
"""Cython token bookkeeping for continuous batching (twin: ``optiserve._batching_py``).

Every function here has a pure-Python/numpy twin with the same signature and results;
``optiserve.batching`` picks one. Inner loops touch only C integers and typed memoryviews
(the list fast path of :func:`collate` reads borrowed item pointers without refcounting).
"""

import numpy as np

cimport cython
from libc.stdint cimport int8_t, int64_t
from libc.stdlib cimport free, malloc, qsort
from cpython.ref cimport PyObject


cdef extern from "Python.h":
    PyObject* PyList_GET_ITEM(PyObject* lst, Py_ssize_t i)
    PyObject* PyTuple_GET_ITEM(PyObject* tup, Py_ssize_t i)
    Py_ssize_t PyList_GET_SIZE(PyObject* lst)
    Py_ssize_t PyTuple_GET_SIZE(PyObject* tup)
    long long PyLong_AsLongLong(PyObject* obj) except? -1


cdef inline void _fill_row(
    int64_t[:, ::1] ids_v, int64_t[:, ::1] mask_v, int64_t[:, ::1] pos_v,
    Py_ssize_t row, Py_ssize_t n, Py_ssize_t width, int64_t pad_id, bint left_pad,
) noexcept nogil:
    """Write the padding cells of one row (the token cells are written by the caller)."""
    cdef Py_ssize_t j, start = width - n if left_pad else 0
    cdef Py_ssize_t pad_lo = 0 if left_pad else n
    cdef Py_ssize_t pad_hi = width - n if left_pad else width
    for j in range(pad_lo, pad_hi):
        ids_v[row, j] = pad_id
        mask_v[row, j] = 0
        pos_v[row, j] = 0
    for j in range(n):
        mask_v[row, start + j] = 1
        pos_v[row, start + j] = j


def collate(seqs, int64_t pad_id, bint left_pad=True, Py_ssize_t pad_to=0):
    """Pad token lists into ``(input_ids, attention_mask, position_ids)``, each ``[B, L]``.

    ``L = max(max(len(s)), pad_to)``. Real tokens have mask 1 and positions 0..len-1;
    padding has ``pad_id``, mask 0 and position 0. ``left_pad`` puts padding first.
    Rows may be lists or tuples of ints (read without creating objects) or int arrays.
    """
    cdef Py_ssize_t batch = len(seqs)
    cdef Py_ssize_t width = pad_to if pad_to > 0 else 0
    cdef Py_ssize_t row, j, n, start
    cdef const int64_t[::1] src
    cdef PyObject* obj
    cdef list rows = list(seqs)
    cdef Py_ssize_t[::1] lens = np.empty(batch, dtype=np.intp)
    for row in range(batch):
        n = len(rows[row])
        lens[row] = n
        if n > width:
            width = n
    ids = np.empty((batch, width), dtype=np.int64)
    mask = np.empty((batch, width), dtype=np.int64)
    pos = np.empty((batch, width), dtype=np.int64)
    cdef int64_t[:, ::1] ids_v = ids
    cdef int64_t[:, ::1] mask_v = mask
    cdef int64_t[:, ::1] pos_v = pos
    for row in range(batch):
        n = lens[row]
        start = width - n if left_pad else 0
        seq = rows[row]
        obj = <PyObject*>seq
        if type(seq) is list:
            for j in range(n):
                ids_v[row, start + j] = PyLong_AsLongLong(PyList_GET_ITEM(obj, j))
        elif type(seq) is tuple:
            for j in range(n):
                ids_v[row, start + j] = PyLong_AsLongLong(PyTuple_GET_ITEM(obj, j))
        else:
            src = np.ascontiguousarray(seq, dtype=np.int64)
            with nogil:
                for j in range(n):
                    ids_v[row, start + j] = src[j]
        with nogil:
            _fill_row(ids_v, mask_v, pos_v, row, n, width, pad_id, left_pad)
    return ids, mask, pos


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
    """Where each batch lands when batches are concatenated (the scatter plan).

    Returns ``(row_starts, col_offsets, width)``: batch ``i`` fills rows
    ``row_starts[i] : row_starts[i] + sizes[i]`` and, right-aligned in the common ``width``
    (the largest), columns ``col_offsets[i]:``. ``row_starts`` has one extra final entry,
    the total number of rows.
    """
    cdef Py_ssize_t n = widths.shape[0], i
    if sizes.shape[0] != n:
        raise ValueError(f"widths and sizes differ in length: {n} != {sizes.shape[0]}")
    starts = np.empty(n + 1, dtype=np.int64)
    offsets = np.empty(n, dtype=np.int64)
    cdef int64_t[::1] starts_v = starts
    cdef int64_t[::1] offsets_v = offsets
    cdef int64_t width = 0, total = 0
    with nogil:
        for i in range(n):
            if widths[i] > width:
                width = widths[i]
        for i in range(n):
            starts_v[i] = total
            total += sizes[i]
            offsets_v[i] = width - widths[i]
        starts_v[n] = total
    return starts, offsets, int(width)


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
