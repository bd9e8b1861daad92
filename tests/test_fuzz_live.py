"""Property-based fuzzing of every request message of every OptiServe RPC against one live
server: whatever a client sends, the status is never INTERNAL or UNKNOWN, every error
says what was wrong, and the server keeps serving.

Covered: Generate and StreamGenerate (GenerateRequest and its nested ChatMessage,
SamplingParams, CachePolicy, Budget, ResponseFormat), Quantize (QuantizeRequest),
Benchmark (BenchmarkRequest), ListModels (ListModelsRequest), GetUsage (GetUsageRequest),
plus raw wire bytes to every method (random bytes, and well-formed wire records with wrong
wire types, unknown fields, invalid UTF-8 in string fields, malformed nested messages).

The server serves the tiny local model and two remote ones (OpenAI and Anthropic through
the mock provider, which answers '{"answer": "yes"}'), so response_format.json_schema also
reaches the providers' structured output and the answer's check; an answer that does not
match a fuzzed schema is UNAVAILABLE, which the property allows.

The server is set up so fuzzed inputs stay cheap: generations are a few tokens, a Quantize
request that passes every check is refused for disk room (quantize.min_free_bytes is
huge) so no job ever starts, and a Benchmark workload that passes may send at most two
requests of at most two tokens (and its call has a short deadline).
"""

from __future__ import annotations

import json
import math
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from optiserve.app import ServerThread
from optiserve.benchmarking.config import BenchmarkConfig
from optiserve.config import Config, ModelConfig
from optiserve.models.local.quantize.config import QuantizeConfig
from optiserve.models.remote.config import ProviderConfig
from optiserve_client import Client
from optiserve_client.v1 import optiserve_pb2 as pb
from optiserve_client.v1 import optiserve_pb2_grpc as pb_grpc
from providers.mock_provider import MockProvider, Reply

SERVICE = "/optiserve.v1.OptiServe/"
#: Every status a fuzzed request may end with besides OK.
ALLOWED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    # A remote model's answer (the mock provider's) that does not match a fuzzed schema.
    grpc.StatusCode.UNAVAILABLE,
}
#: Calls made with a short deadline on purpose (Benchmark) may also run out of time.
SHORT = ALLOWED | {grpc.StatusCode.DEADLINE_EXCEEDED}
TIMEOUT_S = 60.0
BENCHMARK_TIMEOUT_S = 3.0

FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _few(n: int) -> settings:
    return settings(FUZZ, max_examples=n)


# -- the server -------------------------------------------------------------------------


def _still_serving(target: str) -> None:
    with Client(target, timeout=60) as c:
        assert c.health() == "SERVING"
        usage = c.generate("still there?", max_new_tokens=2).usage
        assert usage.completion_tokens + usage.cached_tokens >= 1  # generated, or a cache hit


@pytest.fixture(scope="module")
def mock() -> Iterator[MockProvider]:
    """OpenAI and Anthropic on loopback: the remote models' structured-output path."""
    with MockProvider(record=False) as provider:
        provider.default_reply = Reply.ok('{"answer": "yes"}')
        yield provider


#: Remote models (through the mock provider): structured output, prices, budgets.
REMOTE = ["mini", "haiku"]


def _remote(name: str, source: str, provider: str) -> ModelConfig:
    return ModelConfig(
        name=name,
        source=source,
        provider=provider,
        context_length=128_000,
        tier="cheap",
        input_price_per_mtok=0.15,
        output_price_per_mtok=0.60,
    )


@pytest.fixture(scope="module")
def fuzz_server(
    make_config: Callable[..., Config],
    tmp_path_factory: pytest.TempPathFactory,
    mock: MockProvider,
) -> Iterator[ServerThread]:
    """One server for the module, checked serving when the module is done."""
    base = make_config(cache={"enabled": True})
    config = replace(
        base,
        models=(
            *base.models,
            _remote("mini", "gpt-4o-mini", "oai"),
            _remote("haiku", "claude-haiku", "ant"),
        ),
        providers=(
            ProviderConfig(
                name="oai",
                kind="openai",
                base_urls=(mock.openai_base_url,),
                api_key="k",
                max_retries=0,
            ),
            ProviderConfig(
                name="ant",
                kind="anthropic",
                base_urls=(mock.anthropic_base_url,),
                api_key="k",
                max_retries=0,
            ),
        ),
        # Every check of a Quantize request runs; one that passes them all is refused
        # for disk room, so no job starts.
        quantize=QuantizeConfig(
            models_dir=str(tmp_path_factory.mktemp("fuzz-variants")), min_free_bytes=2**62
        ),
        benchmark=BenchmarkConfig(
            max_requests_per_point=2,
            max_duration_s=1,
            max_concurrency=2,
            max_points=2,
            max_total_requests=2,
            max_prompts=4,
            max_new_tokens=2,
            max_prompt_length=8,
        ),
    )
    thread = ServerThread(config)
    thread.start()
    yield thread
    _still_serving(thread.target)
    thread.stop()


