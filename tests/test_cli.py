"""The optiserve command against a real server."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from eos_first import PROMPT, build_eos_first_model, serving
from optiserve.app import ServerThread
from optiserve.cli import main
from optiserve.config import Config


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
    assert main(["usage", *t]) == 0
    usage = json.loads(capsys.readouterr().out)
    assert int(usage["total"]["requests"]) >= 2
    assert sum(int(row["requests"]) for row in usage["byModel"]) >= 2


@pytest.fixture(scope="module")
def eos_first_target(
    make_config: Callable[..., Config],
    tiny_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """A server whose model ends PROMPT's answer at once (its first token is an EOS id)."""
    model_dir = build_eos_first_model(tiny_model_dir, tmp_path_factory.mktemp("eos-first"))
    with serving(make_config(), model_dir) as server:
        yield server.target


@pytest.mark.parametrize("command", ["generate", "stream"])
def test_an_immediate_eos_is_explained_on_stderr(
    eos_first_target: str, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    t = ["--target", eos_first_target]
    assert main([command, PROMPT, "--max-new-tokens", "8", *t]) == 0  # a valid answer
    out, err = capsys.readouterr()
    assert out == "\n"
    assert re.fullmatch(
        r"optiserve: empty answer \(finish reason: eos after 0 tokens, prompt \d+ tokens\); "
        r"try --min-new-tokens 1 or another prompt\n",
        err,
    ), err
    held = [command, PROMPT, "--max-new-tokens", "8", "--min-new-tokens", "2", *t]
    assert main([*held, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["usage"]["completion_tokens"] >= 2
    assert main(held) == 0
    out, err = capsys.readouterr()
    assert out == result["text"] + "\n"
    # The random model's next-best tokens may be whitespace: then the note says "blank".
    assert err == "" if result["text"].strip() else err.startswith("optiserve: blank answer")


@pytest.mark.parametrize("command", ["generate", "stream"])
def test_a_stop_string_matching_at_once_is_explained(
    server: ServerThread, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    t = ["--target", server.target]
    assert main(["generate", PROMPT, "--max-new-tokens", "6", "--json", *t]) == 0
    first_char = json.loads(capsys.readouterr().out)["text"][:1]
    assert first_char
    args = [command, PROMPT, "--max-new-tokens", "6", f"--stop={first_char}", *t]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert out == "\n"
    assert err.startswith("optiserve: empty answer (finish reason: stop_sequence after ")
    assert err.endswith("a stop string matched at once; try other --stop strings\n")
    # --json carries the finish reason itself: nothing on stderr.
    assert main([*args, "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["finish_reason"] == "stop_sequence"
    assert err == ""
