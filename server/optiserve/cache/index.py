"""FAISS inner-product vector indexes with add and remove by id, one per partition.

Vectors are L2-normalised, so inner product is cosine similarity. A partition's index is
exact (``IndexFlatIP`` behind an ``IndexIDMap2``) until it holds ``flat_max_entries``
vectors, then it is rebuilt as HNSW (``IndexHNSWFlat``). The crossover and HNSW's recall@1
and latency are measured by ``benchmarks/index_1m.py`` (``--n``, ``--kind flat|hnsw``).
HNSW cannot delete, so removals there are tombstones filtered out of results and the graph
is rebuilt when a quarter of it is dead. GPU FAISS is used for flat indexes when the
installed faiss has GPU support and a GPU is present (same answers: exact search); the
:class:`VectorIndex` owns the GPU resources and the log says which.

Nothing here changes process-wide state. The OpenMP team size of FAISS calls is a setting
of each OS thread; :func:`set_openmp_threads` is what the cache's worker threads run once
when they start (the pool's ``initializer``). FAISS's one process-wide knob the server
sets (``distance_compute_blas_threshold``) is applied by the app at start
(:mod:`optiserve.process_settings`).
"""

from __future__ import annotations

import ctypes
import logging
import sys
import threading
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]


def set_openmp_threads(threads: int) -> None:
    """Set the OpenMP team size of the FAISS calls the calling thread makes.

    OpenMP keeps this setting per OS thread (a new thread starts at ``OMP_NUM_THREADS`` or
    one per core), so the cache's thread pool runs this once in each worker as it starts.
    The cache's default is one thread: a search of one query gains nothing from a team,
    and the team's idle members spin-wait after each parallel region (perf on the server
    under semantic hits showed libgomp's spin-wait among its top CPU samples), taking CPU
    from the gRPC and embedding threads. Compare with ``benchmarks/cache_latency.py
    --faiss-threads``.
    """
    faiss.omp_set_num_threads(max(1, int(threads)))


def gpu_resources(use_gpu: bool) -> Any:
    """New GPU FAISS resources, or None when not asked for, not built with GPU or no GPU."""
    if use_gpu and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        return faiss.StandardGpuResources()
    return None


@dataclass(frozen=True)
class IndexParams:
    """How partition indexes are built."""

    dim: int = 384
    flat_max_entries: int = 4096
    hnsw_m: int = 32
    hnsw_ef_search: int = 96
    hnsw_ef_construction: int = 80
    use_gpu: bool = True
    #: Put HNSW vectors and graph on transparent huge pages (:func:`advise_huge_pages`).
    huge_pages: bool = True