@pytest.fixture(scope="module")
def channel(fuzz_server: ServerThread) -> Iterator[grpc.Channel]:
    options = [("grpc.max_send_message_length", 64 << 20)]
    with grpc.insecure_channel(fuzz_server.target, options=options) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.OptiServeStub:
    return pb_grpc.OptiServeStub(channel)


def _status(call: Callable[[], Any], allowed: set[grpc.StatusCode] = ALLOWED) -> grpc.StatusCode:
    """Run ``call``; the status it ended with, checked against ``allowed``."""
    try:
        call()
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details() or ""
        if currently_in_test_context():
            event(f"{code.name}: {details[:28]}")
        assert code in allowed, (code, details[:1000])
        assert details.strip(), (code, "empty details")
        # The client refuses a status whose message is over its metadata limit (it then
        # sees RESOURCE_EXHAUSTED instead of the server's answer): errors must not echo
        # unbounded input.
        assert "received metadata size exceeds" not in details, (code, details[:1000])
        return code
    if currently_in_test_context():
        event("OK")
    return grpc.StatusCode.OK


# -- value strategies -------------------------------------------------------------------

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
NAN, INF = math.nan, math.inf

_CHARS = st.characters(codec="utf-8")  # no surrogates: protobuf refuses to set them
_SPECIAL_TEXT = [
    "",
    " ",
    "\x00",
    "\n\n\n",
    "\u202e\u200b\ufeff",
    "\U0001f999",
    "e\u0301",
    "{}",
    "../../etc/passwd",
    "tiny",
    "auto",
    "embedder",
]
_LONG_TEXT = st.builds(
    lambda piece, n: piece * n,
    st.sampled_from(["x", "word ", "é", "\U0001f999", "\n", "\x00"]),
    st.integers(1_000, 100_000),
)
TEXT = st.one_of(st.text(_CHARS, max_size=30), st.sampled_from(_SPECIAL_TEXT), _LONG_TEXT)
SHORT_TEXT = st.one_of(st.text(_CHARS, max_size=30), st.sampled_from(_SPECIAL_TEXT))
INT32 = st.one_of(
    st.integers(INT32_MIN, INT32_MAX),
    st.sampled_from([INT32_MIN, INT32_MIN + 1, -1, 0, 1, 2, 3, 4, 8, 64, INT32_MAX]),
)
UINT64 = st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 1, 2**32, 2**63, 2**64 - 1]))
_SPECIAL_FLOATS = [NAN, INF, -INF, 0.0, -0.0, 5e-324, 1e-45, 0.5, 1.0, -1.0, 3.4e38, 1.8e308]
DOUBLE = st.one_of(st.floats(), st.sampled_from(_SPECIAL_FLOATS))
FLOAT32 = st.one_of(st.floats(width=32), st.sampled_from(_SPECIAL_FLOATS))


def _mostly(usual: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``usual`` three times in four, else ``odd``: most requests get past the first
    check, so the later ones are fuzzed too."""
    return st.one_of(usual, usual, usual, odd)


def _enum(known: list[int]) -> st.SearchStrategy[Any]:
    """Known values mostly, unknown ones (any int32) too."""
    return _mostly(st.sampled_from(known), INT32)


def _maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


def _unit(odd: st.SearchStrategy[float]) -> st.SearchStrategy[Any]:
    """Unset, a value in [0, 1], or ``odd``."""
    return _mostly(st.one_of(st.none(), st.floats(0, 1)), odd)


#: Small valid values (fast generations) or values outside every range.
MAX_NEW_TOKENS = st.one_of(
    st.integers(1, 3), st.sampled_from([INT32_MIN, -1, 0, 513, 100_000, INT32_MAX])
)
MIN_NEW_TOKENS = st.one_of(st.integers(-2, 4), st.sampled_from([INT32_MIN, 17, INT32_MAX]))


def _json_value() -> st.SearchStrategy[Any]:
    """JSON values whose strings may hold lone surrogates (json.dumps escapes them)."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(),
        st.text(max_size=8),  # surrogates included
    )
    keys = st.one_of(
        st.sampled_from(["type", "properties", "items", "$ref", "$schema", "enum", "pattern"]),
        st.text(max_size=6),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)
        ),
        max_leaves=12,
    )


