"""Fixtures of the accounting tests: an injected clock and real redis-servers on loopback."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from .helpers import Clock, free_port


@pytest.fixture
def clock() -> Clock:
    """A clock pinned to the start of the test (budget periods never change under it)."""
    return Clock(datetime.now(UTC))


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture
def start_redis(tmp_path: Path) -> Iterator[Callable[[int], str]]:
    """``start_redis(port)`` runs a real redis-server on 127.0.0.1:port and returns its URL;
    every server started is stopped after the test."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (`make system-deps` installs it); CI has it")
    started: list[subprocess.Popen[bytes]] = []

    def start(port: int) -> str:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(tmp_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        started.append(proc)
        deadline = time.monotonic() + 10
        while not _answers(port):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)
        return f"redis://127.0.0.1:{port}/0"

    yield start
    for proc in started:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def redis_url(start_redis: Callable[[int], str]) -> str:
    """The URL of a fresh redis-server on a free loopback port."""
    return start_redis(free_port())
