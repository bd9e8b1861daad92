"""The Quantize RPC through a real server: a variant built, measured, saved, served and
listed; progress streamed; bad input refused with the right status; cancellation removes
partial output; one job at a time; a variant registered while the source streams."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from live_helpers import progress_and_report
from optiserve.app import ServerThread
from optiserve.config import Config
from optiserve.models.config import ModelConfig
from optiserve.models.local.quantize.common import weight_bytes
from optiserve.models.local.quantize.config import QuantizeConfig
from optiserve.models.remote.config import ProviderConfig
from optiserve_client import Client, build_quantize_request
from optiserve_client.v1 import optiserve_pb2 as pb
from optiserve_client.v1 import optiserve_pb2_grpc as pb_grpc

#: Small measurements: these tests check the wiring, not the speed figures.
FAST = {"measure_new_tokens": 4, "measure_rounds": 1}


def _config(make_config: Callable[..., Config], models_dir: Path, **quantize: object) -> Config:
    config = make_config()
    q = QuantizeConfig(models_dir=str(models_dir), **{**FAST, **quantize})  # type: ignore[arg-type]
    return replace(config, quantize=q)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("variants")


@pytest.fixture(scope="module")
def qserver(make_config: Callable[..., Config], models_dir: Path) -> Iterator[ServerThread]:
    thread = ServerThread(_config(make_config, models_dir))
    thread.start()
    yield thread
    thread.stop()


def _run(target: str, request: pb.QuantizeRequest) -> tuple[list[pb.Progress], pb.QuantizeReport]:
    with Client(target, timeout=600) as client:
        return progress_and_report(client.quantize(request))


def _code(target: str, request: pb.QuantizeRequest) -> tuple[grpc.StatusCode, str]:
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.OptiServeStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Quantize(request, timeout=120))
    return info.value.code(), info.value.details() or ""


@pytest.fixture(scope="module")
def int8(qserver: ServerThread) -> tuple[list[pb.Progress], pb.QuantizeReport]:
    request = build_quantize_request("tiny", "int8_dynamic", variant_name="tiny-int8", serve=True)
    return _run(qserver.target, request)


def test_the_report_is_measured_and_its_sizes_are_the_files(
    int8: tuple[list[pb.Progress], pb.QuantizeReport], tiny_model_dir: Path, models_dir: Path
) -> None:
    _, r = int8
    assert r.variant_name == "tiny-int8"
    assert r.method == pb.QUANT_METHOD_INT8
    assert r.bits == 8
    assert "int8" in r.kernel
    assert Path(r.path) == (models_dir / "tiny-int8").resolve()
    assert r.size_bytes_after == weight_bytes(Path(r.path))
    assert r.size_bytes_before == weight_bytes(tiny_model_dir)
    assert r.size_ratio == pytest.approx(r.size_bytes_before / r.size_bytes_after)
    for figure in (
        r.tokens_per_s_before,
        r.tokens_per_s_after,
        r.tokens_per_s_b8_before,
        r.tokens_per_s_b8_after,
        r.time_to_first_token_ms_before,
        r.time_to_first_token_ms_after,
        r.load_s_before,
        r.load_s_after,
        r.perplexity_before,
        r.perplexity_after,
    ):
        assert figure > 0
    assert r.evaluation_tokens >= 64
    assert 0.0 <= r.token_agreement <= 1.0
    assert r.kl_divergence >= 0.0
    assert r.perplexity_delta_pct == pytest.approx(
        100 * (r.perplexity_after / r.perplexity_before - 1), rel=1e-6
    )
    slower = (
        r.tokens_per_s_after < r.tokens_per_s_before
        or r.tokens_per_s_b8_after < r.tokens_per_s_b8_before
    )
    assert r.slower_than_source == slower
    assert r.serving
    assert r.duration_s > 0
    # Nothing partial is left beside the variant.
    assert [p.name for p in models_dir.iterdir() if p.name.startswith(".partial-")] == []


def test_progress_streams_every_phase_in_order(
    int8: tuple[list[pb.Progress], pb.QuantizeReport],
) -> None:
    progress, _ = int8
    stages = [p.stage for p in progress]
    assert stages, "no progress before the report"
    assert "quantizing" in stages
    assert any(s.startswith("measuring") for s in stages)
    assert stages.index("quantizing") < next(
        i for i, s in enumerate(stages) if s.startswith("measuring")
    )
    assert stages[-1] == "registering"
    elapsed = [p.elapsed_s for p in progress]
    assert elapsed == sorted(elapsed)
    assert all(0.0 <= p.fraction <= 1.0 for p in progress)


def test_the_variant_is_listed_and_answers(
    int8: tuple[list[pb.Progress], pb.QuantizeReport], qserver: ServerThread
) -> None:
    _, r = int8
    with Client(qserver.target, timeout=60) as client:
        models = {m.name: m for m in client.list_models()}
        with grpc.insecure_channel(qserver.target) as channel:
            infos = pb_grpc.OptiServeStub(channel).ListModels(pb.ListModelsRequest()).models
        info = next(m for m in infos if m.name == "tiny-int8")
        assert "tiny-int8" in models
        assert info.quantization == "int8_dynamic"
        assert info.quant_bits == 8
        assert info.size_bytes == r.size_bytes_after
        assert info.variant_of
        answer = client.generate("Hello, who are you?", model="tiny-int8", max_new_tokens=8)
        assert answer.model == "tiny-int8"
        assert answer.usage.completion_tokens > 0


def test_a_restart_serves_the_saved_variants(
    int8: tuple[list[pb.Progress], pb.QuantizeReport],
    make_config: Callable[..., Config],
    models_dir: Path,
) -> None:
    (models_dir / ".partial-crashed-1234").mkdir()  # what a killed job leaves
    thread = ServerThread(_config(make_config, models_dir))
    thread.start()
    try:
        with Client(thread.target, timeout=60) as client:
            assert "tiny-int8" in {m.name for m in client.list_models()}
            answer = client.generate("Hello", model="tiny-int8", max_new_tokens=4)
            assert answer.usage.completion_tokens > 0
    finally:
        thread.stop()
    assert not (models_dir / ".partial-crashed-1234").exists()


def test_a_variant_not_served_is_saved_only(qserver: ServerThread, models_dir: Path) -> None:
    _, r = _run(qserver.target, build_quantize_request("tiny", "fp16", variant_name="tiny-fp16"))
    assert not r.serving
    assert r.bits == 16
    assert r.size_bytes_after == weight_bytes(models_dir / "tiny-fp16")
    assert r.size_ratio == pytest.approx(2.0, rel=0.05)
    with Client(qserver.target, timeout=60) as client:
        assert "tiny-fp16" not in {m.name for m in client.list_models()}


@pytest.mark.parametrize(
    ("request_fields", "code", "words"),
    [
        ({"method": 99}, grpc.StatusCode.INVALID_ARGUMENT, "not a quantization method"),
        ({"bits": 3}, grpc.StatusCode.INVALID_ARGUMENT, "does not support 3 bits"),
        ({"sparsity": 0.5}, grpc.StatusCode.INVALID_ARGUMENT, "sparsity applies to the pruning"),
        ({"model": "nope"}, grpc.StatusCode.NOT_FOUND, "unknown model 'nope'"),
        ({"model": ""}, grpc.StatusCode.INVALID_ARGUMENT, "model is required"),
        ({"variant_name": "../escape"}, grpc.StatusCode.INVALID_ARGUMENT, "is not allowed"),
        ({"variant_name": "a/b"}, grpc.StatusCode.INVALID_ARGUMENT, "is not allowed"),
        ({"variant_name": ".hidden"}, grpc.StatusCode.INVALID_ARGUMENT, "is not allowed"),
        ({"variant_name": "tiny"}, grpc.StatusCode.FAILED_PRECONDITION, "is taken"),
        (
            {"evaluation_text": "too short"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "evaluation text too short",
        ),
    ],
)
def test_bad_requests_are_refused_with_the_reason(
    qserver: ServerThread,
    models_dir: Path,
    request_fields: dict[str, object],
    code: grpc.StatusCode,
    words: str,
) -> None:
    request = pb.QuantizeRequest(model="tiny", method=pb.QUANT_METHOD_INT8)
    for key, value in request_fields.items():
        setattr(request, key, value)
    got, details = _code(qserver.target, request)
    assert got == code, details
    assert words in details
    assert not any(p.name.startswith(".partial-") for p in models_dir.iterdir())
    with Client(qserver.target, timeout=60) as client:  # still serving
        assert client.generate("Hello", max_new_tokens=2).usage.completion_tokens > 0


def test_a_remote_model_cannot_be_quantized(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    config = _config(make_config, tmp_path)
    remote = ModelConfig(
        name="far", source="gpt-x", provider="up", context_length=1000, tier="cheap"
    )
    provider = ProviderConfig(
        name="up", kind="openai_compatible", base_urls=("http://127.0.0.1:9/v1",)
    )
    config = replace(config, models=(*config.models, remote), providers=(provider,))
    thread = ServerThread(config)
    thread.start()
    try:
        request = build_quantize_request("far", "int8_dynamic")
        code, details = _code(thread.target, request)
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert "is not local" in details
        assert "tiny" in details  # names what can be quantized
    finally:
        thread.stop()


def test_not_enough_disk_is_refused_before_starting(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    thread = ServerThread(_config(make_config, tmp_path, min_free_bytes=2**62))
    thread.start()
    try:
        code, details = _code(thread.target, build_quantize_request("tiny", "int8_dynamic"))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "not enough free disk" in details
        assert list(tmp_path.iterdir()) == []
    finally:
        thread.stop()


def test_switched_off_says_so(make_config: Callable[..., Config], tmp_path: Path) -> None:
    thread = ServerThread(_config(make_config, tmp_path, enabled=False))
    thread.start()
    try:
        code, details = _code(thread.target, build_quantize_request("tiny", "fp16"))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert "quantize.enabled = false" in details
    finally:
        thread.stop()


@pytest.fixture
def slow_server(make_config: Callable[..., Config], tmp_path: Path) -> Iterator[ServerThread]:
    """Jobs that measure long enough to be caught running (many rounds), none queued."""
    config = _config(
        make_config, tmp_path, measure_rounds=200, measure_new_tokens=32, max_waiting=0
    )
    thread = ServerThread(config)
    thread.start()
    yield thread
    thread.stop()


def _start_until(target: str, request: pb.QuantizeRequest, stage: str) -> grpc.Future:
    """Start a Quantize call and return it once a progress event of ``stage`` arrived."""
    channel = grpc.insecure_channel(target)
    call = pb_grpc.OptiServeStub(channel).Quantize(request, timeout=600)
    for event in call:
        if event.HasField("progress") and event.progress.stage.startswith(stage):
            return call
    raise AssertionError(f"the job ended before {stage!r}")


def test_cancelling_stops_the_job_and_removes_partial_output(
    slow_server: ServerThread, tmp_path: Path
) -> None:
    request = build_quantize_request("tiny", "int8_dynamic", variant_name="cut")
    call = _start_until(slow_server.target, request, "measuring")
    assert any(p.name.startswith(".partial-cut") for p in tmp_path.iterdir())
    call.cancel()
    deadline = time.monotonic() + 30
    while any(tmp_path.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert list(tmp_path.iterdir()) == []
    # The slot is free again: the next job runs (checked up to its first progress).
    again = _start_until(slow_server.target, request, "quantizing")
    again.cancel()


def test_one_job_at_a_time_the_next_is_refused(slow_server: ServerThread) -> None:
    first = _start_until(
        slow_server.target, build_quantize_request("tiny", "fp16", variant_name="a"), "measuring"
    )
    try:
        code, details = _code(
            slow_server.target, build_quantize_request("tiny", "bf16", variant_name="b")
        )
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "a Quantize job is running" in details
        assert "quantize.max_waiting = 0" in details
    finally:
        first.cancel()


def test_a_stream_on_the_source_finishes_while_its_variant_is_registered(
    qserver: ServerThread,
) -> None:
    texts: list[str] = []
    errors: list[BaseException] = []

    def stream() -> None:
        try:
            with Client(qserver.target, timeout=300) as client:
                for _ in range(3):
                    chunks = list(
                        client.stream("Tell me a story", model="tiny", max_new_tokens=200)
                    )
                    texts.append("".join(c.text for c in chunks))
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=stream)
    worker.start()
    _, report = _run(
        qserver.target,
        build_quantize_request("tiny", "bf16", variant_name="tiny-bf16", serve=True),
    )
    worker.join(300)
    assert errors == []
    assert len(texts) == 3
    assert report.serving
    with Client(qserver.target, timeout=60) as client:
        assert (
            client.generate("Hi", model="tiny-bf16", max_new_tokens=2).usage.completion_tokens > 0
        )


def test_the_cli_shows_progress_and_the_report_table(
    qserver: ServerThread, capsys: pytest.CaptureFixture[str]
) -> None:
    from optiserve.cli import main

    code = main(["quantize", "--target", qserver.target, "tiny", "prune_2_4", "--name", "t24"])
    out, err = capsys.readouterr()
    assert code == 0
    assert "pruning" in err and "measuring" in err and "[" in err
    for row in ("variant", "size on disk", "tokens/s batch 8", "mean KL", "zero weights"):
        assert row in out
    assert "t24" in out
    assert "note:" in out  # pruning says plainly what its zeros save here
    code = main(["models", "--target", qserver.target])
    assert code == 0


def test_gptq_4bit_through_the_rpc_is_served(qserver: ServerThread, models_dir: Path) -> None:
    from optiserve.models.local.quantize.methods import method_named

    why = method_named("gptq").unavailable()
    if why:
        pytest.skip(why)
    request = build_quantize_request(
        "tiny", "gptq", bits=4, group_size=32, variant_name="tiny-gptq4", serve=True
    )
    _, r = _run(qserver.target, request)
    assert r.bits == 4
    assert "gptq" in r.kernel.lower()
    assert r.size_bytes_after == weight_bytes(models_dir / "tiny-gptq4")
    assert r.size_ratio > 1.0
    assert r.kl_divergence >= 0.0
    assert r.serving
    with Client(qserver.target, timeout=60) as client:
        answer = client.generate("Hello", model="tiny-gptq4", max_new_tokens=4)
        assert answer.usage.completion_tokens > 0


def test_a_variant_is_a_catalogue_entry_a_route_can_choose(
    int8: tuple[list[pb.Progress], pb.QuantizeReport],
    make_config: Callable[..., Config],
    tmp_path: Path,
) -> None:
    from optiserve.routing.config import RouteConfig

    _, r = int8
    config = _config(make_config, tmp_path)
    variant = ModelConfig(name="small", source=r.path, quality=0.4, description="int8 tiny")
    route = RouteConfig(name="auto", models=("small",))
    config = replace(
        config, models=(*config.models, variant), routes=(route,), default_model="auto"
    )
    thread = ServerThread(config)
    thread.start()
    try:
        with Client(thread.target, timeout=60) as client:
            models = {m.name: m for m in client.list_models()}
            assert models["small"].quantization == "int8_dynamic"
            assert models["small"].quant_bits == 8
            answer = client.generate("Hello, who are you?", max_new_tokens=4)
            assert answer.model == "small"
            assert answer.usage.completion_tokens > 0
    finally:
        thread.stop()


def test_the_embedder_report_gives_its_cosine_to_fp32(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    from optiserve.cache.embedder_fidelity import MIN_EMBEDDER_COSINE
    from optiserve.config import CacheConfig

    config = replace(
        _config(make_config, tmp_path / "variants"),
        cache=CacheConfig(enabled=True),
        data_dir=str(tmp_path / "data"),
    )
    thread = ServerThread(config)
    thread.start()
    try:
        progress, r = _run(thread.target, build_quantize_request("embedder", "int8_dynamic"))
        assert progress and progress[0].stage == "measuring embedder"
        assert r.embedding_sentences >= 32
        assert MIN_EMBEDDER_COSINE <= r.embedding_cosine_mean <= 1.0
        assert 0.9 <= r.embedding_cosine_min <= r.embedding_cosine_mean
        assert 0 < r.size_bytes_after < r.size_bytes_before
        assert r.size_ratio > 3
        assert any(n.startswith("offered") for n in r.notes)
        code, details = _code(thread.target, build_quantize_request("embedder", "fp16"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "int8_dynamic only" in details
    finally:
        thread.stop()