def new_hnsw(params: IndexParams) -> faiss.Index:
    """An empty HNSW inner-product index with ids (``IndexIDMap2``)."""
    hnsw = faiss.IndexHNSWFlat(params.dim, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = params.hnsw_ef_construction
    hnsw.hnsw.efSearch = params.hnsw_ef_search
    return faiss.IndexIDMap2(hnsw)


#: Transparent huge page size and the madvise advice numbers (Linux).
_HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14
_MADV_COLLAPSE = 25


def _hnsw_buffers(index: faiss.Index) -> list[npt.NDArray[Any]]:
    """Views of an HNSW index's vectors and graph (the memory a search walks at random)."""
    inner = faiss.downcast_index(getattr(index, "index", index))
    if not isinstance(inner, faiss.IndexHNSW):
        return []
    storage = faiss.downcast_index(inner.storage)
    buffers: list[npt.NDArray[Any]] = []
    for vector in (getattr(storage, "codes", None), getattr(inner.hnsw, "neighbors", None)):
        if vector is not None and vector.size() > 0:
            buffers.append(faiss.rev_swig_ptr(vector.data(), vector.size()))
    return buffers


def advise_huge_pages(index: faiss.Index) -> int:
    """Back an HNSW index's vectors and graph with transparent huge pages; bytes advised.

    A search touches a few hundred vectors scattered over the whole index: with 4 KiB pages
    nearly each is a TLB miss. FAISS allocates with plain malloc, which the kernel's default
    THP mode ("madvise") leaves on 4 KiB pages, so the buffers are advised (MADV_HUGEPAGE)
    and collapsed at once (MADV_COLLAPSE, Linux 6.1+). The effect on lookup latency is
    measured by ``benchmarks/index_1m.py`` (run it with and without ``--no-huge-pages``);
    the results are the same. Anywhere else (no Linux, older kernel) this does nothing.
    """
    if not sys.platform.startswith("linux"):
        return 0
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        madvise.restype = ctypes.c_int
    except (OSError, AttributeError):
        return 0
    advised = 0
    for buffer in _hnsw_buffers(index):
        address = int(buffer.ctypes.data)
        start = (address + _HUGE_PAGE - 1) & ~(_HUGE_PAGE - 1)
        end = (address + buffer.nbytes) & ~(_HUGE_PAGE - 1)
        if end - start < _HUGE_PAGE:
            continue
        if madvise(start, end - start, _MADV_HUGEPAGE) != 0:
            logger.debug("madvise(MADV_HUGEPAGE) failed: errno %d", ctypes.get_errno())
            continue
        if madvise(start, end - start, _MADV_COLLAPSE) != 0:  # else khugepaged, later
            logger.debug("madvise(MADV_COLLAPSE) failed: errno %d", ctypes.get_errno())
        advised += end - start
    return advised


def set_ef_search(index: faiss.Index, ef_search: int) -> None:
    """Set the search breadth of an HNSW index wrapped in an id map."""
    inner = faiss.downcast_index(index.index)  # type: ignore[attr-defined]
    if isinstance(inner, faiss.IndexHNSW):
        inner.hnsw.efSearch = ef_search


class PartitionIndex:
    """One partition's vectors: exact below ``flat_max_entries``, HNSW above. Thread-safe.

    ``gpu`` is the GPU FAISS resources its flat index runs on (None: CPU); the
    :class:`VectorIndex` that owns the partition owns them.
    """

    def __init__(self, params: IndexParams, gpu: Any = None) -> None:
        self.params = params
        self._lock = threading.Lock()
        self._vectors: dict[int, FloatArray] = {}
        self._dead: set[int] = set()
        self._hnsw = False
        #: Vectors the HNSW graph held when its memory was last put on huge pages.
        self._advised = 0
        #: Bytes of the HNSW graph put on huge pages at the last advice (0: none).
        self.huge_page_bytes = 0
        self._gpu_resources = gpu
        self._gpu = gpu is not None
        self._index = self._new_flat()

    @classmethod
    def adopt(
        cls,
        params: IndexParams,
        index: faiss.Index,
        ids: npt.NDArray[np.int64],
        vectors: FloatArray,
    ) -> PartitionIndex:
        """A CPU partition around an index already built from ``vectors`` under ``ids``, as
        :meth:`add` builds one: ``new_hnsw(params)``, or an ``IndexFlatIP`` behind an
        ``IndexIDMap2``, filled with ``add_with_ids``.

        For benchmarks, which load a saved large graph instead of building it again. The
        partition keeps views of ``vectors`` for its later rebuilds.
        """
        inner = faiss.downcast_index(getattr(index, "index", index))
        hnsw = isinstance(inner, faiss.IndexHNSW)
        if not isinstance(index, faiss.IndexIDMap2) or not (
            hnsw or isinstance(inner, faiss.IndexFlatIP)
        ):
            raise ValueError(
                "adopt takes an HNSW (new_hnsw) or IndexFlatIP index behind an IndexIDMap2"
            )
        if index.ntotal != len(ids) or len(ids) != len(vectors):
            raise ValueError(
                f"the index holds {index.ntotal} vectors; {len(ids)} ids and "
                f"{len(vectors)} vectors were given"
            )
        partition = cls(params)
        partition._vectors = {int(i): v for i, v in zip(ids, vectors, strict=True)}
        partition._index = index
        partition._hnsw = hnsw
        if hnsw:
            set_ef_search(index, params.hnsw_ef_search)
            partition._advise_locked()
        return partition

    def _new_flat(self) -> faiss.Index:
        flat = faiss.IndexFlatIP(self.params.dim)
        if self._gpu:
            return faiss.IndexIDMap(faiss.index_cpu_to_gpu(self._gpu_resources, 0, flat))
        return faiss.IndexIDMap2(flat)

    @property
    def _tombstones(self) -> bool:
        """HNSW and GPU indexes cannot delete in place: removals are filtered, then rebuilt."""
        return self._hnsw or self._gpu

    def __len__(self) -> int:
        return len(self._vectors)

    @property
    def kind(self) -> str:
        """ "hnsw" or "flat"."""
        return "hnsw" if self._hnsw else "flat"

    def add(self, ids: npt.NDArray[np.int64], vectors: FloatArray) -> None:
        """Add vectors under ids (an id already present is replaced)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.params.dim)
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        with self._lock:
            present = [int(i) for i in ids if int(i) in self._vectors]
            if present:
                self._remove_locked(present)
            for i, v in zip(ids, vectors, strict=True):
                self._vectors[int(i)] = v
                self._dead.discard(int(i))
            if not self._hnsw and len(self._vectors) > self.params.flat_max_entries:
                self._rebuild_locked(hnsw=True)
            else:
                self._index.add_with_ids(vectors, ids)
                if self._hnsw and len(self._vectors) >= 2 * self._advised:
                    # The graph's buffers were reallocated as it grew: advise them again
                    # (at each doubling, so the cost per added vector stays constant).
                    self._advise_locked()

    def remove(self, ids: list[int]) -> None:
        """Remove ids (unknown ids are ignored)."""
        with self._lock:
            self._remove_locked([i for i in ids if i in self._vectors])

    def _remove_locked(self, ids: list[int]) -> None:
        if not ids:
            return
        for i in ids:
            self._vectors.pop(i, None)
        if self._tombstones:
            self._dead.update(ids)
            if len(self._dead) > max(1000, len(self._vectors) // 4):
                self._rebuild_locked(hnsw=self._hnsw)
        else:
            self._index.remove_ids(faiss.IDSelectorBatch(np.asarray(ids, dtype=np.int64)))

    def _rebuild_locked(self, *, hnsw: bool) -> None:
        index = new_hnsw(self.params) if hnsw else self._new_flat()
        if self._vectors:
            ids = np.fromiter(self._vectors.keys(), dtype=np.int64, count=len(self._vectors))
            index.add_with_ids(np.stack(list(self._vectors.values())), ids)
        self._index = index
        self._dead.clear()
        if hnsw and not self._hnsw:
            logger.info("semantic cache partition grew past %d: now HNSW", len(self._vectors))
        self._hnsw = hnsw
        if hnsw:
            self._advise_locked()

    def _advise_locked(self) -> None:
        self._advised = max(1, len(self._vectors))
        if self.params.huge_pages:
            self.huge_page_bytes = advise_huge_pages(self._index)

    def search(self, vector: FloatArray, k: int = 1) -> list[tuple[int, float]]:
        """Up to ``k`` (id, cosine) pairs, best first."""
        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, self.params.dim)
        with self._lock:
            if not self._vectors:
                return []
            want = k + len(self._dead) if self._tombstones else k
            scores, ids = self._index.search(query, min(want, max(k, 1) + 64))
            dead = self._dead
        out: list[tuple[int, float]] = []
        for i, s in zip(ids[0], scores[0], strict=True):
            if i < 0 or int(i) in dead:
                continue
            out.append((int(i), float(s)))
            if len(out) == k:
                break
        return out


class VectorIndex:
    """Partition name -> :class:`PartitionIndex`; never searches across partitions.

    Owns the GPU FAISS resources its partitions' flat indexes share (when ``use_gpu`` is
    set, the installed faiss has GPU support and a GPU is present).
    """

    def __init__(self, params: IndexParams) -> None:
        self.params = params
        self._partitions: dict[str, PartitionIndex] = {}
        self._lock = threading.Lock()
        self._gpu_resources = gpu_resources(params.use_gpu)
        if self._gpu_resources is not None:
            logger.info("semantic cache: FAISS on GPU (%d GPUs)", faiss.get_num_gpus())
        else:
            logger.info("semantic cache: FAISS on CPU (not asked for, no GPU build or no GPU)")

    @property
    def gpu(self) -> bool:
        """True when flat partitions run on GPU FAISS."""
        return self._gpu_resources is not None

    def __len__(self) -> int:
        return sum(len(p) for p in list(self._partitions.values()))

    def add(self, partition: str, entry_id: int, vector: FloatArray) -> None:
        """Index ``vector`` under ``entry_id`` in ``partition``."""
        with self._lock:
            index = self._partitions.get(partition)
            if index is None:
                index = self._partitions[partition] = PartitionIndex(
                    self.params, self._gpu_resources
                )
        index.add(np.asarray([entry_id], dtype=np.int64), vector)

    def remove(self, partition: str, entry_id: int) -> None:
        """Drop ``entry_id`` from ``partition``; an empty partition is forgotten."""
        with self._lock:
            index = self._partitions.get(partition)
            if index is None:
                return
            index.remove([entry_id])
            if len(index) == 0:
                del self._partitions[partition]

    def search(self, partition: str, vector: FloatArray, k: int = 1) -> list[tuple[int, float]]:
        """Best ``k`` (id, cosine) matches inside ``partition`` only."""
        index = self._partitions.get(partition)
        return index.search(vector, k) if index is not None else []

    def partitions(self) -> int:
        """Number of non-empty partitions."""
        return len(self._partitions)
