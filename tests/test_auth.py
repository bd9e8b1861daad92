"""API keys through a real server on 127.0.0.1: keys made with `optiserve keys create`,
sent as `authorization: Bearer` or `x-api-key`, checked for every OptiServe call (health
and reflection never), scopes for Quantize and Benchmark, the key's tenant in the ledger,
and the key never in a log line or an error message."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from live_helpers import create_key
from live_helpers import keys_config as config_with_keys
from optiserve.app import ServerThread
from optiserve.auth_keys import AuthConfig, UnsafeListenAddress
from optiserve.cli import main
from optiserve.config import Config
from optiserve_client import Client, OptiserveClientError, PermissionDenied, Unauthenticated
from optiserve_client.v1 import optiserve_pb2 as pb
from optiserve_client.v1 import optiserve_pb2_grpc as pb_grpc


@dataclass
class Keys:
    """The keys of the test server, by what they may do."""

    config: Path
    plain: str
    plain_id: str
    scoped: str
    revoked: str


@pytest.fixture(scope="module")
def keys_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return config_with_keys(tmp_path_factory.mktemp("auth"))


@pytest.fixture(scope="module")
def keys(keys_config: Path) -> Keys:
    plain, plain_id = create_key(keys_config, "--tenant", "acme")
    scoped, _ = create_key(
        keys_config, "--tenant", "lab", "--scope", "quantize", "--scope", "benchmark"
    )
    revoked, revoked_id = create_key(keys_config, "--tenant", "gone")
    assert main(["keys", "revoke", revoked_id, "--config", str(keys_config)]) == 0
    return Keys(keys_config, plain, plain_id, scoped, revoked)


def _auth(keys_config: Path, **auth: object) -> AuthConfig:
    keys_file = keys_config.read_text().split('"')[1]
    return AuthConfig(keys_file=keys_file, **auth)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def auth_server(make_config: Callable[..., Config], keys: Keys) -> Iterator[ServerThread]:
    config = replace(make_config(), auth=_auth(keys.config, required=True))
    thread = ServerThread(config)
    thread.start()
    yield thread
    thread.stop()


def _generate(stub: pb_grpc.OptiServeStub, metadata: tuple[tuple[str, str], ...]) -> str:
    request = pb.GenerateRequest(prompt="hello", sampling=pb.SamplingParams(max_new_tokens=2))
    return str(stub.Generate(request, metadata=metadata, timeout=60).text)


def _error(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value  # type: ignore[no-any-return]


def test_no_bad_or_revoked_key_is_unauthenticated(
    auth_server: ServerThread, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with grpc.insecure_channel(auth_server.target) as channel:
        stub = pb_grpc.OptiServeStub(channel)
        none = _error(lambda: _generate(stub, ()))
        assert none.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "requires an API key and none was sent" in none.details()
        assert "authorization: Bearer" in none.details()
        bad_key = keys.plain[:-3] + "xyz"
        bad = _error(lambda: _generate(stub, (("authorization", f"Bearer {bad_key}"),)))
        assert bad.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "not known to this server" in bad.details()
        scheme = _error(lambda: _generate(stub, (("authorization", f"Basic {bad_key}"),)))
        assert scheme.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "Bearer <key>" in scheme.details()
        gone = _error(lambda: _generate(stub, (("x-api-key", keys.revoked),)))
        assert gone.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "was revoked" in gone.details()
        listing = _error(lambda: stub.ListModels(pb.ListModelsRequest(), timeout=30))
        assert listing.code() == grpc.StatusCode.UNAUTHENTICATED
        errors = [none, bad, scheme, gone]
    logged = "\n".join(str(vars(r)) for r in caplog.records)  # messages and extras
    assert "UNAUTHENTICATED" in logged  # the refusals were logged ...
    for secret in (keys.plain, keys.revoked, bad_key, keys.scoped):
        assert all(secret not in (e.details() or "") for e in errors)
        assert secret not in logged  # ... without the keys
    with Client(auth_server.target, timeout=30) as client, pytest.raises(Unauthenticated):
        client.list_models()


def test_bearer_and_x_api_key_both_work(auth_server: ServerThread, keys: Keys) -> None:
    with grpc.insecure_channel(auth_server.target) as channel:
        stub = pb_grpc.OptiServeStub(channel)
        _generate(stub, (("authorization", f"Bearer {keys.plain}"),))
        _generate(stub, (("authorization", f"bearer {keys.plain}"),))
        _generate(stub, (("x-api-key", keys.plain),))
    with Client(auth_server.target, api_key=keys.plain, timeout=60) as client:
        assert client.list_models()
        client.generate("hi", max_new_tokens=2)


def test_scopes_guard_quantize_and_benchmark(auth_server: ServerThread, keys: Keys) -> None:
    quantize = pb.QuantizeRequest(model="no-such-model")
    benchmark = pb.BenchmarkRequest(models=["no-such-model"])
    with Client(auth_server.target, api_key=keys.plain, timeout=60) as client:
        with pytest.raises(PermissionDenied) as q:
            list(client.quantize(quantize))
        assert "lacks the 'quantize' scope" in q.value.message
        assert "--scope quantize" in q.value.message and keys.plain_id in q.value.message
        with pytest.raises(PermissionDenied, match="'benchmark' scope"):
            list(client.benchmark(benchmark))
    # With the scopes the calls pass authentication and fail on their (bad) request.
    with grpc.insecure_channel(auth_server.target) as channel:
        stub = pb_grpc.OptiServeStub(channel)
        bearer = (("authorization", f"Bearer {keys.scoped}"),)
        q_err = _error(lambda: list(stub.Quantize(quantize, metadata=bearer, timeout=60)))
        b_err = _error(lambda: list(stub.Benchmark(benchmark, metadata=bearer, timeout=60)))
    for err in (q_err, b_err):
        assert err.code() not in (
            grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.UNAUTHENTICATED,
        ), err.details()


def test_health_and_reflection_need_no_key(auth_server: ServerThread) -> None:
    with grpc.insecure_channel(auth_server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = list(
            reflection.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=30
            )
        )
        names = [s.name for s in answers[0].list_services_response.service]
        assert "optiserve.v1.OptiServe" in names
    with Client(auth_server.target, timeout=30) as client:
        assert client.health() == "SERVING"


def test_the_key_tenant_is_accounted(auth_server: ServerThread, keys: Keys) -> None:
    with Client(auth_server.target, api_key=keys.plain, timeout=60) as client:
        client.generate("tenant check", max_new_tokens=2, cache_mode="bypass")
        deadline = time.monotonic() + 10
        while True:
            tenants = {row.key for row in client.usage().by_tenant}
            if "acme" in tenants or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert "acme" in tenants
    assert not any(keys.plain in t for t in tenants)


def test_a_revocation_takes_effect_without_a_restart(auth_server: ServerThread, keys: Keys) -> None:
    key, key_id = create_key(keys.config, "--tenant", "temp")
    time.sleep(1.1)  # the store looks at the file at most once a second
    with Client(auth_server.target, api_key=key, timeout=60) as client:
        assert client.list_models()
        assert main(["keys", "revoke", key_id, "--config", str(keys.config)]) == 0
        time.sleep(1.1)
        with pytest.raises(Unauthenticated, match="revoked"):
            client.list_models()


def test_without_required_known_keys_get_their_tenant(
    make_config: Callable[..., Config], keys: Keys
) -> None:
    thread = ServerThread(replace(make_config(), auth=_auth(keys.config)))
    thread.start()
    try:
        with Client(thread.target, timeout=60) as anonymous:
            anonymous.list_models()  # no key: served as before
        with Client(thread.target, api_key="osk_unknown", timeout=60) as unknown:
            unknown.list_models()  # an unknown key: served as before (a hashed tenant)
        with Client(thread.target, api_key=keys.plain, timeout=60) as client:
            client.generate("open server", max_new_tokens=2, cache_mode="bypass")
            deadline = time.monotonic() + 10
            while "acme" not in {r.key for r in client.usage().by_tenant}:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            # Scopes are only enforced when auth is required.
            with pytest.raises(OptiserveClientError) as info:
                list(client.quantize(pb.QuantizeRequest(model="no-such-model")))
            assert not isinstance(info.value, PermissionDenied | Unauthenticated)
        revoked = Client(thread.target, api_key=keys.revoked, timeout=60)
        with revoked, pytest.raises(Unauthenticated, match="revoked"):
            revoked.list_models()
    finally:
        thread.stop()


def test_a_public_address_without_auth_refuses_to_start(
    make_config: Callable[..., Config], keys: Keys
) -> None:
    public = make_config(server={"host": "0.0.0.0"})
    thread = ServerThread(public)
    with pytest.raises(UnsafeListenAddress, match=r"auth\.required"):
        thread.start()
    assert thread.app.port == 0  # refused before binding
    thread.stop()
    opted_out = replace(public, auth=_auth(keys.config, allow_unauthenticated=True))
    thread = ServerThread(opted_out)
    port = thread.start()
    try:
        assert port > 0
        with Client(f"127.0.0.1:{port}", timeout=30) as client:
            assert client.health() == "SERVING"
    finally:
        thread.stop()
