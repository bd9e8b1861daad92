"""Token bookkeeping for batching: the Cython extension, or its pure-Python twin.

``OPTISERVE_NO_EXTENSIONS=1`` selects the twin (``optiserve._batching_py``); so does a
build without extensions. ``IMPLEMENTATION`` says which one is in use.
"""

from __future__ import annotations

import os
from types import ModuleType

from optiserve import _batching_py


def _load() -> ModuleType:
    if os.environ.get("OPTISERVE_NO_EXTENSIONS", "") in ("1", "true", "yes"):
        return _batching_py
    try:
        from optiserve import _batching
    except ImportError:
        return _batching_py
    return _batching


_impl = _load()
IMPLEMENTATION = "cython" if _impl is not _batching_py else "python"
collate = _impl.collate

__all__ = ["IMPLEMENTATION", "collate"]
