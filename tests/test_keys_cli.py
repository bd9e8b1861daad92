"""`optiserve keys create|list|revoke`: the keys file holds hashes, never keys; it is
written atomically; the key is printed once; the server refuses a public address without
auth before loading anything."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from optiserve.auth_keys import (
    AuthConfig,
    KeyStore,
    UnsafeListenAddress,
    check_listen_address,
    is_loopback,
    read_keys_file,
)
from optiserve.cli import main


def _config(tmp_path: Path, text: str = "") -> Path:
    path = tmp_path / "optiserve.toml"
    path.write_text(f'data_dir = "{tmp_path / "data"}"\n{text}')
    return path


def create(config: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[str, str]:
    """Run `optiserve keys create`; return (the key, the key's id)."""
    assert main(["keys", "create", "--config", str(config), *args]) == 0
    out, err = capsys.readouterr()
    key = out.strip()
    key_id = err.split("created key ", 1)[1].split()[0]
    return key, key_id


def test_create_list_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path)
    key, key_id = create(config, capsys, "--tenant", "acme", "--scope", "quantize", "--name", "ci")
    assert key.startswith("osk_") and len(key) > 40
    path = tmp_path / "data" / "keys.json"
    text = path.read_text()
    assert key not in text and key[4:20] not in text  # only its salted hash is stored
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".keys")] == []

    other, _ = create(config, capsys, "--tenant", "beta")
    assert other != key
    stored = read_keys_file(path)
    assert stored.find(key) is not None and stored.find(key).tenant == "acme"  # type: ignore[union-attr]
    assert stored.find(other).scopes == ()  # type: ignore[union-attr]
    assert stored.find(key + "x") is None

    assert main(["keys", "list", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert key_id in out and "acme" in out and "quantize" in out and "active" in out
    assert key not in out

    assert main(["keys", "revoke", key_id, "--config", str(config)]) == 0
    assert f"revoked key {key_id}" in capsys.readouterr().out
    assert main(["keys", "list", "--json", "--config", str(config)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["id"]: bool(r["revoked_at"]) for r in rows}[key_id] is True
    assert all("hash" not in r for r in rows)

    assert main(["keys", "revoke", "nope", "--config", str(config)]) == 1
    assert "no key with id 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("tenant", ["", "a b", "anonymous", "key-0123", "x" * 129])
def test_bad_tenant_names_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tenant: str
) -> None:
    config = _config(tmp_path)
    assert main(["keys", "create", "--config", str(config), "--tenant", tenant]) == 2
    assert "tenant" in capsys.readouterr().err
    assert not (tmp_path / "data" / "keys.json").exists()


def test_keys_file_from_the_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys_file = tmp_path / "elsewhere" / "k.json"
    config = _config(tmp_path, f'[auth]\nkeys_file = "{keys_file}"\n')
    create(config, capsys, "--tenant", "t")
    assert keys_file.exists() and not (tmp_path / "data" / "keys.json").exists()


def test_a_bad_keys_file_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keys.json").write_text("{not json")
    assert main(["keys", "list", "--config", str(config)]) == 1
    assert "is not a valid optiserve keys file" in capsys.readouterr().err


def test_the_store_rereads_a_changed_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)
    key, key_id = create(config, capsys, "--tenant", "acme")
    now = [0.0]
    store = KeyStore(tmp_path / "data" / "keys.json", clock=lambda: now[0])
    assert store.find(key) is not None and not store.find(key).revoked  # type: ignore[union-attr]
    assert main(["keys", "revoke", key_id, "--config", str(config)]) == 0
    assert not store.find(key).revoked  # type: ignore[union-attr]  # within the second
    now[0] = 1.5
    assert store.find(key).revoked  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("localhost", True), ("::1", True), ("[::1]", True),
     ("127.1.2.3", True), ("0.0.0.0", False), ("::", False), ("10.0.0.1", False),
     ("example.com", False)],
)  # fmt: skip
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_public_address_needs_auth_or_an_explicit_opt_out() -> None:
    with pytest.raises(UnsafeListenAddress, match=r"auth\.allow_unauthenticated"):
        check_listen_address("0.0.0.0", AuthConfig())
    check_listen_address("0.0.0.0", AuthConfig(required=True))
    check_listen_address("0.0.0.0", AuthConfig(allow_unauthenticated=True))
    check_listen_address("127.0.0.1", AuthConfig())


def test_serve_refuses_a_public_address_without_auth(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "environ", {})
    config = _config(tmp_path)
    assert main(["serve", "--config", str(config), "--host", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("optiserve: refusing to start: server.host is '0.0.0.0'")
    assert "auth.required = true" in err
