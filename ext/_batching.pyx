# cython: language_level=3
"""Cython token bookkeeping for continuous batching (twin: optiserve._batching_py)."""

import numpy as np

cimport cython
from libc.stdint cimport int64_t


def collate(seqs, int64_t pad_id, bint left_pad=True, Py_ssize_t pad_to=0):
    """Pad token lists into (input_ids, attention_mask, position_ids), each [B, L]."""
    cdef Py_ssize_t batch = len(seqs)
    cdef Py_ssize_t width = pad_to
    cdef Py_ssize_t row, j, n, start
    cdef const int64_t[::1] src
    arrays = [np.ascontiguousarray(s, dtype=np.int64) for s in seqs]
    for a in arrays:
        if a.shape[0] > width:
            width = a.shape[0]
    ids = np.full((batch, width), pad_id, dtype=np.int64)
    mask = np.zeros((batch, width), dtype=np.int64)
    pos = np.zeros((batch, width), dtype=np.int64)
    cdef int64_t[:, ::1] ids_v = ids
    cdef int64_t[:, ::1] mask_v = mask
    cdef int64_t[:, ::1] pos_v = pos
    for row in range(batch):
        src = arrays[row]
        n = src.shape[0]
        start = width - n if left_pad else 0
        for j in range(n):
            ids_v[row, start + j] = src[j]
            mask_v[row, start + j] = 1
            pos_v[row, start + j] = j
    return ids, mask, pos
