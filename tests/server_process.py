"""A server in its own process (`python -m optiserve serve --config FILE`), for tests that
signal it, kill it or load it from outside; and a free loopback port for its config."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import IO


def free_port() -> int:
    """A port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_process(
    config: Path,
    *,
    stdout: int | IO[bytes] | None = subprocess.PIPE,
    stderr: int | IO[bytes] | None = subprocess.STDOUT,
) -> subprocess.Popen[bytes]:
    """Start ``optiserve serve --config config`` with one OpenMP thread."""
    return subprocess.Popen(
        [sys.executable, "-m", "optiserve", "serve", "--config", str(config)],
        stdout=stdout,
        stderr=stderr,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
