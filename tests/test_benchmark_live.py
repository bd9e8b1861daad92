"""The Benchmark RPC and `optiserve bench` through a real server: against the tiny local
model and against a mock provider (the real openai SDK on loopback); the report is
internally consistent; server-side and client-side modes agree; bad workloads are refused
with the field and its range; a cancelled run stops."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from live_helpers import progress_and_report
from optiserve.app import ServerThread
from optiserve.benchmarking.config import BenchmarkConfig
from optiserve.config import (
    CacheConfig,
    Config,
    EngineConfig,
    LedgerConfig,
    LoggingConfig,
    ModelConfig,
    ServerConfig,
)
from optiserve.models.remote.config import ProviderConfig
from optiserve_client import Client
from optiserve_client.v1 import optiserve_pb2 as pb
from optiserve_client.v1 import optiserve_pb2_grpc as pb_grpc
from providers.mock_provider import MockProvider

#: Per million tokens: input 1 $, output 2 $ (local) / 0.15 $ and 0.60 $ (remote).
LOCAL_PRICES = {"input_price_per_mtok": 1.0, "output_price_per_mtok": 2.0}
REMOTE_PRICES = {"input_price_per_mtok": 0.15, "output_price_per_mtok": 0.60}


@pytest.fixture(scope="module")
def mock() -> Iterator[MockProvider]:
    with MockProvider() as provider:
        yield provider


@pytest.fixture(scope="module")
def bserver(
    tiny_model_dir: Path, mock: MockProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerThread]:
    config = Config(
        server=ServerConfig(port=0, grace_period_s=2.0, drain_announce_s=0.0),
        logging=LoggingConfig(level="WARNING", format="text"),
        engine=EngineConfig(torch_threads=1),
        cache=CacheConfig(enabled=True, semantic_enabled=False),
        ledger=LedgerConfig(enabled=True),
        benchmark=BenchmarkConfig(max_total_requests=400, max_duration_s=30),
        models=(
            ModelConfig(
                name="tiny", source=str(tiny_model_dir), max_new_tokens_cap=512, **LOCAL_PRICES
            ),
            ModelConfig(
                name="mini",
                source="gpt-4o-mini",
                provider="oai",
                context_length=128_000,
                tier="cheap",
                **REMOTE_PRICES,
            ),
        ),
        providers=(
            ProviderConfig(
                name="oai",
                kind="openai",
                base_urls=(mock.openai_base_url,),
                api_key="sk-test",
                max_retries=0,
            ),
        ),
        data_dir=str(tmp_path_factory.mktemp("bench-data")),
    )
    thread = ServerThread(config)
    thread.start()
    yield thread
    thread.stop()


def _run(target: str, request: pb.BenchmarkRequest) -> tuple[list[pb.Progress], pb.BenchmarkReport]:
    with Client(target, timeout=300) as client:
        return progress_and_report(client.benchmark(request))


def _consistent(p: pb.BenchmarkPoint) -> None:
    """Counts add up and percentiles are ordered."""
    assert p.requests >= 1
    assert p.errors == sum(p.errors_by_status.values())
    assert p.latency_p50_ms <= p.latency_p90_ms <= p.latency_p95_ms <= p.latency_p99_ms
    assert p.ttft_p50_ms <= p.ttft_p90_ms <= p.ttft_p99_ms
    assert p.tpot_p50_ms <= p.tpot_p99_ms
    assert p.itl_p50_ms <= p.itl_p99_ms
    assert 0 < p.ttft_p50_ms <= p.latency_p50_ms + 1e-6
    assert p.cache_hits == p.cache_hits_exact + p.cache_hits_semantic
    assert p.cache_hit_rate == pytest.approx(p.cache_hits / p.requests)
    assert p.goodput_rps <= p.requests_per_s + 1e-9
    assert p.requests_per_s > 0 and p.tokens_per_s > 0 and p.duration_s > 0


@pytest.fixture(scope="module")
def local_report(bserver: ServerThread) -> tuple[list[pb.Progress], pb.BenchmarkReport]:
    request = pb.BenchmarkRequest(
        models=["tiny"],
        concurrency=[1, 4],
        max_new_tokens=[8],
        prompt_lengths=[32],
        requests_per_point=12,
        cache=[False, True],
        repeat_fraction=0.5,
        pin_output_length=True,
        seed=7,
        latency_target_p99_ms=60_000,
    )
    return _run(bserver.target, request)


def test_a_local_benchmark_is_consistent_and_priced(
    local_report: tuple[list[pb.Progress], pb.BenchmarkReport],
) -> None:
    _, report = local_report
    assert len(report.points) == 4  # cache off/on × concurrency 1/4
    for p in report.points:
        _consistent(p)
        assert p.model == "tiny"
        assert p.requests == 12 and p.errors == 0
        generated = p.requests - p.cache_hits
        # Pinned: every generated answer has exactly 8 tokens, every hit replays 8.
        assert p.completion_tokens == 8 * generated
        assert p.cached_tokens == 8 * p.cache_hits
        # Cost is the tokens times the prices (hits cost nothing and save what they replay).
        expected = (p.prompt_tokens * 1.0 + p.completion_tokens * 2.0) / 1e6
        assert p.cost_usd == pytest.approx(expected, rel=1e-6, abs=1e-12)
        assert not p.warnings
    off = [p for p in report.points if not p.cache]
    on = [p for p in report.points if p.cache]
    assert all(p.cache_hits == 0 for p in off)
    assert sum(p.cache_hits for p in on) > 0  # half the prompts repeat
    assert sum(p.cost_saved_usd for p in on) > 0
    assert report.recommendation.point_index in range(4)
    assert "p99 latency" in report.recommendation.reason


def test_progress_names_the_point_and_the_requests_done(
    local_report: tuple[list[pb.Progress], pb.BenchmarkReport],
) -> None:
    progress, _ = local_report
    assert progress
    assert {p.steps for p in progress} == {4}
    assert [p.step for p in progress] == sorted(p.step for p in progress)
    assert sorted({p.step for p in progress}) == [1, 2, 3, 4]
    for step in (1, 2, 3, 4):
        last = [p for p in progress if p.step == step][-1]
        assert last.done == last.total == 12


def test_a_remote_model_through_the_mock_provider(bserver: ServerThread) -> None:
    request = pb.BenchmarkRequest(
        models=["mini"], concurrency=[2], max_new_tokens=[16], requests_per_point=10
    )
    _, report = _run(bserver.target, request)
    (p,) = report.points
    _consistent(p)
    assert p.errors == 0
    assert p.completion_tokens > 0 and p.prompt_tokens > 0
    expected = (p.prompt_tokens * 0.15 + p.completion_tokens * 0.60) / 1e6
    assert p.cost_usd == pytest.approx(expected, rel=1e-6)


def test_client_side_and_server_side_agree(
    bserver: ServerThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from optiserve.cli import main

    common = ["--target", bserver.target, "--model", "tiny", "--concurrency", "2"]
    common += ["--requests", "16", "--max-new-tokens", "8", "--pin-output", "--seed", "3"]
    assert main(["bench", *common, "--json", str(tmp_path / "server.json")]) == 0
    assert main(["bench", *common, "--client-side", "--json", str(tmp_path / "client.json")]) == 0
    import json

    server = json.loads((tmp_path / "server.json").read_text())["points"][0]
    client = json.loads((tmp_path / "client.json").read_text())["points"][0]
    assert server["requests"] == client["requests"] == 16
    assert server["completion_tokens"] == client["completion_tokens"] == 16 * 8
    assert server["prompt_tokens"] == client["prompt_tokens"]  # same seeded prompts
    # The client side adds serialization and the network; on loopback that is small.
    assert client["latency_p50_ms"] >= 0.5 * server["latency_p50_ms"]
    assert client["latency_p50_ms"] <= 3 * server["latency_p50_ms"] + 50
    out = capsys.readouterr().out
    assert "p99 ms" in out and "tiny" in out


def test_the_cli_writes_the_table_json_and_plots(
    bserver: ServerThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from optiserve.cli import main

    code = main(
        [
            "bench",
            "--target",
            bserver.target,
            "--model",
            "tiny",
            "--concurrency",
            "1,2",
            "--requests",
            "6",
            "--max-new-tokens",
            "4",
            "--cache",
            "both",
            "--json",
            str(tmp_path / "r.json"),
            "--plot",
            str(tmp_path / "plots"),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0
    assert "cache on vs cache off" in out  # the side-by-side ratios
    assert "point 4/4" in err
    pngs = sorted((tmp_path / "plots").glob("*.png"))
    assert [p.name for p in pngs] == ["latency.png", "throughput.png", "ttft.png"]
    for png in pngs:
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert (tmp_path / "r.json").stat().st_size > 0


def test_open_loop_reports_the_target_and_achieved_rate(bserver: ServerThread) -> None:
    request = pb.BenchmarkRequest(
        models=["tiny"],
        arrival=pb.ARRIVAL_PROCESS_CONSTANT,
        arrival_rates=[20.0],
        concurrency=[8],
        max_new_tokens=[4],
        requests_per_point=20,
    )
    _, report = _run(bserver.target, request)
    (p,) = report.points
    _consistent(p)
    assert p.rate == 20.0 and p.target_rate == 20.0
    assert p.achieved_rate == pytest.approx(20.0, rel=0.1)


@pytest.mark.parametrize(
    ("fields", "code", "words"),
    [
        ({"concurrency": [0]}, grpc.StatusCode.INVALID_ARGUMENT, "concurrency must be in [1, 256]"),
        ({"models": []}, grpc.StatusCode.INVALID_ARGUMENT, "models must name at least one"),
        ({"models": ["nope"]}, grpc.StatusCode.INVALID_ARGUMENT, "unknown model or route 'nope'"),
        ({"requests_per_point": 20_000}, grpc.StatusCode.INVALID_ARGUMENT, "requests_per_point"),
        ({"duration_s": 31}, grpc.StatusCode.INVALID_ARGUMENT, "duration_s must be in [0, 30]"),
        (
            {"arrival": pb.ARRIVAL_PROCESS_POISSON, "arrival_rates": [0.0]},
            grpc.StatusCode.INVALID_ARGUMENT,
            "arrival_rates must be in (0,",
        ),
        ({"arrival_rates": [5.0]}, grpc.StatusCode.INVALID_ARGUMENT, "need an open-loop arrival"),
        ({"arrival": 9}, grpc.StatusCode.INVALID_ARGUMENT, "arrival 9 is unknown"),
        ({"max_new_tokens": [0]}, grpc.StatusCode.INVALID_ARGUMENT, "max_new_tokens must be in"),
        ({"repeat_fraction": 1.5}, grpc.StatusCode.INVALID_ARGUMENT, "repeat_fraction"),
        (
            {"requests_per_point": 200, "concurrency": [1, 2, 3]},
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "benchmark.max_total_requests (400)",
        ),
    ],
)
def test_bad_workloads_are_refused_naming_the_field(
    bserver: ServerThread, fields: dict[str, object], code: grpc.StatusCode, words: str
) -> None:
    request = pb.BenchmarkRequest(models=["tiny"])
    for key, value in fields.items():
        if isinstance(value, list):
            getattr(request, key)[:] = value  # type: ignore[index]
            if not value:
                request.ClearField(key)
        else:
            setattr(request, key, value)
    with grpc.insecure_channel(bserver.target) as channel, pytest.raises(grpc.RpcError) as info:
        list(pb_grpc.OptiServeStub(channel).Benchmark(request, timeout=30))
    assert info.value.code() == code, info.value.details()
    assert words in (info.value.details() or "")


def test_cancelling_stops_the_run_promptly(bserver: ServerThread) -> None:
    request = pb.BenchmarkRequest(
        models=["tiny"],
        concurrency=[4],
        max_new_tokens=[256],
        requests_per_point=100,
        pin_output_length=True,
    )
    channel = grpc.insecure_channel(bserver.target)
    call = pb_grpc.OptiServeStub(channel).Benchmark(request, timeout=120)
    for event in call:
        if event.HasField("progress") and event.progress.done >= 1:
            break
    started = time.monotonic()
    call.cancel()
    channel.close()
    # The run's slot (benchmark.max_running = 1) frees once its requests are cancelled.
    small = pb.BenchmarkRequest(models=["tiny"], requests_per_point=2, max_new_tokens=[2])
    refusals: list[str] = []
    while time.monotonic() - started < 5:
        try:
            _run(bserver.target, small)
            break
        except Exception as exc:  # RESOURCE_EXHAUSTED while the cancelled run winds down
            refusals.append(str(exc))
            time.sleep(0.1)
    else:
        pytest.fail(f"the cancelled run still held its slot after 5 s: {refusals[-1:]}")
    assert all("benchmark(s) running" in r for r in refusals)
    scheduler = bserver.app.catalogue.backend("tiny").scheduler  # type: ignore[attr-defined]
    assert scheduler.running_count == 0


def test_a_batch_size_sweep_sets_and_restores_the_scheduler(bserver: ServerThread) -> None:
    scheduler = bserver.app.catalogue.backend("tiny").scheduler  # type: ignore[attr-defined]
    configured = scheduler.config.max_batch_size
    request = pb.BenchmarkRequest(
        models=["tiny"],
        batch_sizes=[2, 0],
        concurrency=[4],
        max_new_tokens=[4],
        requests_per_point=8,
    )
    _, report = _run(bserver.target, request)
    assert [p.batch_size for p in report.points] == [2, 0]
    for p in report.points:
        _consistent(p)
        assert p.errors == 0
    assert scheduler.config.max_batch_size == configured
