"""Limits per API key: requests per second and tokens per minute (token buckets), streams
at once; the bucket arithmetic on a fake clock, then through a real server with keys made
by `optiserve keys create --requests-per-s ... --tokens-per-min ... --max-streams ...`."""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from live_helpers import create_key
from live_helpers import keys_config as config_with_keys
from optiserve.app import ServerThread
from optiserve.auth_keys import AuthConfig, read_keys_file
from optiserve.cli import main
from optiserve.config import Config, ConfigError, load_config
from optiserve.domain.key_limits import KeyLimiter, KeyLimitReached, KeyLimits
from optiserve_client import Client, ResourceExhausted
from optiserve_client.v1 import optiserve_pb2 as pb
from optiserve_client.v1 import optiserve_pb2_grpc as pb_grpc

# --- the buckets, on a clock the test moves ---------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _refused(limiter: KeyLimiter, limits: KeyLimits, streaming: bool = False) -> float:
    with pytest.raises(KeyLimitReached) as info:
        limiter.admit("key:k", limits, streaming)
    assert info.value.retry_after_s is not None
    return info.value.retry_after_s


def test_requests_per_second_allow_the_burst_then_the_rate() -> None:
    clock = Clock()
    limiter = KeyLimiter(clock)
    limits = KeyLimits(requests_per_s=2.0, burst=3)
    for _ in range(3):
        limiter.admit("key:k", limits, False)
    assert _refused(limiter, limits) == pytest.approx(0.5)
    clock.now += 0.5
    limiter.admit("key:k", limits, False)
    assert _refused(limiter, limits) == pytest.approx(0.5)
    # Over 10 s at most the burst plus the rate gets in, however often it asks.
    admitted = 0
    for _ in range(1000):
        clock.now += 0.01
        with contextlib.suppress(KeyLimitReached):
            limiter.admit("key:k", limits, False)
            admitted += 1
    assert admitted == 20


def test_keys_do_not_share_buckets_and_the_default_burst_is_a_second() -> None:
    limiter = KeyLimiter(Clock())
    limits = KeyLimits(requests_per_s=1.5)
    assert limits.request_capacity == 2
    for caller in ("key:a", "key:b"):
        limiter.admit(caller, limits, False)
        limiter.admit(caller, limits, False)
    with pytest.raises(KeyLimitReached, match=r"API key a is over its 1\.5 requests per second"):
        limiter.admit("key:a", limits, False)
    limiter.admit("tenant:anonymous", limits, False)
    limiter.admit("tenant:anonymous", limits, False)
    with pytest.raises(KeyLimitReached, match="tenant anonymous"):
        limiter.admit("tenant:anonymous", limits, False)


def test_tokens_are_charged_after_the_answer_and_refill_per_minute() -> None:
    clock = Clock()
    limiter = KeyLimiter(clock)
    limits = KeyLimits(tokens_per_min=600)  # 10 a second
    limiter.admit("key:k", limits, False)
    limiter.charge("key:k", 650)  # the answer used more than the bucket held
    retry = _refused(limiter, limits)
    assert retry == pytest.approx(5.1)  # 51 tokens to reach 1 at 10/s
    clock.now += retry
    limiter.admit("key:k", limits, False)
    limiter.charge("key:k", 0)


def test_streams_at_once_are_counted_and_given_back() -> None:
    limiter = KeyLimiter(Clock())
    limits = KeyLimits(max_streams=2)
    first = limiter.admit("key:k", limits, True)
    limiter.admit("key:k", limits, True)
    with pytest.raises(KeyLimitReached, match="already has 2 streams in progress"):
        limiter.admit("key:k", limits, True)
    limiter.admit("key:k", limits, False)  # unary calls are not streams
    limiter.finish(first)
    limiter.admit("key:k", limits, True)


def test_idle_callers_are_forgotten() -> None:
    clock = Clock()
    limiter = KeyLimiter(clock)
    limits = KeyLimits(requests_per_s=100.0)
    for i in range(KeyLimiter.SWEEP_EVERY - 1):
        limiter.admit(f"tenant:key-{i}", limits, False)
    assert len(limiter) == KeyLimiter.SWEEP_EVERY - 1
    clock.now += 1.0
    limiter.admit("tenant:new", limits, False)
    assert len(limiter) == 1


def test_no_limit_keeps_no_state() -> None:
    limiter = KeyLimiter(Clock())
    assert limiter.admit("key:k", KeyLimits(), True) is None
    assert len(limiter) == 0


