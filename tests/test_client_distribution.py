"""The client is its own distribution: ``pip install ./clients/python`` into a fresh venv
brings grpcio and protobuf only (none of the server's torch, faiss, transformers), builds
the stubs from proto/ and talks to a real server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from optiserve.app import ServerThread

ROOT = Path(__file__).resolve().parent.parent

# What a client user must not get: the server and its heavy dependencies.
SERVER_ONLY = ("optiserve", "torch", "faiss", "transformers", "numpy", "grpc_health")
# Everything the fresh venv may hold: the client, its two dependencies and theirs.
ALLOWED = {"optiserve-client", "grpcio", "protobuf", "typing-extensions", "pip", "setuptools"}

CALL_SERVER = """
import importlib.metadata, importlib.util, json, sys
import optiserve_client
from optiserve_client import Client

with Client(sys.argv[1], timeout=60) as client:
    done = client.generate("Return the number of items in a container", max_new_tokens=4)
    health = client.health()
print(json.dumps({
    "module": optiserve_client.__file__,
    "present": [m for m in sys.argv[2:] if importlib.util.find_spec(m) is not None],
    "distributions": sorted(d.metadata["Name"] for d in importlib.metadata.distributions()),
    "model": done.model,
    "finish_reason": done.finish_reason,
    "completion_tokens": done.usage.completion_tokens,
    "health": health,
}))
"""


def _isolated_env() -> dict[str, str]:
    """The environment without anything that would leak this checkout into the venv."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _run(args: list[str | Path], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=_isolated_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _checkout_copy(dest: Path) -> Path:
    """clients/python and proto/ as a fresh clone has them (no generated or built files)."""
    ignore = shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "*_pb2*.py*")
    shutil.copytree(ROOT / "clients" / "python", dest / "clients" / "python", ignore=ignore)
    shutil.copytree(ROOT / "proto", dest / "proto")
    return dest / "clients" / "python"


def test_client_installs_alone_and_calls_the_server(server: ServerThread, tmp_path: Path) -> None:
    source = _checkout_copy(tmp_path / "checkout")
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = _run([python, "-m", "pip", "install", "--quiet", source], tmp_path, 300)
    if install.returncode != 0:
        download = [python, "-m", "pip", "download", "--quiet", "--no-deps"]
        probe = _run([*download, "-d", tmp_path / "probe", "grpcio==1.85.1"], tmp_path, 120)
        if probe.returncode != 0:
            pytest.skip(f"pip cannot reach a package index: {probe.stderr.strip()[-400:]}")
        pytest.fail(f"pip install ./clients/python failed:\n{install.stdout}\n{install.stderr}")
    install_s = time.perf_counter() - started

    # -I: no current directory, no PYTHON* variables, no user site on sys.path.
    call = _run([python, "-I", "-c", CALL_SERVER, server.target, *SERVER_ONLY], tmp_path, 120)
    assert call.returncode == 0, call.stderr
    seen = json.loads(call.stdout.strip().splitlines()[-1])

    assert Path(seen["module"]).is_relative_to(venv), seen["module"]
    assert seen["present"] == [], f"the client venv can import {seen['present']}"
    names = {n.lower().replace("_", "-") for n in seen["distributions"]}
    assert {"optiserve-client", "grpcio", "protobuf"} <= names
    assert names <= ALLOWED, f"the client pulled in {sorted(names - ALLOWED)}"
    assert seen["model"] == "tiny"
    assert seen["finish_reason"] in ("length", "eos")
    assert 1 <= seen["completion_tokens"] <= 4
    assert seen["health"] == "SERVING"
    print(f"fresh venv + pip install ./clients/python: {install_s:.1f} s")
