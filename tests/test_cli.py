"""The optiserve command against a real server."""

from __future__ import annotations

import json

import pytest

from optiserve.app import ServerThread
from optiserve.cli import main


def test_cli_commands(server: ServerThread, capsys: pytest.CaptureFixture[str]) -> None:
    t = ["--target", server.target]
    assert main(["health", *t]) == 0
    assert capsys.readouterr().out.strip() == "SERVING"
    assert main(["models", *t]) == 0
    assert capsys.readouterr().out.startswith("tiny\tlocal\t")
    assert main(["generate", "Hello", "--max-new-tokens", "5", "--json", *t]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "tiny" and result["usage"]["completion_tokens"] >= 1
    assert main(["stream", "Hello", "--max-new-tokens", "5", *t]) == 0
    assert capsys.readouterr().out.strip() == result["text"].strip()
    assert main(["generate", "Hello", "--model", "nope", *t]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err
