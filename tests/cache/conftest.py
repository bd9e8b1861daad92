"""Shared fixtures: one embedder per session, a real redis-server, request builders."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cachehelpers import free_port

from optiserve.cache.config import CacheConfig
from optiserve.cache.embedder import Embedder
from optiserve.cache.response_cache import ResponseCache

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Embedder:
    """MiniLM loaded once for the whole session (ONNX export cached in a session folder)."""
    return Embedder(onnx_dir=tmp_path_factory.mktemp("onnx"))


@pytest.fixture
def make_cache(embedder: Embedder, tmp_path: Path) -> Iterator[object]:
    """Factory: ``make_cache(**config_fields)`` opens a cache under ``tmp_path``."""
    opened: list[ResponseCache] = []

    def factory(data_dir: Path | None = None, **fields: object) -> ResponseCache:
        cache = ResponseCache.open(
            CacheConfig(**fields),  # type: ignore[arg-type]
            data_dir or tmp_path,
            embedder=embedder,
        )
        opened.append(cache)
        return cache

    yield factory
    for cache in opened:
        cache.close()


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A real redis-server on a free 127.0.0.1 port, stopped after the test."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server); CI has it")
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