def test_a_key_limit_changed_in_the_file_resizes_its_bucket() -> None:
    clock = Clock()
    limiter = KeyLimiter(clock)
    limiter.admit("key:k", KeyLimits(requests_per_s=1.0), False)
    _refused(limiter, KeyLimits(requests_per_s=1.0))
    # Raised to 10/s (burst 10): the empty bucket stays empty, then refills at the new rate.
    _refused(limiter, KeyLimits(requests_per_s=10.0))
    clock.now += 0.1
    limiter.admit("key:k", KeyLimits(requests_per_s=10.0), False)


def test_bad_limits_are_refused_with_the_key(tmp_path: Path) -> None:
    config = tmp_path / "optiserve.toml"
    config.write_text(f'[auth]\nkeys_file = "{tmp_path / "keys.json"}"\n')
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["keys", "create", "--config", str(config), "--tenant", "t", "--burst", "-1"])
    assert code == 2
    assert "limit burst must be >= 0, got -1" in err.getvalue()
    with pytest.raises(ConfigError, match=r"key_limits.requests_per_s must be >= 0"):
        load_config(None, {"OPTISERVE_KEY_LIMITS__REQUESTS_PER_S": "-2"})


# --- through a real server --------------------------------------------------------------


@pytest.fixture(scope="module")
def keys_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return config_with_keys(tmp_path_factory.mktemp("limits"))


@pytest.fixture(scope="module")
def limited(
    make_config: Callable[..., Config], keys_config: Path
) -> Iterator[tuple[ServerThread, dict[str, str]]]:
    keys = {
        "slow": create_key(
            keys_config, "--tenant", "slow", "--requests-per-s", "0.5", "--burst", "2"
        )[0],
        "frugal": create_key(keys_config, "--tenant", "frugal", "--tokens-per-min", "60")[0],
        "one_stream": create_key(keys_config, "--tenant", "streamer", "--max-streams", "1")[0],
        "free": create_key(keys_config, "--tenant", "free")[0],
    }
    keys_file = keys_config.read_text().split('"')[1]
    config = replace(
        make_config(),
        auth=AuthConfig(keys_file=keys_file),
        # Every caller (anonymous included) gets 1000 req/s unless its key says otherwise.
        key_limits=KeyLimits(requests_per_s=1000.0),
    )
    thread = ServerThread(config)
    thread.start()
    yield thread, keys
    thread.stop()


