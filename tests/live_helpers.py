"""Helpers shared by the live tests: keys made with the CLI, and a streamed job's progress
events split from its report."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from optiserve.cli import main


def keys_config(root: Path) -> Path:
    """A configuration file in ``root`` whose keys file is ``root/keys.json``."""
    path = root / "optiserve.toml"
    path.write_text(f'[auth]\nkeys_file = "{root / "keys.json"}"\n')
    return path


def create_key(config: Path, *args: str) -> tuple[str, str]:
    """`optiserve keys create --config config ARGS`: (the key, its id)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert main(["keys", "create", "--config", str(config), *args]) == 0
    return out.getvalue().strip(), err.getvalue().split("created key ", 1)[1].split()[0]


def progress_and_report(events: Iterable[Any]) -> tuple[list[Any], Any]:
    """The progress events of a Quantize or Benchmark stream, and its report (asserted)."""
    progress: list[Any] = []
    report = None
    for event in events:
        if event.HasField("progress"):
            progress.append(event.progress)
        else:
            report = event.report
    assert report is not None
    return progress, report
