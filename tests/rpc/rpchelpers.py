"""Servers with their own limits, and waiting on what their admission counts."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from optiserve.app import ServerThread
from optiserve.config import Config


@contextmanager
def serving(make_config: Callable[..., Config], **server: Any) -> Iterator[ServerThread]:
    """A dedicated server with these ``server`` settings, stopped afterwards."""
    thread = ServerThread(make_config(server=server))
    thread.start()
    try:
        yield thread
    finally:
        thread.stop()


def wait_in_flight(server: ServerThread, count: int, timeout_s: float = 30.0) -> float:
    """Wait until exactly ``count`` OptiServe calls are in progress; return the seconds."""
    admission = server.app.admission
    assert admission is not None
    start = time.monotonic()
    while admission.in_flight != count:
        assert time.monotonic() - start < timeout_s, f"{admission.in_flight} in flight"
        time.sleep(0.01)
    return time.monotonic() - start
