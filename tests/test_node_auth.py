"""The Node.js client (clients/node, via smoke.js) against a real server that requires API
keys and speaks TLS: a valid key gets Generate text and a streamed answer with usage; no
key, an unknown key and a revoked key (revoked while the server runs) are UNAUTHENTICATED,
with the status's number and the server's message in the client's error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from optiserve.app import ServerThread
from optiserve.auth_keys import AuthConfig, create_key, revoke_key
from optiserve.config import Config
from pki import Pki, build_pki

NODE_DIR = Path(__file__).resolve().parent.parent / "clients" / "node"
UNAUTHENTICATED = 16

pytestmark = [
    pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed"),
    pytest.mark.skipif(
        not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").exists(),
        reason="clients/node has no node_modules: run `make test` (it runs npm ci)",
    ),
]


@dataclass(frozen=True)
class Secured:
    """A server with auth required over TLS, its CA, its keys file and two keys made before
    it started (so that it knows them from its first call)."""

    server: ServerThread
    pki: Pki
    keys_file: Path
    key: str
    #: A key that test_a_key_revoked_while_serving_is_unauthenticated revokes, and its id.
    leaver: str
    leaver_id: str


@pytest.fixture(scope="module")
def secured(
    make_config: Callable[..., Config], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Secured]:
    pki = build_pki(tmp_path_factory.mktemp("pki"))
    keys_file = tmp_path_factory.mktemp("node-auth") / "keys.json"
    _, key = create_key(keys_file, "node")
    leaver, leaver_key = create_key(keys_file, "node-leaver")
    tls = {"tls_cert_file": pki.server_cert, "tls_key_file": pki.server_key}
    config = replace(
        make_config(server=tls), auth=AuthConfig(keys_file=str(keys_file), required=True)
    )
    thread = ServerThread(config)
    thread.start()
    yield Secured(thread, pki, keys_file, key, leaver_key, leaver.id)
    thread.stop()


def _smoke(
    secured: Secured, api_key: str | None = None, *, env_key: str | None = None
) -> tuple[int, dict[str, Any], str]:
    """Run smoke.js over TLS with ``api_key`` (in its JSON options) or ``env_key`` (in
    OPTISERVE_API_KEY): (exit status, its JSON line, its stderr)."""
    options: dict[str, str] = {"caFile": secured.pki.ca}
    if api_key is not None:
        options["apiKey"] = api_key
    env = {k: v for k, v in os.environ.items() if k != "OPTISERVE_API_KEY"}
    if env_key is not None:
        env["OPTISERVE_API_KEY"] = env_key
    out = subprocess.run(
        ["node", "smoke.js", secured.server.target, json.dumps(options)],
        cwd=NODE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = out.stdout.strip().splitlines()
    assert lines, f"smoke.js printed nothing (exit {out.returncode}): {out.stderr}"
    return out.returncode, json.loads(lines[-1]), out.stderr


def _refusals(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    failures: dict[str, dict[str, Any]] = result["failures"]
    assert set(failures) == {"listModels", "generate", "stream"}
    for failure in failures.values():
        assert failure["code"] == "UNAUTHENTICATED"
        assert failure["grpcCode"] == UNAUTHENTICATED
    return failures


def test_a_valid_key_generates_and_streams_over_tls(secured: Secured) -> None:
    for how in ({"api_key": secured.key}, {"env_key": secured.key}):
        status, result, stderr = _smoke(secured, **how)
        assert status == 0, stderr
        assert result["failures"] == {}
        assert result["models"] == ["tiny"]
        assert result["text"] and result["streamed"] == result["text"]
        assert result["usage"]["completion_tokens"] >= 1
        assert result["stream_usage"]["prompt_tokens"] >= 1
        assert result["stream_usage"]["completion_tokens"] == result["usage"]["completion_tokens"]
        assert result["error"] == "NOT_FOUND"  # past authentication, to the model lookup


def test_no_key_is_unauthenticated_with_the_servers_message(secured: Secured) -> None:
    status, result, stderr = _smoke(secured)
    assert status == 1
    for failure in _refusals(result).values():
        assert "requires an API key and none was sent" in failure["details"]
        assert "authorization: Bearer <key>" in failure["details"]
    assert "generate: UNAUTHENTICATED: this server requires an API key" in stderr
    assert result["error"] == "UNAUTHENTICATED"


def test_an_unknown_key_is_unauthenticated(secured: Secured) -> None:
    status, result, _ = _smoke(secured, secured.key[:-3] + "xyz")
    assert status == 1
    for failure in _refusals(result).values():
        assert "not known to this server" in failure["details"]


def test_a_key_revoked_while_serving_is_unauthenticated(secured: Secured) -> None:
    key, key_id = secured.leaver, secured.leaver_id
    status, result, stderr = _smoke(secured, key)
    assert status == 0 and result["text"], stderr
    revoke_key(secured.keys_file, key_id)
    deadline = time.monotonic() + 15  # the server re-reads the keys file within a second
    while True:
        status, result, stderr = _smoke(secured, key)
        # Refused from its first call on: the file was re-read before this run began.
        if "listModels" in result["failures"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert status == 1, f"the revoked key was still served: {result}"
    for failure in _refusals(result).values():
        assert f"(id {key_id}) was revoked" in failure["details"]
        assert key not in failure["details"]
    assert key not in stderr
