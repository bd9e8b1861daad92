"""Pure-Python/numpy twin of the Cython module ``optiserve._batching``.

Same functions, same results; selected with ``OPTISERVE_NO_EXTENSIONS=1`` or when the
extension is not built. The tests run against both.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

Int64Array = npt.NDArray[np.int64]


def collate(
    seqs: Sequence[Sequence[int]], pad_id: int, left_pad: bool = True, pad_to: int = 0
) -> tuple[Int64Array, Int64Array, Int64Array]:
    """Pad token lists into ``(input_ids, attention_mask, position_ids)``, each ``[B, L]``.

    ``L = max(max(len(s)), pad_to)``. Real tokens have mask 1 and positions 0..len-1;
    padding has ``pad_id``, mask 0 and position 0. ``left_pad`` puts padding first (the
    layout decoder-only generation needs), otherwise last.
    """
    width = max([len(s) for s in seqs] + [pad_to, 0])
    batch = len(seqs)
    ids = np.full((batch, width), pad_id, dtype=np.int64)
    mask = np.zeros((batch, width), dtype=np.int64)
    pos = np.zeros((batch, width), dtype=np.int64)
    for row, seq in enumerate(seqs):
        n = len(seq)
        start = width - n if left_pad else 0
        for j in range(n):
            ids[row, start + j] = seq[j]
            mask[row, start + j] = 1
            pos[row, start + j] = j
    return ids, mask, pos
