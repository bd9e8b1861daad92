"""Type stubs for the Cython extension ``optiserve._batching`` (twin: ``_batching_py``)."""

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

Int64Array = npt.NDArray[np.int64]
Int8Array = npt.NDArray[np.int8]

def collate(
    seqs: Sequence[Sequence[int] | Int64Array], pad_id: int
) -> tuple[Int64Array, Int64Array, Int64Array]: ...
def filter_indices(row_ids: Int64Array, keep_ids: Int64Array) -> Int64Array: ...
def concat_layout(widths: Int64Array, sizes: Int64Array) -> tuple[Int64Array, int]: ...
def compact_plan(keep: Int64Array, n_rows: int) -> tuple[Int64Array, Int64Array, Int64Array]: ...
def align_index(lengths: Int64Array, width: int) -> Int64Array: ...
def finish_codes(
    new_tokens: Int64Array, generated: Int64Array, max_new: Int64Array, eos_ids: Int64Array
) -> Int8Array: ...
def match_stop_ids(
    tails: Int64Array,
    tail_lens: Int64Array,
    stop_tokens: Int64Array,
    stop_offsets: Int64Array,
    stop_rows: Int64Array,
) -> Int64Array: ...
