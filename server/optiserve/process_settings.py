"""The process-wide settings of the libraries the server runs, applied once, at start.

Some library settings belong to the whole process, not to one object: torch's intra-op
thread count (``torch.set_num_threads``: a global that every thread adopts the first time
it runs torch) and FAISS's ``distance_compute_blas_threshold``. The app applies them here,
from the configuration, before it loads models or opens the cache, and logs them; no
library module changes them afterwards (the embedder's ``threads`` is its own ONNX Runtime
session's, the cache's FAISS OpenMP team size is set on each cache worker thread as it
starts: OpenMP keeps that per thread, see :func:`optiserve.cache.index.set_openmp_threads`).

Benchmarks that run the cache or the models in process call :func:`apply_process_settings`
too, so they measure what the server runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from optiserve.config import Config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessSettings:
    """What :func:`apply_process_settings` applied (and logged)."""

    #: torch intra-op threads (``[engine] torch_threads``).
    torch_threads: int
    #: ``faiss.cvar.distance_compute_blas_threshold`` (``[cache] faiss_blas_threshold``).
    faiss_blas_threshold: int
    #: OpenMP threads per FAISS call on each cache worker thread (``[cache] faiss_threads``;
    #: applied by the cache's threads, reported here).
    faiss_threads: int


def apply_process_settings(config: Config) -> ProcessSettings:
    """Apply the process-wide library settings of ``config`` once; return and log them."""
    import faiss
    import torch

    settings = ProcessSettings(
        torch_threads=config.engine.torch_threads,
        faiss_blas_threshold=config.cache.faiss_blas_threshold,
        faiss_threads=max(1, config.cache.faiss_threads),
    )
    torch.set_num_threads(settings.torch_threads)
    faiss.cvar.distance_compute_blas_threshold = settings.faiss_blas_threshold
    log.info(
        "process settings applied",
        extra={
            "torch_threads": settings.torch_threads,
            "faiss_blas_threshold": settings.faiss_blas_threshold,
            "faiss_threads_per_cache_thread": settings.faiss_threads,
        },
    )
    return settings
