"""Token bookkeeping for batching: the Cython extension, or its pure-Python twin.

``OPTISERVE_NO_EXTENSIONS=1`` selects the twin (``optiserve._batching_py``); so does a
build without extensions. ``IMPLEMENTATION`` says which one is in use. The functions:

* :func:`collate` pads token lists into ids, attention mask and position ids;
* :func:`filter_indices` finds the rows ``CausalLMBatch.filter`` keeps;
* :func:`compact_plan` is its move plan (which kept rows refill which freed slots);
* :func:`concat_layout` is the row plan of ``CausalLMBatch.concatenate``;
* :func:`align_index` is the gather index that left-aligns prefilled KV rows into slots;
* :func:`finish_codes` flags rows that produced an end-of-sequence id or hit their length;
* :func:`match_stop_ids` matches per-row stop sequences over token ids.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import ModuleType

from optiserve import _batching_py


def extensions_disabled(environ: Mapping[str, str] = os.environ) -> bool:
    """True when ``OPTISERVE_NO_EXTENSIONS`` asks for the pure-Python twins."""
    return environ.get("OPTISERVE_NO_EXTENSIONS", "").lower() in ("1", "true", "yes")


def _load() -> ModuleType:
    if extensions_disabled():
        return _batching_py
    try:
        from optiserve import _batching
    except ImportError:
        return _batching_py
    return _batching


_impl = _load()
IMPLEMENTATION = "cython" if _impl is not _batching_py else "python"
collate = _impl.collate
filter_indices = _impl.filter_indices
concat_layout = _impl.concat_layout
compact_plan = _impl.compact_plan
align_index = _impl.align_index
finish_codes = _impl.finish_codes
match_stop_ids = _impl.match_stop_ids

__all__ = [
    "IMPLEMENTATION",
    "align_index",
    "collate",
    "compact_plan",
    "concat_layout",
    "extensions_disabled",
    "filter_indices",
    "finish_codes",
    "match_stop_ids",
]
