"""Any language can call: the Node.js client (grpc-js) against the real server."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from optiserve.app import ServerThread

NODE_DIR = Path(__file__).resolve().parent.parent / "clients" / "node"


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_node_client_calls_the_server(server: ServerThread) -> None:
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").exists():
        pytest.skip("clients/node has no node_modules: run `make test` (it runs npm ci)")
    out = subprocess.run(
        ["node", "smoke.js", server.target],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["models"] == ["tiny"]
    assert result["text"]
    assert result["streamed"] == result["text"]
    assert result["completion_tokens"] >= 1
    assert result["error"] == "NOT_FOUND"
