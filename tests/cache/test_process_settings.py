"""Process-wide settings are the app's, applied once from config; the cache never changes
them (torch's intra-op threads, FAISS's BLAS threshold)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import faiss
import pytest
import torch

from optiserve.app import ServerThread
from optiserve.cache.embedder import Embedder
from optiserve.config import Config
from optiserve_client import Client

#: The engine's torch threads in these tests: neither the embedder's 1 nor a core count.
ENGINE_THREADS = 3


def torch_threads_of_a_new_thread() -> int:
    """torch's intra-op threads as a thread starting now sees them.

    torch keeps the count per thread once a thread has run torch; a new thread adopts the
    process-wide value last set by ``torch.set_num_threads`` (on any thread). That value is
    what the app sets and what the embedder used to overwrite.
    """
    seen: list[int] = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return seen[0]


@pytest.fixture
def keep_torch_threads() -> Iterator[None]:
    """Put the process-wide torch thread count back after the test."""
    before = torch_threads_of_a_new_thread()
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("keep_torch_threads")
def test_server_keeps_the_engine_torch_threads_through_the_cache(
    make_config: Callable[..., Config],
) -> None:
    config = make_config(cache={"enabled": True, "embedder_threads": 1})
    config = replace(config, engine=replace(config.engine, torch_threads=ENGINE_THREADS))
    # A fresh data directory: the first start exports the embedder to ONNX through torch.
    assert not (Path(config.data_dir) / "onnx").exists()
    server = ServerThread(config)
    server.start()
    try:
        cache = server.app.cache
        assert cache is not None and cache.embedder is not None
        assert cache.embedder.backend.startswith("onnx")
        assert any((Path(config.data_dir) / "onnx").iterdir())
        assert torch_threads_of_a_new_thread() == ENGINE_THREADS
        assert faiss.cvar.distance_compute_blas_threshold == config.cache.faiss_blas_threshold
        with Client(server.target, timeout=60) as client:
            first = client.generate("How do I reverse a list in Python?", max_new_tokens=6)
            server.wait_for_cache_writes()
            hit = client.generate("How can I reverse a list in Python?", max_new_tokens=6)
        assert first.provider == "local"
        assert hit.provider == "cache", hit.cache
        assert [c["layer"] for c in hit.cache][-1] == "semantic"
        assert torch_threads_of_a_new_thread() == ENGINE_THREADS
    finally:
        server.stop()


@pytest.mark.usefixtures("keep_torch_threads")
def test_torch_embedder_uses_the_process_torch_threads(embedder: Embedder) -> None:
    torch.set_num_threads(ENGINE_THREADS)
    torch_embedder = Embedder(threads=1, backend="torch")
    assert torch_embedder.backend == "torch"
    vector = torch_embedder.embed("How do I reset my password?")
    assert float(vector @ embedder.embed("How do I reset my password?")) > 0.98
    assert torch.get_num_threads() == ENGINE_THREADS
    assert torch_threads_of_a_new_thread() == ENGINE_THREADS


@pytest.mark.usefixtures("keep_torch_threads")
def test_onnx_export_uses_the_process_torch_threads(tmp_path: Path) -> None:
    torch.set_num_threads(ENGINE_THREADS)
    exported = Embedder(threads=1, onnx_dir=tmp_path, quantize="none")
    assert exported.backend == "onnx"
    assert list(tmp_path.glob("embedder-*.onnx"))
    assert torch.get_num_threads() == ENGINE_THREADS
    assert torch_threads_of_a_new_thread() == ENGINE_THREADS