_SCHEMAS = [
    '{"type": "object"}',
    '{"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}',
    '{"type": "object", "title": "\\ud800"}',
    '{"type": "object", "properties": {"a": {"const": "\\udc00"}}}',
    '{"type": "object", "minimum": NaN}',
    '{"maximum": Infinity}',
    '{"$ref": "#/definitions/x"}',
    '{"$ref": "http://127.0.0.1:9/x.json"}',
    '{"$ref": "#nowhere"}',
    '{"$defs": {"a": {"type": "object"}}, "$ref": "#/$defs/a"}',
    '{"$defs": {"a": {"$anchor": "here", "type": "object"}}, "$ref": "#here"}',
    '{"$dynamicRef": "http://127.0.0.1:9/y"}',
    '{"type": "\\ud800"}',
    '{"\\udfff": 1}',
    '{"pattern": "\\ud800("}',
    '{"pattern": "("}',
    '{"$ref": "#/\\ud800"}',
    '{"$schema": "\\ud800"}',
    '{"$schema": "http://json-schema.org/draft-04/schema#", "type": "\\udc00"}',
    '{"minimum": 1e999}',
    '{"maxLength": 1' + "0" * 5000 + "}",
    '{"type": "object", "properties": {"a": {"type": "string", "format": "\\ud800"}}}',
    "[" * 100_000,
    '{"a":' * 50_000,
    '{"not":' * 300 + "{}" + "}" * 300,
    "\ufeff{}",
    "NaN",
    '{"$schema": []}',
    '{"$schema": true}',
    '{"$schema": 1}',
    '{"$schema": {}}',
    '{"$schema": null}',
    '{"$schema": "x"}',
]
_DEEP_SCHEMA = st.builds(
    lambda opener, n, closed: opener * n + ("{}" + "}" * n if closed else ""),
    st.sampled_from(["[", '{"a":', '{"not":', '{"items":', '{"properties": {"p":']),
    st.integers(1, 100_000),
    st.booleans(),
)
JSON_SCHEMA = st.one_of(
    st.just(""),
    st.sampled_from(_SCHEMAS),
    _DEEP_SCHEMA,
    st.builds(
        lambda key, t: json.dumps({key: t}), st.sampled_from(["type", "pattern", "x"]), _LONG_TEXT
    ),
    st.builds(json.dumps, _json_value()),
    st.builds(lambda v: json.dumps({"type": "object", "properties": v}), _json_value()),
    TEXT,
)
ROLE = st.one_of(
    st.just("user"),
    st.sampled_from(["user", "system", "assistant", "", "USER", "tool", "user\x00"]),
    TEXT,
)
MODEL = st.one_of(st.sampled_from(["", "tiny", "auto", "embedder"]), SHORT_TEXT, _LONG_TEXT)


def _set(message: Any, field: str, value: Any) -> None:
    if value is not None:
        setattr(message, field, value)


#: The parts of a GenerateRequest one example fuzzes ("all": every part at once; otherwise
#: one part, the others left valid, so the request gets past the checks before it).
PARTS = ["all", "all", "text", "sampling", "cache", "budget", "schema", "enums", "ids"]


