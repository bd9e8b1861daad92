"""Generate end to end through the real server and the client."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from eos_first import PROMPT, build_eos_first_model, serving
from optiserve.app import ServerThread
from optiserve.config import Config
from optiserve_client import Client, FailedPrecondition
from optiserve_client.v1 import optiserve_pb2 as pb
from optiserve_client.v1 import optiserve_pb2_grpc as pb_grpc


def test_generate_returns_measured_summary(client: Client) -> None:
    result = client.generate(PROMPT, max_new_tokens=12)
    assert result.model == "tiny"
    assert result.provider == "local"
    assert result.finish_reason in ("length", "eos")
    assert result.usage.prompt_tokens > 0
    assert 1 <= result.usage.completion_tokens <= 12
    assert result.timings.total_ms >= result.timings.time_to_first_token_ms > 0
    assert result.route_reason == "default route"
    assert result.text


def test_greedy_is_deterministic_and_length_is_exact(client: Client) -> None:
    a = client.generate(PROMPT, max_new_tokens=10, model="tiny")
    b = client.generate(PROMPT, max_new_tokens=10, model="tiny")
    assert a.text == b.text
    assert a.route_reason == "requested"
    if a.finish_reason == "length":
        assert a.usage.completion_tokens == 10


def test_seeded_sampling_is_reproducible(client: Client) -> None:
    kwargs = {"max_new_tokens": 16, "temperature": 1.0, "top_p": 0.9, "top_k": 50}
    a = client.generate(PROMPT, seed=7, **kwargs)
    b = client.generate(PROMPT, seed=7, **kwargs)
    assert a.text == b.text
    others = {client.generate(PROMPT, seed=s, **kwargs).text for s in range(8, 12)}
    assert len(others | {a.text}) > 1, "different seeds should give different samples"


def test_stop_sequence_cuts_the_text(client: Client) -> None:
    full = client.generate(PROMPT, max_new_tokens=24).text
    assert len(full) > 6
    stop = full[3:6]
    cut = client.generate(PROMPT, max_new_tokens=24, stop=[stop])
    assert cut.finish_reason == "stop_sequence"
    assert cut.text == full[: full.index(stop)]
    assert stop not in cut.text


def test_chat_messages_use_the_chat_template(client: Client) -> None:
    result = client.generate(
        messages=[("system", "You are terse."), ("user", "Name a data structure.")],
        max_new_tokens=8,
    )
    # <|system|>...\n<|user|>...\n<|assistant|> is longer than the two contents alone.
    assert result.usage.prompt_tokens > 8
    assert result.usage.completion_tokens >= 1


def test_request_id_is_echoed(server: ServerThread) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.OptiServeStub(channel)
        response, call = stub.Generate.with_call(
            pb.GenerateRequest(prompt="hello", sampling=pb.SamplingParams(max_new_tokens=2)),
            metadata=(("x-request-id", "req-123"),),
            timeout=30,
        )
        assert response.request_id == "req-123"
        assert ("x-request-id", "req-123") in call.initial_metadata()
        own = stub.Generate(
            pb.GenerateRequest(
                request_id="mine", prompt="hello", sampling=pb.SamplingParams(max_new_tokens=2)
            ),
            timeout=30,
        )
        assert own.request_id == "mine"


def test_list_models_and_usage(client: Client) -> None:
    models = client.list_models()
    assert [m.name for m in models] == ["tiny"]
    assert models[0].default and not models[0].demo
    assert models[0].context_length == 512
    # Each model's caps are listed (the session model: default 16, cap 512).
    assert (models[0].default_max_new_tokens, models[0].max_new_tokens_cap) == (16, 512)
    assert not models[0].structured_output
    before = client.usage().total
    client.generate(PROMPT, max_new_tokens=3)
    after = client.usage()
    assert after.total.requests == before.requests + 1
    assert after.total.completion_tokens > before.completion_tokens
    assert after.uptime_s > 0
    assert [row.model for row in after.models] == ["tiny"]


def test_the_client_raises_failed_precondition_for_a_schema(client: Client) -> None:
    with pytest.raises(FailedPrecondition, match=r"cannot honour response_format\.json_schema"):
        client.generate(PROMPT, json_schema='{"type": "object"}')


@pytest.fixture(scope="module")
def eos_first(
    make_config: Callable[..., Config],
    tiny_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Client]:
    """A client of a server whose model ends PROMPT's answer at once (EOS first), with a
    default min_new_tokens of 2."""
    model_dir = build_eos_first_model(tiny_model_dir, tmp_path_factory.mktemp("eos-first"))
    with (
        serving(make_config(default_min_new_tokens=2), model_dir) as server,
        Client(server.target, timeout=60) as client,
    ):
        yield client


def test_min_new_tokens_holds_back_an_early_eos(eos_first: Client) -> None:
    empty = eos_first.generate(PROMPT, max_new_tokens=8, min_new_tokens=0)
    assert (empty.text, empty.finish_reason, empty.usage.completion_tokens) == ("", "eos", 0)
    held = eos_first.generate(PROMPT, max_new_tokens=8, min_new_tokens=5)
    assert held.usage.completion_tokens >= 5
    chunks = list(eos_first.stream(PROMPT, max_new_tokens=8, min_new_tokens=5))
    assert "".join(c.text for c in chunks) == held.text
    assert chunks[-1].completion is not None
    assert chunks[-1].completion.usage.completion_tokens == held.usage.completion_tokens


def test_the_model_default_min_new_tokens_applies_when_unset(eos_first: Client) -> None:
    default = eos_first.generate(PROMPT, max_new_tokens=8)
    assert default.usage.completion_tokens >= 2  # default_min_new_tokens = 2
    # A request for fewer tokens than the default minimum lowers it instead of failing.
    one = eos_first.generate(PROMPT, max_new_tokens=1)
    assert (one.finish_reason, one.usage.completion_tokens) == ("length", 1)