def _first_error(call: Callable[[], object], within_s: float = 10.0) -> grpc.RpcError:
    """Repeat ``call`` until it fails (within ``within_s``); return the error."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            call()
        except grpc.RpcError as exc:
            return exc
        time.sleep(0.05)
    raise AssertionError(f"every call succeeded for {within_s} s")


def _codes_until_ok(call: Callable[[], object], within_s: float = 10.0) -> list[grpc.StatusCode]:
    """Repeat ``call`` until it succeeds (within ``within_s``); the codes of the failures."""
    codes: list[grpc.StatusCode] = []
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            call()
            return codes
        except grpc.RpcError as exc:
            codes.append(exc.code())
        time.sleep(0.05)
    raise AssertionError(f"no call succeeded in {within_s} s: {codes[-3:]}")


def _generate(client: Client, max_new_tokens: int = 4) -> int:
    result = client.generate("Tell me about limits", max_new_tokens=max_new_tokens)
    return result.usage.prompt_tokens + result.usage.completion_tokens


def test_a_key_over_its_request_rate_is_told_when_to_retry(
    limited: tuple[ServerThread, dict[str, str]],
) -> None:
    server, keys = limited
    with Client(server.target, api_key=keys["slow"], timeout=30) as client:
        _generate(client)
        _generate(client)
        with pytest.raises(ResourceExhausted) as info:
            _generate(client)
        assert "over its 0.5 requests per second (burst 2" in info.value.message
        retry = info.value.retry_after_s
        assert retry is not None and 0 < retry <= 2.0
        # Another key is not affected.
        with Client(server.target, api_key=keys["free"], timeout=30) as other:
            for _ in range(3):
                _generate(other)
        time.sleep(retry)
        _generate(client)


def test_the_hint_is_in_the_trailing_metadata(
    limited: tuple[ServerThread, dict[str, str]],
) -> None:
    server, keys = limited
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.OptiServeStub(channel)
        metadata = (("authorization", f"Bearer {keys['slow']}"),)
        request = pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(max_new_tokens=1))
        errors = []
        for _ in range(4):
            try:
                stub.Generate(request, metadata=metadata, timeout=30)
            except grpc.RpcError as exc:
                errors.append(exc)
        assert errors, "four calls at once within 0.5/s with burst 2 must meet the limit"
        error = errors[-1]
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        trailing = dict(error.trailing_metadata() or ())
        assert 0 < float(trailing["retry-after-s"]) <= 2.0


def test_a_key_over_its_tokens_per_minute_waits_for_the_refill(
    limited: tuple[ServerThread, dict[str, str]],
) -> None:
    server, keys = limited
    with Client(server.target, api_key=keys["frugal"], timeout=30) as client:
        used = _generate(client, max_new_tokens=80)  # more than the 60 a minute
        assert used > 61
        with pytest.raises(ResourceExhausted) as info:
            _generate(client)
        assert "used its 60 tokens per minute" in info.value.message
        # 1 token a second: the hint is the measured overdraft, in seconds.
        assert info.value.retry_after_s == pytest.approx(used - 60 + 1, abs=2.0)
        # The stream was charged too: streaming is refused as well.
        with pytest.raises(ResourceExhausted):
            "".join(c.text for c in client.stream("more", max_new_tokens=2))


def test_a_cancelled_stream_is_charged_what_it_used(
    limited: tuple[ServerThread, dict[str, str]], keys_config: Path
) -> None:
    server, _ = limited
    key, _ = create_key(keys_config, "--tenant", "canceller", "--tokens-per-min", "60")
    time.sleep(1.1)  # the server re-reads the keys file at most once a second
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.OptiServeStub(channel)
        metadata = (("authorization", f"Bearer {key}"),)
        request = pb.GenerateRequest(
            prompt="Tell me a long story", sampling=pb.SamplingParams(max_new_tokens=200)
        )
        stream = stub.StreamGenerate(request, metadata=metadata, timeout=30)
        received = 0
        for chunk in stream:
            received += len(chunk.text_delta) > 0
            if received >= 70:
                break
        stream.cancel()
        # The cut account is charged when the stream's handler ends, just after.
        tiny = pb.GenerateRequest(prompt="x", sampling=pb.SamplingParams(max_new_tokens=1))
        error = _first_error(lambda: stub.Generate(tiny, metadata=metadata, timeout=30))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "tokens per minute" in (error.details() or "")


def test_streams_at_once_per_key(limited: tuple[ServerThread, dict[str, str]]) -> None:
    server, keys = limited
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.OptiServeStub(channel)
        metadata = (("authorization", f"Bearer {keys['one_stream']}"),)
        long = pb.GenerateRequest(prompt="Tell me", sampling=pb.SamplingParams(max_new_tokens=400))
        first = stub.StreamGenerate(long, metadata=metadata, timeout=60)
        next(first)  # it is running
        with pytest.raises(grpc.RpcError) as info:
            next(stub.StreamGenerate(long, metadata=metadata, timeout=30))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "already has 1 streams in progress" in (info.value.details() or "")
        # A unary call of the same key is not a stream.
        short = pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(max_new_tokens=1))
        stub.Generate(short, metadata=metadata, timeout=30)
        first.cancel()
        codes = _codes_until_ok(lambda: list(stub.StreamGenerate(short, metadata=metadata)))
        assert set(codes) <= {grpc.StatusCode.RESOURCE_EXHAUSTED}


def test_callers_without_a_key_share_the_default_limits(
    make_config: Callable[..., Config],
) -> None:
    config = replace(make_config(), key_limits=KeyLimits(requests_per_s=1.0, burst=3))
    server = ServerThread(config)
    server.start()
    with Client(server.target, timeout=30) as client:
        outcomes: list[str] = []

        def call() -> None:
            try:
                client.generate("hello", max_new_tokens=1)
                outcomes.append("ok")
            except ResourceExhausted:
                outcomes.append("refused")

        threads = [threading.Thread(target=call) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    server.stop()
    assert sorted(outcomes) == ["ok"] * 3 + ["refused"] * 3


def test_keys_list_shows_each_keys_limits(keys_config: Path) -> None:
    out = io.StringIO()
    create_key(keys_config, "--tenant", "listed", "--requests-per-s", "2.5", "--max-streams", "3")
    create_key(keys_config, "--tenant", "unlimited")
    with contextlib.redirect_stdout(out):
        assert main(["keys", "list", "--config", str(keys_config), "--json"]) == 0
    rows = {r["tenant"]: r for r in json.loads(out.getvalue())}
    assert rows["listed"]["limits"] == {"requests_per_s": 2.5, "max_streams": 3}
    assert "limits" not in rows["unlimited"]
    keys_file = Path(keys_config.read_text().split('"')[1])
    stored = {k.tenant: k for k in read_keys_file(keys_file).keys}
    assert dict(stored["listed"].limits) == {"requests_per_s": 2.5, "max_streams": 3}
