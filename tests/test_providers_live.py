"""Remote providers through the real server: the real ``openai`` / ``anthropic`` SDKs talk
to a mock provider on 127.0.0.1; clients call the server over gRPC.

The golden cost table is computed by hand with ``Decimal`` (comments show the sums): the
ledger row matches exactly, the summary to float precision, and a streamed request costs
what the same unary one does.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import closing
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest

from optiserve.accounting.config import BudgetConfig, LedgerConfig
from optiserve.accounting.ledger import Ledger
from optiserve.app import ServerThread
from optiserve.config import CacheConfig, Config, LoggingConfig, ModelConfig, ServerConfig
from optiserve.models.remote.config import ProviderConfig
from optiserve.routing.config import RouteConfig
from optiserve_client.v1 import optiserve_pb2 as pb
from optiserve_client.v1 import optiserve_pb2_grpc as pb_grpc
from providers.mock_provider import MockProvider, Reply, Usage
from server_process import free_port, serve_process

KEY = "sk-test-SECRET-0123456789"
MISSING_KEY_ENV = "OPTISERVE_TEST_KEY_THAT_IS_NOT_SET"
M = Decimal(1_000_000)


def _models(tiny: Path) -> tuple[ModelConfig, ...]:
    openai_prices = {
        "input_price_per_mtok": 0.15,
        "output_price_per_mtok": 0.60,
        "cache_read_price_per_mtok": 0.075,
        "context_length": 128_000,
        "tier": "cheap",
        "quality": 0.4,
    }
    anthropic_prices = {
        "input_price_per_mtok": 1.0,
        "output_price_per_mtok": 5.0,
        "cache_read_price_per_mtok": 0.10,
        "cache_write_5m_price_per_mtok": 1.25,
        "cache_write_1h_price_per_mtok": 2.0,
        "context_length": 200_000,
        "tier": "balanced",
        "quality": 0.7,
    }
    return (
        ModelConfig(name="tiny", source=str(tiny), default_max_new_tokens=8, quality=0.1),
        # The canonical provider id as the name, and an alias: both priced alike.
        ModelConfig(name="gpt-4o-mini", source="gpt-4o-mini", provider="oai", **openai_prices),
        ModelConfig(name="mini", source="gpt-4o-mini", provider="oai", **openai_prices),
        ModelConfig(
            name="claude-haiku-4-5", source="claude-haiku-4-5", provider="ant", **anthropic_prices
        ),
        ModelConfig(name="haiku", source="claude-haiku-4-5", provider="ant", **anthropic_prices),
        ModelConfig(
            name="big",
            source="gpt-big",
            provider="oai",
            input_price_per_mtok=5.0,
            output_price_per_mtok=15.0,
            context_length=128_000,
            tier="premium",
            quality=0.95,
        ),
        ModelConfig(name="nokey", source="gpt-4o-mini", provider="nokey", context_length=8192),
    )


def _config(mock: MockProvider, tiny: Path, data: Path, **budget: float) -> Config:
    fast = {"timeout_s": 2.0, "max_retries": 1, "backoff_s": 0.01, "backoff_max_s": 0.05}
    return Config(
        server=ServerConfig(port=0, grace_period_s=2.0, drain_announce_s=0.0),
        logging=LoggingConfig(level="WARNING", format="text"),
        cache=CacheConfig(enabled=False),
        budget=BudgetConfig(**budget),
        ledger=LedgerConfig(enabled=True),
        models=_models(tiny),
        providers=(
            ProviderConfig(
                name="oai", kind="openai", base_urls=(mock.openai_base_url,), api_key=KEY, **fast
            ),
            ProviderConfig(
                name="ant",
                kind="anthropic",
                base_urls=(mock.anthropic_base_url,),
                api_key=KEY,
                **fast,
            ),
            ProviderConfig(
                name="nokey",
                kind="openai",
                base_urls=(mock.openai_base_url,),
                api_key_env=MISSING_KEY_ENV,
                **fast,
            ),
        ),
        routes=(
            RouteConfig(name="auto", models=("tiny", "mini", "haiku", "big"), max_attempts=3),
            RouteConfig(name="remote", models=("mini", "haiku", "big"), max_attempts=2),
        ),
        default_model="tiny",
        data_dir=str(data),
    )


@pytest.fixture(scope="module")
def mock() -> Iterator[MockProvider]:
    with MockProvider() as provider:
        yield provider


@pytest.fixture(scope="module")
def live(
    mock: MockProvider, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerThread, pb_grpc.OptiServeStub, Path]]:
    data = tmp_path_factory.mktemp("providers-data")
    assert MISSING_KEY_ENV not in os.environ
    thread = ServerThread(_config(mock, tiny_model_dir, data))
    thread.start()
    with grpc.insecure_channel(thread.target) as channel:
        yield thread, pb_grpc.OptiServeStub(channel), data / "ledger.sqlite3"
    thread.stop()


@pytest.fixture
def stub(
    live: tuple[ServerThread, pb_grpc.OptiServeStub, Path], mock: MockProvider
) -> pb_grpc.OptiServeStub:
    mock.reset()
    return live[1]


def _request(model: str, prompt: str = "What is the capital of France?", **kw: Any) -> Any:
    return pb.GenerateRequest(
        model=model, prompt=prompt, sampling=pb.SamplingParams(max_new_tokens=300), **kw
    )


def _call(stub: pb_grpc.OptiServeStub, request: Any, stream: bool) -> tuple[str, Any]:
    if not stream:
        reply = stub.Generate(request, timeout=20)
        return reply.text, reply.summary
    chunks = list(stub.StreamGenerate(request, timeout=20))
    assert chunks[-1].HasField("summary")
    return "".join(c.text_delta for c in chunks), chunks[-1].summary


# Usage of every golden case: a 2,000-token prompt (1,500 of them touching the provider's
# prompt cache where the case says so) and 300 output tokens.
GOLDEN: dict[tuple[str, str], tuple[Usage, Decimal]] = {
    # OpenAI: 2000 * 0.15 + 300 * 0.60 = 300 + 180 = 480 -> $0.000480
    ("openai", "none"): (Usage(2000, 300), Decimal(480) / M),
    # OpenAI: 500 * 0.15 + 1500 * 0.075 + 180 = 75 + 112.5 + 180 = 367.5 -> $0.0003675
    ("openai", "read"): (Usage(2000, 300, cache_read_tokens=1500), Decimal("367.5") / M),
    # Anthropic: 2000 * 1 + 300 * 5 = 3500 -> $0.0035
    ("anthropic", "none"): (Usage(2000, 300), Decimal(3500) / M),
    # Anthropic: 500 * 1 + 1500 * 1.25 + 1500 = 500 + 1875 + 1500 = 3875 -> $0.003875
    ("anthropic", "write_5m"): (Usage(2000, 300, cache_write_5m_tokens=1500), Decimal(3875) / M),
    # Anthropic: 500 * 1 + 1500 * 2 + 1500 = 5000 -> $0.005
    ("anthropic", "write_1h"): (Usage(2000, 300, cache_write_1h_tokens=1500), Decimal(5000) / M),
    # Anthropic: 500 * 1 + 1500 * 0.10 + 1500 = 2150 -> $0.00215
    ("anthropic", "read"): (Usage(2000, 300, cache_read_tokens=1500), Decimal(2150) / M),
}
NAMES = {
    "openai": {"canonical": "gpt-4o-mini", "alias": "mini"},
    "anthropic": {"canonical": "claude-haiku-4-5", "alias": "haiku"},
}


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("naming", ["canonical", "alias"])
@pytest.mark.parametrize("case", sorted(GOLDEN), ids=lambda c: f"{c[0]}-{c[1]}")
def test_golden_cost_table(
    live: tuple[ServerThread, pb_grpc.OptiServeStub, Path],
    mock: MockProvider,
    case: tuple[str, str],
    naming: str,
    stream: bool,
) -> None:
    mock.reset()
    usage, expected = GOLDEN[case]
    mock.script(Reply.ok("Paris is the capital.", usage=usage))
    request = _request(
        NAMES[case[0]][naming], request_id=f"golden-{case[0]}-{case[1]}-{naming}-{stream}"
    )
    text, summary = _call(live[1], request, stream)
    assert text == "Paris is the capital."
    assert summary.cost_usd == pytest.approx(float(expected), rel=1e-12)
    assert not summary.usage.estimated
    assert summary.usage.prompt_tokens == 2000 and summary.usage.completion_tokens == 300
    cached = usage.cache_read_tokens
    assert summary.usage.provider_cache_read_tokens == cached
    written = usage.cache_write_5m_tokens + usage.cache_write_1h_tokens
    assert summary.usage.provider_cache_write_tokens == written
    with closing(Ledger(live[2])) as ledger:
        (row,) = [r for r in ledger.rows() if r.request_id == request.request_id]
    assert row.cost_usd == expected  # exactly, not just to the cent
    assert row.counts.prompt_tokens == 2000 and not row.usage_estimated


def test_a_reply_without_usage_is_charged_its_reserved_worst_case(
    stub: pb_grpc.OptiServeStub, mock: MockProvider
) -> None:
    mock.script(Reply.ok("Paris.", omit_usage=True))
    prompt = "What is the capital of France?"
    text, summary = _call(stub, _request("mini", prompt), stream=True)
    # Reserved: (UTF-8 bytes + 8) prompt tokens at the highest prompt price ($0.15), 300
    # output tokens at $0.60 per million.
    worst = (Decimal(len(prompt) + 8) * Decimal("0.15") + 300 * Decimal("0.60")) / M
    assert text == "Paris." and summary.usage.estimated
    assert summary.cost_usd == pytest.approx(float(worst), rel=1e-12)


def test_an_auto_request_carries_its_decision_trace(stub: pb_grpc.OptiServeStub) -> None:
    reply = stub.Generate(
        pb.GenerateRequest(model="auto", prompt="Hello, who are you?"), timeout=30
    )
    route = reply.summary.trace.route
    assert route.route == "auto" and route.rule and route.tier
    assert set(route.features) >= {"tokens", "code", "maths"}
    assert route.premium_model == "big"
    assert reply.summary.trace.route_reason.startswith("route 'auto'")
    # The local model's context is known once it has loaded: the router is built after the
    # models, so the local model is never left out for a context of 0.
    assert "context 0" not in route.rule, route.rule


def test_a_missing_key_is_a_failed_precondition_naming_the_variable(
    stub: pb_grpc.OptiServeStub,
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Generate(_request("nokey"), timeout=10)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert MISSING_KEY_ENV in (info.value.details() or "")


def test_a_rejected_key_is_unauthenticated_and_never_echoed(
    stub: pb_grpc.OptiServeStub, mock: MockProvider
) -> None:
    mock.script(Reply.bad_key(echoed_key=KEY))
    with pytest.raises(grpc.RpcError) as info:
        stub.Generate(_request("mini"), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert KEY not in (info.value.details() or "") and "SECRET" not in str(info.value)


def test_a_provider_400_is_invalid_argument_with_its_message(
    stub: pb_grpc.OptiServeStub, mock: MockProvider
) -> None:
    mock.script(Reply.bad_request("max_tokens is too large for this model"))
    with pytest.raises(grpc.RpcError) as info:
        stub.Generate(_request("haiku"), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_tokens is too large for this model" in (info.value.details() or "")


def test_a_stream_cut_mid_way_ends_with_an_error_not_a_clean_finish(
    stub: pb_grpc.OptiServeStub, mock: MockProvider
) -> None:
    mock.script(Reply.cut("Paris is the capital of France.", after_chunks=2))
    received: list[Any] = []
    with pytest.raises(grpc.RpcError) as info:
        received.extend(stub.StreamGenerate(_request("remote"), timeout=10))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert received and not any(c.HasField("summary") for c in received)
    assert mock.calls == 1, "text was streamed: no retry, no fallback"


def test_a_failure_before_the_first_token_falls_back_within_bounds(
    stub: pb_grpc.OptiServeStub, mock: MockProvider
) -> None:
    mock.script(Reply.server_error(503), Reply.server_error(503), model="gpt-4o-mini")
    reply = stub.Generate(_request("remote", prompt="Say hi"), timeout=20)
    assert reply.summary.model != "mini"
    assert reply.summary.trace.fallbacks[0].startswith("mini: UNAVAILABLE")
    # max_retries = 1: at most 2 upstream calls per model, 2 models in the chain.
    assert mock.calls <= 2 * 2


def test_a_chain_that_fails_everywhere_is_bounded(
    stub: pb_grpc.OptiServeStub, mock: MockProvider
) -> None:
    mock.default_reply = Reply.server_error(500)
    try:
        with pytest.raises(grpc.RpcError) as info:
            stub.Generate(_request("remote", prompt="Say hi"), timeout=20)
    finally:
        mock.default_reply = Reply.ok()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert mock.calls == (1 + 1) * 2  # (1 + max_retries) x max_attempts, never more


def test_unknown_route_and_max_cost_errors(stub: pb_grpc.OptiServeStub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Generate(_request("no-such-route"), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "auto" in (info.value.details() or "")
    with pytest.raises(grpc.RpcError) as info:
        stub.Generate(_request("remote", budget=pb.Budget(max_cost_usd=1e-9)), timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "cheapest" in (info.value.details() or "")


def test_list_models_shows_prices_tiers_and_routes(stub: pb_grpc.OptiServeStub) -> None:
    models = {m.name: m for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models}
    haiku = models["haiku"]
    assert haiku.kind == pb.MODEL_KIND_REMOTE and haiku.provider == "ant"
    assert haiku.provider_model == "claude-haiku-4-5" and haiku.tier == "balanced"
    assert (haiku.input_price_per_mtok, haiku.cache_write_1h_price_per_mtok) == (1.0, 2.0)
    auto = models["auto"]
    assert auto.kind == pb.MODEL_KIND_ROUTE
    assert list(auto.route_models) == ["tiny", "mini", "haiku", "big"]


def test_get_usage_reports_the_ledger_by_day_model_and_tenant(
    stub: pb_grpc.OptiServeStub, live: tuple[ServerThread, pb_grpc.OptiServeStub, Path]
) -> None:
    stub.Generate(_request("mini"), timeout=10)
    usage = stub.GetUsage(pb.GetUsageRequest(), timeout=10)
    with closing(Ledger(live[2])) as ledger:
        rows = ledger.rows()
    assert sum(t.requests for t in usage.by_model) == len(rows)
    assert sum(t.requests for t in usage.by_day) == len(rows)
    assert {t.key for t in usage.by_tenant} == {"anonymous"}
    total = sum((r.cost_usd for r in rows), Decimal(0))
    assert sum(t.cost_usd for t in usage.by_model) == pytest.approx(float(total))


def test_a_concurrent_burst_never_overspends_the_budget(
    mock: MockProvider, tiny_model_dir: Path, tmp_path: Path
) -> None:
    budget = 0.02
    thread = ServerThread(_config(mock, tiny_model_dir, tmp_path, daily_usd=budget))
    thread.start()
    try:
        mock.reset()
        # 20 prompt tokens: within the byte bound the reservation is computed from.
        mock.default_reply = Reply.ok("ok", usage=Usage(20, 300), delay_s=0.05)
        with grpc.insecure_channel(thread.target) as channel:
            stub = pb_grpc.OptiServeStub(channel)

            def one(i: int) -> str:
                try:
                    stub.Generate(_request("haiku", request_id=f"burst-{i}"), timeout=30)
                    return "OK"
                except grpc.RpcError as exc:
                    return exc.code().name

            with concurrent.futures.ThreadPoolExecutor(32) as pool:
                outcomes = list(pool.map(one, range(100)))
        ledger_path = tmp_path / "ledger.sqlite3"
    finally:
        mock.default_reply = Reply.ok()
        thread.stop()
    with closing(Ledger(ledger_path)) as ledger:
        spent = sum((r.cost_usd for r in ledger.rows()), Decimal(0))
    # Each request reserves its worst case (38 prompt tokens at $2.00 + 300 at $5.00 per
    # million: $0.001576) and settles at $0.00152; the limit holds whatever the interleaving.
    assert spent <= Decimal(str(budget))
    assert outcomes.count("OK") >= 3 and "RESOURCE_EXHAUSTED" in outcomes
    assert set(outcomes) <= {"OK", "RESOURCE_EXHAUSTED"}


def test_kill_9_right_after_an_rpc_returned_loses_no_ledger_row(
    mock: MockProvider, tiny_model_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    config = tmp_path / "optiserve.toml"
    config.write_text(
        f'data_dir = "{tmp_path}"\ndefault_model = "mini"\n'
        f"[server]\nport = {port}\n[cache]\nenabled = false\n"
        f'[[providers]]\nname = "oai"\nkind = "openai"\nbase_urls = ["{mock.openai_base_url}"]\n'
        f'api_key = "{KEY}"\n'
        '[[models]]\nname = "mini"\nsource = "gpt-4o-mini"\nprovider = "oai"\n'
        "context_length = 8192\ninput_price_per_mtok = 0.15\noutput_price_per_mtok = 0.6\n"
    )
    mock.reset()
    proc = serve_process(config, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    returned: list[str] = []
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
            stub = pb_grpc.OptiServeStub(channel)
            for i in range(20):
                request_id = f"crash-{i}"
                stub.Generate(_request("mini", request_id=request_id), timeout=10)
                returned.append(request_id)
            proc.send_signal(signal.SIGKILL)  # at once, right after the last RPC returned
    finally:
        proc.kill()
        proc.wait(timeout=10)
    with closing(Ledger(tmp_path / "ledger.sqlite3")) as ledger:
        ids = {r.request_id for r in ledger.rows()}
    assert set(returned) <= ids


def test_sampling_an_anthropic_model_cannot_take_is_refused(stub: pb_grpc.OptiServeStub) -> None:
    request = _request("haiku")
    request.sampling.temperature = 0.7
    with pytest.raises(grpc.RpcError) as info:
        stub.Generate(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "sampling.temperature" in (info.value.details() or "")


def test_compression_reports_tokens_before_and_after(
    stub: pb_grpc.OptiServeStub, mock: MockProvider
) -> None:
    prompt = ("Please summarise   the  report.\n\n\n" * 3) + "The report says   costs rose. " * 20
    reply = stub.Generate(
        _request("mini", prompt=prompt, compression=pb.COMPRESSION_MODE_LOSSLESS), timeout=10
    )
    trace = reply.summary.trace.compression
    assert trace.mode == "lossless" and 0 < trace.tokens_after < trace.tokens_before
    sent = mock.requests[-1].body["messages"][-1]["content"]
    assert len(sent) < len(prompt) and "costs rose" in sent


def test_a_json_schema_answer_is_checked_and_a_local_model_refuses_it(
    stub: pb_grpc.OptiServeStub, mock: MockProvider
) -> None:
    schema = '{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}'
    mock.script(Reply.ok('{"city": "Paris"}'))
    reply = stub.Generate(
        _request("mini", response_format=pb.ResponseFormat(json_schema=schema)), timeout=10
    )
    assert reply.text == '{"city": "Paris"}'
    assert mock.requests[-1].body["response_format"]["type"] == "json_schema"
    with pytest.raises(grpc.RpcError) as info:
        stub.Generate(
            _request("tiny", response_format=pb.ResponseFormat(json_schema=schema)), timeout=10
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "constrained decoding" in (info.value.details() or "")
    with pytest.raises(grpc.RpcError) as info:
        stub.Generate(
            _request("mini", response_format=pb.ResponseFormat(json_schema='{"type": 5}')),
            timeout=10,
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid JSON Schema" in (info.value.details() or "")
