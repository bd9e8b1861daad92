"""Type stubs for the Cython extension ``optiserve._batching`` (twin: ``_batching_py``)."""

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

Int64Array = npt.NDArray[np.int64]

def collate(
    seqs: Sequence[Sequence[int]], pad_id: int, left_pad: bool = True, pad_to: int = 0
) -> tuple[Int64Array, Int64Array, Int64Array]: ...
