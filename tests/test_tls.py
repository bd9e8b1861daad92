"""TLS and mutual TLS against a real server, with a CA and certificates made at run time
(tests/pki.py): the Python clients (sync and async, health included), the CLI, the Node
client, server-name overrides, plaintext and untrusted clients refused, and config errors
that name the field."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from optiserve.app import ServerThread
from optiserve.cli import main
from optiserve.config import Config, ConfigError, ServerConfig, load_config
from optiserve.domain.settings import SettingError
from optiserve_client import AsyncClient, Client, OptiserveClientError, TLSOptionError
from pki import OTHER_NAME, Pki, build_pki

NODE_DIR = Path(__file__).resolve().parent.parent / "clients" / "node"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return build_pki(tmp_path_factory.mktemp("pki"))


def _serve(make_config: Callable[..., Config], **server: str) -> Iterator[ServerThread]:
    thread = ServerThread(make_config(server=server))
    thread.start()
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def tls_server(make_config: Callable[..., Config], pki: Pki) -> Iterator[ServerThread]:
    yield from _serve(make_config, tls_cert_file=pki.server_cert, tls_key_file=pki.server_key)


@pytest.fixture(scope="module")
def mtls_server(make_config: Callable[..., Config], pki: Pki) -> Iterator[ServerThread]:
    yield from _serve(
        make_config,
        tls_cert_file=pki.server_cert,
        tls_key_file=pki.server_key,
        tls_client_ca_file=pki.client_ca,
    )


def _refused_code(target: str, **options: object) -> str:
    client = Client(target, timeout=10, **options)  # type: ignore[arg-type]
    with client, pytest.raises(OptiserveClientError) as info:
        client.generate("Hello", max_new_tokens=2)
    return info.value.code


# --- TLS -------------------------------------------------------------------------------------


def test_generate_stream_and_health_over_tls(tls_server: ServerThread, pki: Pki) -> None:
    with Client(tls_server.target, tls=True, ca_file=pki.ca, timeout=60) as client:
        assert client.health() == "SERVING"
        done = client.generate("Hello", max_new_tokens=4)
        assert done.model == "tiny" and done.usage.completion_tokens >= 1
        chunks = list(client.stream("Hello", max_new_tokens=4))
        assert chunks[-1].completion is not None
        assert [m.name for m in client.list_models()] == ["tiny"]


def test_the_async_client_over_tls(tls_server: ServerThread, pki: Pki) -> None:
    async def call() -> tuple[str, int]:
        async with AsyncClient(tls_server.target, ca_file=pki.ca, timeout=60) as client:
            health = await client.health()
            done = await client.generate("Hello", max_new_tokens=3)
            return health, done.usage.completion_tokens

    health, tokens = asyncio.run(call())
    assert health == "SERVING" and tokens >= 1


def test_a_plaintext_client_is_refused(tls_server: ServerThread) -> None:
    assert _refused_code(tls_server.target) == "UNAVAILABLE"


def test_a_server_certificate_from_an_untrusted_ca_is_refused(
    tls_server: ServerThread, pki: Pki
) -> None:
    # The client CA did not sign the server's certificate.
    assert _refused_code(tls_server.target, ca_file=pki.client_ca) == "UNAVAILABLE"


def test_server_name_overrides_the_name_checked(tls_server: ServerThread, pki: Pki) -> None:
    with Client(tls_server.target, ca_file=pki.ca, server_name=OTHER_NAME, timeout=60) as client:
        assert client.health() == "SERVING"
        assert client.generate("Hello", max_new_tokens=2).usage.completion_tokens >= 1
    wrong = {"ca_file": pki.ca, "server_name": "not-in-the-certificate.test"}
    assert _refused_code(tls_server.target, **wrong) == "UNAVAILABLE"


def test_localhost_matches_the_certificate(tls_server: ServerThread, pki: Pki) -> None:
    target = f"localhost:{tls_server.app.port}"
    with Client(target, tls=True, ca_file=pki.ca, timeout=60) as client:
        assert client.health() == "SERVING"


# --- mutual TLS ------------------------------------------------------------------------------


def test_mutual_tls_needs_a_client_certificate_from_the_client_ca(
    mtls_server: ServerThread, pki: Pki
) -> None:
    target = mtls_server.target
    assert _refused_code(target, ca_file=pki.ca) == "UNAVAILABLE"  # no certificate
    rogue = {"ca_file": pki.ca, "cert_file": pki.rogue_cert, "key_file": pki.rogue_key}
    assert _refused_code(target, **rogue) == "UNAVAILABLE"  # signed by another CA
    assert _refused_code(target) == "UNAVAILABLE"  # plaintext
    with Client(
        target, ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key, timeout=60
    ) as client:
        assert client.health() == "SERVING"
        assert client.generate("Hello", max_new_tokens=3).usage.completion_tokens >= 1


# --- the command line ------------------------------------------------------------------------


def test_cli_over_tls(
    tls_server: ServerThread, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    t = ["--target", tls_server.target, "--tls", "--ca-file", pki.ca]
    assert main(["health", *t]) == 0
    assert capsys.readouterr().out.strip() == "SERVING"
    assert main(["generate", "Hello", "--max-new-tokens", "4", "--json", *t]) == 0
    assert json.loads(capsys.readouterr().out)["usage"]["completion_tokens"] >= 1
    assert main(["health", *t, "--server-name", OTHER_NAME]) == 0
    assert capsys.readouterr().out.strip() == "SERVING"
    assert main(["health", "--target", tls_server.target]) == 1  # plaintext
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_cli_over_mutual_tls(
    mtls_server: ServerThread, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    t = ["--target", mtls_server.target, "--tls", "--ca-file", pki.ca]
    mine = ["--cert-file", pki.client_cert, "--key-file", pki.client_key]
    assert main(["generate", "Hello", "--max-new-tokens", "3", *t, *mine]) == 0
    assert capsys.readouterr().out.strip()
    assert main(["generate", "Hello", "--max-new-tokens", "3", "--timeout", "10", *t]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_cli_bench_client_side_over_tls(
    tls_server: ServerThread, pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    t = ["--target", tls_server.target, "--ca-file", pki.ca]
    common = [*t, "--model", "tiny", "--concurrency", "1", "--requests", "2"]
    common += ["--max-new-tokens", "2", "--warmup", "0"]
    for mode in ([], ["--client-side"]):
        out = tmp_path / f"bench{len(mode)}.json"
        assert main(["bench", *common, *mode, "--json", str(out)]) == 0
        point = json.loads(out.read_text())["points"][0]
        assert point["requests"] == 2 and point["errors"] == 0
    capsys.readouterr()


def test_cli_names_an_unreadable_tls_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "nope.pem")
    assert main(["health", "--tls", "--ca-file", missing]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"optiserve: ca_file: cannot read {missing}: ")


# --- client options --------------------------------------------------------------------------


def test_client_tls_option_errors(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(TLSOptionError, match=r"^cert_file is set without key_file"):
        Client(ca_file=pki.ca, cert_file=pki.client_cert)
    with pytest.raises(TLSOptionError, match=r"^key_file is set without cert_file"):
        AsyncClient(key_file=pki.client_key)
    with pytest.raises(TLSOptionError, match=r"^key_file: cannot read .*nope\.key"):
        Client(cert_file=pki.client_cert, key_file=str(tmp_path / "nope.key"))


# --- configuration ---------------------------------------------------------------------------


def _load(tmp_path: Path, server: dict[str, str], env: dict[str, str] | None = None) -> Config:
    lines = ["[server]", *(f"{k} = {json.dumps(v)}" for k, v in server.items())]
    path = tmp_path / "tls.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return load_config(path, env or {})


def test_config_loads_tls_files(tmp_path: Path, pki: Pki) -> None:
    server = {"tls_cert_file": pki.server_cert, "tls_key_file": pki.server_key}
    config = _load(tmp_path, {**server, "tls_client_ca_file": pki.client_ca})
    assert config.server.tls_cert_file == pki.server_cert
    assert config.server.tls_client_ca_file == pki.client_ca
    assert ServerConfig().tls_files == {}


@pytest.mark.parametrize("field", ["tls_cert_file", "tls_key_file", "tls_client_ca_file"])
def test_config_error_names_a_missing_file(tmp_path: Path, pki: Pki, field: str) -> None:
    server = {
        "tls_cert_file": pki.server_cert,
        "tls_key_file": pki.server_key,
        "tls_client_ca_file": pki.client_ca,
    }
    missing = str(tmp_path / "missing.pem")
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, {**server, field: missing})
    assert str(info.value).startswith(f"server.{field}: cannot read {missing}: ")


def test_config_error_for_a_file_that_is_not_pem(tmp_path: Path, pki: Pki) -> None:
    junk = tmp_path / "junk.crt"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"^server\.tls_cert_file: .*junk\.crt is not PEM"):
        _load(tmp_path, {"tls_cert_file": str(junk), "tls_key_file": pki.server_key})


def _encrypted_key(pki: Pki, directory: Path) -> str:
    key = serialization.load_pem_private_key(Path(pki.server_key).read_bytes(), None)
    path = directory / "encrypted.key"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    return str(path)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("mismatched key", r"server\.tls_key_file: \S+ is not the private key of the certificate"),
        ("key as certificate", r"server\.tls_cert_file: \S+ holds no valid PEM certificate"),
        ("certificate as key", r"server\.tls_key_file: \S+ is not an unencrypted PEM private key"),
        ("encrypted key", r"server\.tls_key_file: \S+ is not an unencrypted PEM private key"),
        ("key as client CA", r"server\.tls_client_ca_file: \S+ holds no valid PEM certificate"),
    ],
)
def test_config_error_for_files_grpc_would_refuse(
    tmp_path: Path, pki: Pki, case: str, expected: str
) -> None:
    cert, key, ca = pki.server_cert, pki.server_key, pki.client_ca
    if case == "mismatched key":
        key = pki.other_key
    elif case == "key as certificate":
        cert = key
    elif case == "certificate as key":
        key = cert
    elif case == "encrypted key":
        key = _encrypted_key(pki, tmp_path)
    else:
        ca = key
    server = {"tls_cert_file": cert, "tls_key_file": key, "tls_client_ca_file": ca}
    with pytest.raises(ConfigError, match=f"^{expected}"):
        _load(tmp_path, server)


def test_config_error_names_the_environment_variable(tmp_path: Path, pki: Pki) -> None:
    env = {"OPTISERVE_SERVER__TLS_KEY_FILE": str(tmp_path / "gone.key")}
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, {"tls_cert_file": pki.server_cert}, env)
    message = str(info.value)
    assert message.startswith("server.tls_key_file: cannot read ")
    assert message.endswith("(from OPTISERVE_SERVER__TLS_KEY_FILE)")


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        ({"tls_key_file": "k.pem"}, "server.tls_key_file is set without server.tls_cert_file"),
        ({"tls_cert_file": "c.pem"}, "server.tls_cert_file is set without server.tls_key_file"),
        (
            {"tls_client_ca_file": "ca.pem"},
            "server.tls_client_ca_file needs server.tls_cert_file and server.tls_key_file",
        ),
    ],
)
def test_config_error_for_half_a_tls_setup(
    tmp_path: Path, server: dict[str, str], expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, server)
    assert str(info.value).startswith(expected)
    with pytest.raises(SettingError):
        ServerConfig(**server)  # type: ignore[arg-type]


def test_serve_refuses_a_missing_certificate(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "serve.toml"
    missing = tmp_path / "no.crt"
    path.write_text(f'[server]\ntls_cert_file = "{missing}"\ntls_key_file = "{pki.server_key}"\n')
    assert main(["serve", "--config", str(path)]) == 2
    assert capsys.readouterr().err.startswith(
        f"optiserve: configuration error: server.tls_cert_file: cannot read {missing}: "
    )


# --- the Node client -------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_node_client_over_mutual_tls(mtls_server: ServerThread, pki: Pki) -> None:
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").exists():
        pytest.skip("clients/node has no node_modules: run `make test` (it runs npm ci)")
    options = {
        "caFile": pki.ca,
        "certFile": pki.client_cert,
        "keyFile": pki.client_key,
        "serverName": OTHER_NAME,
    }
    out = subprocess.run(
        ["node", "smoke.js", mtls_server.target, json.dumps(options)],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["models"] == ["tiny"]
    assert result["text"] and result["streamed"] == result["text"]
    assert result["error"] == "NOT_FOUND"
    without = {"caFile": pki.ca}  # no client certificate: the handshake fails
    failed = subprocess.run(
        ["node", "smoke.js", mtls_server.target, json.dumps(without)],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert failed.returncode != 0
    assert "UNAVAILABLE" in failed.stderr