@st.composite
def generate_requests(draw: st.DrawFn) -> pb.GenerateRequest:
    """Any GenerateRequest: every field and nested message, valid or not."""
    part = draw(st.sampled_from(PARTS))

    def fuzzed(name: str) -> bool:
        return part in ("all", name)

    msg = pb.GenerateRequest()
    msg.model = draw(st.sampled_from(["", "tiny", *REMOTE]))
    if fuzzed("ids"):
        request_ids = st.sampled_from(["", "abc-123", "~" * 128, "x" * 129, "a b"])
        _set(msg, "request_id", draw(_mostly(st.one_of(st.none(), request_ids), SHORT_TEXT)))
        msg.model = draw(_mostly(st.sampled_from(["", "tiny", *REMOTE]), MODEL))
    if not fuzzed("text"):
        msg.prompt = draw(st.sampled_from(["hi", "What is FAISS?", "Hello, world"]))
    else:
        # Mostly exactly one of prompt and messages (the others are refused at once).
        shape = draw(st.sampled_from(["prompt", "prompt", "messages", "messages", "both", "none"]))
        if shape in ("prompt", "both"):
            msg.prompt = draw(TEXT)
        if shape in ("messages", "both"):
            n = draw(st.one_of(st.integers(0, 4), st.sampled_from([500, 5_000])))
            content = TEXT if n <= 4 else SHORT_TEXT
            turns = draw(st.lists(st.tuples(ROLE, content), min_size=min(n, 4), max_size=4))
            turns = (turns * (n // max(len(turns), 1) + 1))[:n] if turns else []
            msg.messages.extend(pb.ChatMessage(role=r, content=c) for r, c in turns)
    s = msg.sampling
    if not fuzzed("sampling"):
        s.max_new_tokens = draw(st.integers(1, 3))
    else:
        _set(s, "max_new_tokens", draw(_maybe(MAX_NEW_TOKENS)))
        _set(s, "temperature", draw(_mostly(st.one_of(st.none(), st.floats(0, 2)), FLOAT32)))
        _set(s, "top_p", draw(_unit(FLOAT32)))
        _set(s, "top_k", draw(_mostly(st.one_of(st.none(), st.integers(0, 50)), INT32)))
        stops = draw(
            st.one_of(
                st.lists(SHORT_TEXT, max_size=4),
                st.builds(lambda s_, n: [s_] * n, SHORT_TEXT, st.integers(100, 10_000)),
            )
        )
        s.stop.extend(stops)
        _set(s, "seed", draw(_maybe(UINT64)))
        _set(s, "min_new_tokens", draw(_maybe(MIN_NEW_TOKENS)))
    if fuzzed("cache") or fuzzed("enums"):
        c = msg.cache
        c.mode = draw(_enum([0, 1, 2, 3]))
        if fuzzed("cache"):
            _set(c, "semantic_threshold", draw(_unit(FLOAT32)))
            _set(c, "ttl_seconds", draw(_mostly(st.one_of(st.none(), st.floats(0, 1e6)), DOUBLE)))
    if fuzzed("budget"):
        _set(msg.budget, "max_cost_usd", draw(_mostly(st.one_of(st.none(), st.floats(0)), DOUBLE)))
        _set(msg.budget, "min_quality", draw(_unit(DOUBLE)))
    if fuzzed("schema"):
        msg.response_format.json_schema = draw(JSON_SCHEMA)
        msg.model = draw(st.sampled_from(["tiny", *REMOTE, *REMOTE]))
    if fuzzed("enums"):
        msg.compression = draw(_enum([0, 1, 2]))
    return msg


def _no_embedder_job(msg: pb.QuantizeRequest) -> pb.QuantizeRequest:
    """Make the one request that would start a job (the cache's embedder, which needs no
    disk room) ask to be served, which the embedder refuses."""
    if (
        msg.model == "embedder"
        and msg.method == pb.QUANT_METHOD_INT8
        and msg.bits in (0, 8)
        and not msg.sparsity
        and not msg.group_size
    ):
        msg.serve = True
    return msg


@st.composite
def quantize_requests(draw: st.DrawFn) -> pb.QuantizeRequest:
    """Any QuantizeRequest; one part fuzzed (or all), the others valid (PARTS)."""
    part = draw(st.sampled_from(["all", "all", "method", "names", "texts"]))

    def pick(name: str, valid: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> Any:
        return draw(odd if part in ("all", name) else valid)

    msg = pb.QuantizeRequest(
        model=pick("names", st.just("tiny"), _mostly(st.just("tiny"), MODEL)),
        method=pick("method", st.just(pb.QUANT_METHOD_FP16), _enum(list(range(1, 8)))),
        bits=pick("method", st.just(0), st.one_of(st.sampled_from([0, 2, 3, 4, 8, 16]), INT32)),
        group_size=pick(
            "method", st.just(0), st.one_of(st.sampled_from([-1, 0, 32, 128, 3]), INT32)
        ),
        variant_name=pick(
            "names",
            st.just(""),
            st.one_of(st.sampled_from(["", "v1", "tiny", "..", ".hidden", "a/b", "x" * 200]), TEXT),
        ),
        serve=draw(st.booleans()),
        sparsity=pick("method", st.just(0.0), _mostly(st.sampled_from([0.0, 0.5]), DOUBLE)),
        evaluation_text=pick("texts", st.just(""), st.one_of(st.just(""), TEXT)),
    )
    msg.calibration_texts.extend(
        pick(
            "texts",
            st.just([]),
            st.one_of(
                st.lists(TEXT, max_size=3),
                st.builds(lambda t, n: [t] * n, SHORT_TEXT, st.integers(100, 5_000)),
            ),
        )
    )
    return _no_embedder_job(msg)


def _int_list(valid: st.SearchStrategy[int]) -> st.SearchStrategy[list[int]]:
    return _mostly(
        st.lists(valid, max_size=2),
        st.one_of(
            st.lists(st.one_of(valid, INT32), max_size=3),
            st.builds(lambda v, n: [v] * n, st.one_of(valid, INT32), st.integers(100, 20_000)),
        ),
    )


@st.composite
def benchmark_requests(draw: st.DrawFn) -> pb.BenchmarkRequest:
    """Any BenchmarkRequest; one part fuzzed (or all), the others valid: a workload of one
    request of one token (PARTS)."""
    part = draw(st.sampled_from(["all", "all", "lists", "scalars", "enums", "prompts"]))

    def pick(name: str, valid: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> Any:
        return draw(odd if part in ("all", name) else valid)

    def unit(high: float) -> st.SearchStrategy[Any]:
        return _mostly(st.floats(0, high), DOUBLE)

    arrival = pick("enums", st.just(pb.ARRIVAL_PROCESS_CLOSED), _enum([0, 1, 2]))
    msg = pb.BenchmarkRequest(
        requests_per_point=pick("scalars", st.just(1), _mostly(st.integers(0, 2), INT32)),
        repeat_fraction=pick("scalars", st.just(0.0), unit(1)),
        seed=draw(UINT64),
        input_distribution=pick("enums", st.just(0), _enum([0, 1, 2])),
        input_spread=pick("scalars", st.just(0.0), unit(1)),
        arrival=arrival,
        duration_s=pick("scalars", st.just(0.0), unit(1)),
        pin_output_length=draw(st.booleans()),
        slo_ttft_ms=pick("scalars", st.just(0.0), unit(1e4)),
        slo_tpot_ms=pick("scalars", st.just(0.0), unit(1e4)),
        slo_e2e_ms=pick("scalars", st.just(0.0), unit(1e4)),
        latency_target_p99_ms=pick("scalars", st.just(0.0), unit(1e4)),
    )
    msg.models.extend(
        pick("lists", st.just(["tiny"]), _mostly(st.just(["tiny"]), st.lists(MODEL, max_size=3)))
    )
    msg.prompt_lengths.extend(pick("lists", st.just([4]), _int_list(st.integers(1, 8))))
    msg.max_new_tokens.extend(pick("lists", st.just([1]), _int_list(st.integers(1, 2))))
    msg.concurrency.extend(pick("lists", st.just([1]), _int_list(st.integers(1, 2))))
    msg.batch_sizes.extend(pick("lists", st.just([]), _int_list(st.integers(0, 2))))
    msg.prompts.extend(pick("prompts", st.just([]), st.lists(TEXT, max_size=5)))
    open_loop = arrival in (pb.ARRIVAL_PROCESS_POISSON, pb.ARRIVAL_PROCESS_CONSTANT)
    msg.arrival_rates.extend(
        pick(
            "lists",
            st.just([100.0] if open_loop else []),
            _mostly(
                st.lists(st.floats(1, 1000), max_size=1),
                st.one_of(
                    st.lists(DOUBLE, max_size=3),
                    st.builds(lambda v, n: [v] * n, DOUBLE, st.integers(100, 20_000)),
                ),
            ),
        )
    )
    msg.cache.extend(pick("lists", st.just([]), st.lists(st.booleans(), max_size=3)))
    _set(
        msg,
        "warmup_requests",
        pick("scalars", st.just(0), _mostly(st.sampled_from([None, 0, 1]), INT32)),
    )
    return msg


# -- wire-level strategies --------------------------------------------------------------


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint((field << 3) | wire_type)


def _len_field(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


#: Byte strings that are not UTF-8: a lone continuation byte, 0xff, an encoded surrogate,
#: an overlong NUL, a truncated 4-byte sequence, a code point above U+10FFFF.
BAD_UTF8 = [b"\x80", b"\xff", b"\xed\xa0\x80", b"\xc0\x80", b"\xf0\x9f\xa6", b"\xf4\x90\x80\x80"]


@st.composite
def wire_records(draw: st.DrawFn, depth: int = 0) -> bytes:
    """One wire record: any field number (known ones mostly), any wire type, any payload;
    length-delimited payloads may be invalid UTF-8 or (malformed) nested messages."""
    field = draw(st.one_of(st.integers(1, 21), st.integers(1, 2**29 - 1)))
    wire_type = draw(st.sampled_from([0, 1, 2, 5, 0, 2, 3, 4, 6, 7]))
    if wire_type == 0:
        value = draw(st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([2**63, 2**64 - 1])))
        body = _varint(value)
        if draw(st.booleans()):  # an overlong or unterminated varint
            body = draw(st.sampled_from([b"\xff" * 11, b"\x80", b"\xff\xff\xff\xff\xff\xff"]))
        return _key(field, 0) + body
    if wire_type == 1:
        return _key(field, 1) + struct.pack("<d", draw(DOUBLE))
    if wire_type == 5:
        return _key(field, 5) + struct.pack("<f", draw(st.floats(width=32)))
    if wire_type == 2:
        payload = draw(
            st.one_of(
                st.binary(max_size=40),
                st.sampled_from(BAD_UTF8),
                st.builds(lambda t: t.encode("utf-8", "surrogatepass"), st.text(max_size=10)),
                st.lists(wire_records(depth + 1), max_size=3).map(b"".join)
                if depth < 3
                else st.just(b""),
            )
        )
        record = _len_field(field, payload)
        if draw(st.integers(0, 9)) == 0:  # a length past the end
            record = _key(field, 2) + _varint(len(payload) + draw(st.integers(1, 2**32)))
        return record
    return _key(field, wire_type) + draw(st.binary(max_size=8))


WIRE = st.one_of(
    st.binary(max_size=300),
    st.lists(wire_records(), max_size=8).map(b"".join),
)

UNARY = ["Generate", "ListModels", "GetUsage"]
STREAMING = ["StreamGenerate", "Quantize", "Benchmark"]


def _raw_call(channel: grpc.Channel, method: str, data: bytes) -> grpc.StatusCode:
    def identity(b: bytes) -> bytes:
        return b

    timeout = BENCHMARK_TIMEOUT_S if method == "Benchmark" else TIMEOUT_S
    allowed = SHORT if method == "Benchmark" else ALLOWED
    path = SERVICE + method
    if method in STREAMING:
        stream = channel.unary_stream(
            path, request_serializer=identity, response_deserializer=identity
        )
        return _status(lambda: list(stream(data, timeout=timeout)), allowed)
    unary = channel.unary_unary(path, request_serializer=identity, response_deserializer=identity)
    return _status(lambda: unary(data, timeout=timeout), allowed)


# -- the properties ---------------------------------------------------------------------


@_few(300)
@given(request=generate_requests())
def test_generate_fuzz(stub: pb_grpc.OptiServeStub, request: pb.GenerateRequest) -> None:
    _status(lambda: stub.Generate(request, timeout=TIMEOUT_S))


@_few(150)
@given(request=generate_requests())
def test_stream_generate_fuzz(stub: pb_grpc.OptiServeStub, request: pb.GenerateRequest) -> None:
    _status(lambda: list(stub.StreamGenerate(request, timeout=TIMEOUT_S)))


@_few(150)
@given(request=quantize_requests())
def test_quantize_fuzz(stub: pb_grpc.OptiServeStub, request: pb.QuantizeRequest) -> None:
    code = _status(lambda: list(stub.Quantize(request, timeout=TIMEOUT_S)))
    assert code != grpc.StatusCode.OK, "a fuzzed Quantize job must never start here"


@_few(200)
@given(request=benchmark_requests())
def test_benchmark_fuzz(stub: pb_grpc.OptiServeStub, request: pb.BenchmarkRequest) -> None:
    _status(lambda: list(stub.Benchmark(request, timeout=BENCHMARK_TIMEOUT_S)), SHORT)


@_few(60)
@given(model=st.one_of(SHORT_TEXT, st.text(_CHARS, min_size=100, max_size=1_000)))
def test_get_usage_and_list_models_fuzz(stub: pb_grpc.OptiServeStub, model: str) -> None:
    _status(lambda: stub.GetUsage(pb.GetUsageRequest(model=model), timeout=TIMEOUT_S))
    _status(lambda: stub.ListModels(pb.ListModelsRequest(), timeout=TIMEOUT_S))


@_few(40)
@given(
    request_id=st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300),
    api_key=st.one_of(
        st.none(), st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=300)
    ),
)
def test_metadata_fuzz(stub: pb_grpc.OptiServeStub, request_id: str, api_key: str | None) -> None:
    """The x-request-id and x-api-key headers (any value grpc lets a client send)."""
    metadata = [("x-request-id", request_id)]
    if api_key is not None:
        metadata.append(("x-api-key", api_key))
    request = pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(max_new_tokens=1))
    _status(lambda: stub.Generate(request, timeout=TIMEOUT_S, metadata=metadata))


@_few(400)
@given(method=st.sampled_from(UNARY + STREAMING), data=WIRE)
def test_raw_wire_fuzz(channel: grpc.Channel, method: str, data: bytes) -> None:
    _raw_call(channel, method, data)


@_few(20)
@given(method=st.text(_CHARS, min_size=1, max_size=20), data=st.binary(max_size=50))
def test_unknown_method_is_unimplemented(channel: grpc.Channel, method: str, data: bytes) -> None:
    call = channel.unary_unary(SERVICE + "X" + method.replace("/", "_"))
    code = _status(lambda: call(data, timeout=TIMEOUT_S), {grpc.StatusCode.UNIMPLEMENTED})
    assert code == grpc.StatusCode.UNIMPLEMENTED


# -- invalid UTF-8 in every string field -------------------------------------------------

#: (method, string fields by number, a nested message's prefix) for every request message.
_STRING_FIELDS: list[tuple[str, str, Callable[[bytes], bytes]]] = [
    ("Generate", "request_id", lambda b: _len_field(1, b)),
    ("Generate", "prompt", lambda b: _len_field(2, b)),
    ("Generate", "model", lambda b: _len_field(4, b)),
    ("Generate", "messages.role", lambda b: _len_field(3, _len_field(1, b))),
    ("Generate", "messages.content", lambda b: _len_field(3, _len_field(2, b))),
    ("Generate", "sampling.stop", lambda b: _len_field(5, _len_field(5, b))),
    ("Generate", "response_format.json_schema", lambda b: _len_field(8, _len_field(1, b))),
    ("StreamGenerate", "prompt", lambda b: _len_field(2, b)),
    ("StreamGenerate", "messages.content", lambda b: _len_field(3, _len_field(2, b))),
    ("Quantize", "model", lambda b: _len_field(1, b)),
    ("Quantize", "calibration_texts", lambda b: _len_field(5, b)),
    ("Quantize", "variant_name", lambda b: _len_field(6, b)),
    ("Quantize", "evaluation_text", lambda b: _len_field(9, b)),
    ("Benchmark", "models", lambda b: _len_field(1, b)),
    ("Benchmark", "prompts", lambda b: _len_field(9, b)),
    ("GetUsage", "model", lambda b: _len_field(1, b)),
    ("ListModels", "(unknown field 1)", lambda b: _len_field(1, b)),
]


@pytest.mark.parametrize(
    ("method", "field", "build"), _STRING_FIELDS, ids=[f"{m}-{f}" for m, f, _ in _STRING_FIELDS]
)
def test_invalid_utf8_in_string_fields(
    channel: grpc.Channel, method: str, field: str, build: Callable[[bytes], bytes]
) -> None:
    for bad in BAD_UTF8:
        code = _raw_call(channel, method, build(b"ok " + bad + b" ok"))
        if method == "ListModels":  # an unknown field: skipped, whatever it holds
            assert code == grpc.StatusCode.OK
        else:
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (field, bad)


# -- regressions: requests the fuzzing found that the server mishandled --------------------


LONG_NAME = "m" * 20_000


def _error(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def _short_invalid_argument(error: grpc.RpcError, needle: str) -> None:
    details = error.details() or ""
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, details[:500]
    assert needle in details, details[:500]
    assert len(details) < 1_000, details[:500]


@pytest.mark.parametrize(
    "schema",
    [
        "[" * 100_000,  # json.loads: RecursionError
        '{"a":' * 50_000,
        '{"not":' * 300 + "{}" + "}" * 300,  # parses; check_schema: RecursionError
        '{"items":' * 65 + "{}" + "}" * 65,  # one level over the limit
    ],
    ids=["array-100000", "object-50000", "not-300", "items-65"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_deeply_nested_json_schema_is_invalid_argument(
    stub: pb_grpc.OptiServeStub, schema: str, stream: bool
) -> None:
    """Was INTERNAL (RecursionError in json.loads or in the metaschema check)."""
    request = pb.GenerateRequest(prompt="hi", response_format=pb.ResponseFormat(json_schema=schema))

    def call() -> None:
        if stream:
            list(stub.StreamGenerate(request, timeout=TIMEOUT_S))
        else:
            stub.Generate(request, timeout=TIMEOUT_S)

    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "response_format.json_schema nests arrays and objects too deeply; at most 64" in (
        info.value.details() or ""
    )


@pytest.mark.parametrize(
    ("value", "kind"),
    [("[]", "array"), ("true", "boolean"), ("1", "number"), ("{}", "object"), ("null", "null")],
)
def test_json_schema_with_a_non_string_dollar_schema_is_invalid_argument(
    stub: pb_grpc.OptiServeStub, value: str, kind: str
) -> None:
    """Was INTERNAL (jsonschema's validator_for: TypeError for a list or an object,
    AttributeError for a boolean or a number). Found by the fuzzing with a random seed."""
    request = pb.GenerateRequest(
        prompt="hi", response_format=pb.ResponseFormat(json_schema=f'{{"$schema": {value}}}')
    )
    error = _error(lambda: stub.Generate(request, timeout=TIMEOUT_S))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert (
        "response_format.json_schema's $schema must be a string, the URI of a JSON Schema "
        f'metaschema such as "https://json-schema.org/draft/2020-12/schema", got a JSON {kind}'
    ) in (error.details() or "")


@pytest.mark.parametrize("model", REMOTE)
@pytest.mark.parametrize(
    ("schema", "needle"),
    [
        (
            '{"type": "object", "title": "\\ud800"}',
            "response_format.json_schema holds a string with a lone surrogate ('\\ud800'); "
            "use valid Unicode",
        ),
        ('{"\\udfff": {}}', "holds a key with a lone surrogate ('\\udfff')"),
        ('{"enum": ["\\udc00"]}', "holds a string with a lone surrogate"),
        (
            '{"type": "object", "minimum": NaN}',
            "response_format.json_schema holds NaN, which is not JSON (numbers must be finite)",
        ),
        ('{"maximum": -Infinity}', "holds -Infinity, which is not JSON"),
        (
            '{"minimum": 1e999}',
            "holds 1e999 (out of a double's range), which is not JSON (numbers must be finite)",
        ),
        (
            '{"$ref": "#/definitions/x"}',
            "has $ref '#/definitions/x', which points to nothing in the document",
        ),
        (
            '{"$ref": "http://127.0.0.1:9/x.json"}',
            "has $ref 'http://127.0.0.1:9/x.json', which is not a local reference; the server "
            'fetches no schemas: put the definition under "$defs" and refer to it as '
            '"#/$defs/<name>"',
        ),
        (
            '{"$ref": "#nowhere"}',
            'has $ref \'#nowhere\', but no "$anchor" or "$dynamicAnchor" in the document is named '
            "'nowhere'",
        ),
        (
            '{"$ref": "#"}',
            "response_format.json_schema's references loop: a $ref leads back to itself "
            "without any instance in between",
        ),
        ('{"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}', "references loop"),
    ],
    ids=[
        "surrogate",
        "surrogate-key",
        "surrogate-enum",
        "nan",
        "infinity",
        "overflow",
        "pointer",
        "remote",
        "anchor",
        "loop",
        "loop-defs",
    ],
)
def test_json_schema_a_provider_cannot_take_is_invalid_argument(
    stub: pb_grpc.OptiServeStub, model: str, schema: str, needle: str
) -> None:
    """Were INTERNAL on remote models, after the checks: encoding the provider request
    (UnicodeEncodeError for a lone surrogate, ValueError for NaN/Infinity: httpx sends
    strict JSON), or checking the answer (jsonschema's unresolvable $ref, a remote $ref
    even fetched from wherever it pointed; RecursionError for a $ref loop)."""
    request = pb.GenerateRequest(
        prompt="hi", model=model, response_format=pb.ResponseFormat(json_schema=schema)
    )
    for call in (
        lambda: stub.Generate(request, timeout=TIMEOUT_S),
        lambda: list(stub.StreamGenerate(request, timeout=TIMEOUT_S)),
    ):
        error = _error(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert needle in (error.details() or ""), error.details()


@pytest.mark.parametrize("model", REMOTE)
@pytest.mark.parametrize(
    "schema",
    [
        '{"$defs": {"a": {"type": "object"}}, "$ref": "#/$defs/a"}',
        '{"$defs": {"a": {"$anchor": "here", "type": "object"}}, "$ref": "#here"}',
        '{"type": "object", "properties": {"answer": {"type": "string"}, "more": {"$ref": "#"}}}',
        '{"type": "object", "enum": [{"answer": "yes"}, {"$ref": "http://x"}]}',
    ],
    ids=["pointer", "anchor", "recursive", "ref-in-data"],
)
def test_json_schema_with_local_references_is_served(
    stub: pb_grpc.OptiServeStub, model: str, schema: str
) -> None:
    request = pb.GenerateRequest(
        prompt="hi", model=model, response_format=pb.ResponseFormat(json_schema=schema)
    )
    assert json.loads(stub.Generate(request, timeout=TIMEOUT_S).text) == {"answer": "yes"}


def test_json_schema_at_the_depth_limit_is_checked(stub: pb_grpc.OptiServeStub) -> None:
    """64 levels pass the depth check (and reach the model check: tiny has no structured
    output)."""
    schema = '{"items":' * 63 + "{}" + "}" * 63
    with pytest.raises(grpc.RpcError) as info:
        stub.Generate(
            pb.GenerateRequest(prompt="hi", response_format=pb.ResponseFormat(json_schema=schema)),
            timeout=TIMEOUT_S,
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION, info.value.details()


def test_benchmark_grid_is_counted_before_it_is_built(stub: pb_grpc.OptiServeStub) -> None:
    """Was a hung server: 3000 × 3000 × 3000 points were built (in the event loop) before
    being compared with benchmark.max_points."""
    request = pb.BenchmarkRequest(
        models=["tiny"],
        prompt_lengths=[1],
        requests_per_point=1,
        warmup_requests=0,
        cache=[False] * 3000,
        batch_sizes=[0] * 3000,
        max_new_tokens=[1] * 3000,
    )
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Benchmark(request, timeout=20))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value.details()
    assert "the workload has 27000000000 points, over this server's benchmark.max_points (2)" in (
        info.value.details() or ""
    )
    assert time.monotonic() - started < 10


def test_long_model_name_is_invalid_argument(stub: pb_grpc.OptiServeStub) -> None:
    """Was a status whose message quoted the whole name: over the client's metadata limit,
    so the client saw RESOURCE_EXHAUSTED "received metadata size exceeds soft limit"."""
    needle = "... (20000 characters) is not a model or route this server could serve: names "
    needle += "are at most 256 characters"
    generate = pb.GenerateRequest(prompt="hi", model=LONG_NAME)
    _short_invalid_argument(_error(lambda: stub.Generate(generate, timeout=TIMEOUT_S)), needle)
    _short_invalid_argument(
        _error(lambda: list(stub.StreamGenerate(generate, timeout=TIMEOUT_S))), needle
    )
    quantize = pb.QuantizeRequest(model=LONG_NAME, method=pb.QUANT_METHOD_FP16)
    _short_invalid_argument(
        _error(lambda: list(stub.Quantize(quantize, timeout=TIMEOUT_S))), "model 'mmm"
    )
    benchmark = pb.BenchmarkRequest(models=["tiny", LONG_NAME])
    _short_invalid_argument(
        _error(lambda: list(stub.Benchmark(benchmark, timeout=TIMEOUT_S))), "models[1] 'mmm"
    )


def test_long_values_are_quoted_short(stub: pb_grpc.OptiServeStub) -> None:
    """Roles, variant names and JSON Schema errors quoted whole values (same failure)."""
    role = pb.GenerateRequest(messages=[pb.ChatMessage(role=LONG_NAME, content="hi")])
    _short_invalid_argument(
        _error(lambda: stub.Generate(role, timeout=TIMEOUT_S)),
        "messages[0].role is 'mmmm",
    )
    schema = pb.GenerateRequest(
        prompt="hi", response_format=pb.ResponseFormat(json_schema=json.dumps({"type": LONG_NAME}))
    )
    _short_invalid_argument(
        _error(lambda: stub.Generate(schema, timeout=TIMEOUT_S)),
        "response_format.json_schema is not a valid JSON Schema: 'mmm",
    )
    bad_json = pb.GenerateRequest(
        prompt="hi", response_format=pb.ResponseFormat(json_schema='{"a": ' + "1" * 5_000 + "}")
    )
    _short_invalid_argument(
        _error(lambda: stub.Generate(bad_json, timeout=TIMEOUT_S)),
        "response_format.json_schema is not valid JSON (Exceeds the limit (4300 digits)",
    )
    variant = pb.QuantizeRequest(model="tiny", method=pb.QUANT_METHOD_FP16, variant_name=LONG_NAME)
    _short_invalid_argument(
        _error(lambda: list(stub.Quantize(variant, timeout=TIMEOUT_S))),
        "... (20000 characters) is not allowed: use 1-128 letters",
    )


def test_get_usage_long_model_name(stub: pb_grpc.OptiServeStub) -> None:
    error = _error(lambda: stub.GetUsage(pb.GetUsageRequest(model=LONG_NAME), timeout=TIMEOUT_S))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "names are at most 256 characters" in (error.details() or "")
    assert len(error.details() or "") < 1_000


def test_server_still_serving(fuzz_server: ServerThread) -> None:
    _still_serving(fuzz_server.target)
