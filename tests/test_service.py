"""The service, catalogue and usage without gRPC: a scripted backend, a real exact cache."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from optiserve.accounting.usage import UsageTracker
from optiserve.cache import CacheConfig, ResponseCache
from optiserve.domain.errors import (
    DeadlineExceeded,
    InvalidRequest,
    ModelNotFound,
    QueueFull,
    Unavailable,
)
from optiserve.domain.pricing import BudgetPressure
from optiserve.domain.types import (
    CacheLayer,
    FinishReason,
    GenerateRequest,
    ModelInfo,
    ModelKind,
    SamplingParams,
    StreamEnd,
    TextDelta,
)
from optiserve.models.base import BackendDelta, BackendEvent, BackendFinish, BackendStart
from optiserve.models.catalogue import ModelCatalogue
from optiserve.routing.planner import Planner
from optiserve.service import Service


class ScriptedBackend:
    """A Backend that answers every prompt with the prompt reversed, word by word."""

    def __init__(self, name: str, fail: Exception | None = None) -> None:
        self.name = name
        self.fail = fail
        self.calls = 0

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(self.name, ModelKind.LOCAL, "local", "scripted", 128)

    def load(self) -> None:
        pass

    def close(self) -> None:
        pass

    def resolve_sampling(self, params: SamplingParams) -> SamplingParams:
        if params.max_new_tokens is None:
            return replace(params, max_new_tokens=8)
        if params.max_new_tokens > 64:
            raise InvalidRequest("sampling.max_new_tokens must be in [1, 64]")
        return params

    def check_input(self, request: GenerateRequest) -> None:
        pass

    async def stream(self, request: GenerateRequest) -> AsyncIterator[BackendEvent]:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        words = request.prompt.split()[::-1]
        first = time.monotonic()
        yield BackendStart(len(words))
        for word in words:
            yield BackendDelta(word + " ", 1)
        yield BackendFinish(FinishReason.EOS, len(words), len(words), 0.0, first, time.monotonic())


class SlowStoreCache(ResponseCache):
    """A real exact cache whose writes take ``delay_s`` each."""

    delay_s = 0.5

    async def store(self, *args: object, **kwargs: object) -> None:
        await asyncio.sleep(self.delay_s)
        await super().store(*args, **kwargs)  # type: ignore[arg-type]


def _cache(tmp_path: Path, cls: type[ResponseCache] = ResponseCache) -> ResponseCache:
    config = CacheConfig(semantic_enabled=False, persist=False)
    return cls(config, store=None, embedder=None, guard=None, redis=None)


def _request(prompt: str, **kwargs: object) -> GenerateRequest:
    return GenerateRequest(request_id="r", prompt=prompt, **kwargs)  # type: ignore[arg-type]


def _planner(backends: list[tuple[str, ScriptedBackend]], default: str) -> Planner:
    return Planner.of_models(ModelCatalogue(backends), default)


def test_planner_resolves_default_and_names() -> None:
    planner = _planner([("a", ScriptedBackend("a")), ("b", ScriptedBackend("b"))], "b")
    pressure = BudgetPressure()
    assert planner.plan(_request("x"), pressure).chain == ("b",)
    assert planner.plan(_request("x", model="a"), pressure).chain == ("a",)
    with pytest.raises(ModelNotFound, match="serves: a, b"):
        planner.plan(_request("x", model="c"), pressure)
    assert [(m.name, m.default) for m in planner.models()] == [("a", False), ("b", True)]
    with pytest.raises(ValueError, match="neither a model nor a route"):
        _planner([("a", ScriptedBackend("a"))], "zzz")


async def test_generate_streams_and_accounts() -> None:
    backend = ScriptedBackend("m")
    service = Service(_planner([("m", backend)], "m"), UsageTracker())
    events = [e async for e in service.stream(_request("one two three"))]
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["three ", "two ", "one "]
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert end.summary.usage.completion_tokens == 3
    result = await service.generate(_request("a b"))
    assert result.text == "b a "
    report = service.usage()
    assert report.total.requests == 2
    assert report.total.completion_tokens == 5
    assert report.cache is None
    assert [m.name for m in service.list_models()] == ["m"]


async def test_errors_are_counted_and_raised() -> None:
    backend = ScriptedBackend("m", fail=QueueFull("full", retry_after_s=1.0))
    service = Service(_planner([("m", backend)], "m"), UsageTracker())
    with pytest.raises(QueueFull):
        await service.generate(_request("x"))
    with pytest.raises(InvalidRequest, match="max_new_tokens"):
        await service.generate(_request("x", sampling=SamplingParams(max_new_tokens=65)))
    assert service.usage().total.errors == 1


async def test_cache_write_is_off_the_response_path(tmp_path: Path) -> None:
    cache = _cache(tmp_path, SlowStoreCache)
    backend = ScriptedBackend("m")
    service = Service(_planner([("m", backend)], "m"), UsageTracker(), cache)
    started = time.perf_counter()
    result = await service.generate(_request("cache me please"))
    elapsed = time.perf_counter() - started
    assert elapsed < SlowStoreCache.delay_s / 2, "the answer waited for the cache write"
    assert result.summary.timings.total_ms < SlowStoreCache.delay_s * 1000 / 2
    assert service.pending_stores == 1
    assert await service.wait_for_stores(5.0) == 0
    again = await service.generate(_request("cache me please"))
    assert again.summary.provider == "cache"
    assert again.text == result.text
    assert backend.calls == 1
    assert service.usage().models[0].exact_hits == 1
    assert service.usage().total.exact_hits == 1
    assert cache.stats().stores == 1
    cache.close()


async def test_full_write_queue_drops_and_counts(tmp_path: Path) -> None:
    cache = _cache(tmp_path, SlowStoreCache)
    service = Service(
        _planner([("m", ScriptedBackend("m"))], "m"),
        UsageTracker(),
        cache,
        max_pending_stores=2,
    )
    for i in range(5):
        await service.generate(_request(f"question number {i}"))
    assert service.pending_stores == 2
    assert service.usage().dropped_stores == 3
    await service.wait_for_stores(5.0)
    assert cache.stats().stores == 2
    cache.close()


async def test_drain_refuses_new_work_and_waits_for_writes(tmp_path: Path) -> None:
    cache = _cache(tmp_path, SlowStoreCache)
    service = Service(_planner([("m", ScriptedBackend("m"))], "m"), UsageTracker(), cache)
    await service.generate(_request("written while draining"))
    assert service.pending_stores == 1
    await service.drain(5.0)
    assert service.pending_stores == 0
    assert cache.stats().stores == 1
    with pytest.raises(Unavailable, match="shutting down"):
        await service.generate(_request("too late"))
    cache.close()


async def test_drain_gives_up_after_its_grace(tmp_path: Path) -> None:
    cache = _cache(tmp_path, SlowStoreCache)
    service = Service(_planner([("m", ScriptedBackend("m"))], "m"), UsageTracker(), cache)
    await service.generate(_request("slow write"))
    started = time.perf_counter()
    await service.drain(0.05)
    assert time.perf_counter() - started < SlowStoreCache.delay_s
    assert service.pending_stores == 1
    await service.wait_for_stores(5.0)
    cache.close()


def test_usage_tracker_sums_rows() -> None:
    from optiserve.domain.types import ResponseSummary, Usage

    tracker = UsageTracker()
    summary = ResponseSummary(FinishReason.EOS, Usage(3, 4, 0), "a", "local", cost_usd=0.5)
    tracker.record("a", summary, hit=None)
    tracker.record("b", replace(summary, model="b"), hit=CacheLayer.SEMANTIC)
    tracker.record_error("a")
    rows, total = tracker.snapshot()
    assert [r.model for r in rows] == ["a", "b"]
    assert (total.requests, total.errors, total.prompt_tokens) == (3, 1, 6)
    assert total.cost_usd == pytest.approx(1.0)
    assert total.semantic_hits == 1
    only_a, total_a = tracker.snapshot("a")
    assert [r.model for r in only_a] == ["a"]
    assert total_a.requests == 2


class CutBackend(ScriptedBackend):
    """Yields a start (4 prompt tokens) and ``deltas`` deltas of 2 tokens each; then raises
    ``fail`` (if set), waits forever (``hang``), or ends without a finish."""

    def __init__(
        self, deltas: int = 3, fail: BaseException | None = None, hang: bool = False
    ) -> None:
        super().__init__("m")
        self.deltas = deltas
        self.cut_with = fail
        self.hang = hang
        self.closed = False

    async def stream(self, request: GenerateRequest) -> AsyncIterator[BackendEvent]:
        try:
            yield BackendStart(4)
            for i in range(self.deltas):
                yield BackendDelta(f"w{i} ", 2)
            if self.cut_with is not None:
                raise self.cut_with
            if self.hang:
                await asyncio.Event().wait()
        finally:
            self.closed = True


def _outcomes(service: Service) -> tuple[int, int, int, int, int, int]:
    t = service.usage().total
    return (
        t.requests,
        t.errors,
        t.cancelled,
        t.deadline_exceeded,
        t.prompt_tokens,
        t.completion_tokens,
    )


async def test_a_stream_closed_by_its_consumer_is_cancelled_with_its_tokens() -> None:
    backend = CutBackend(hang=True)
    service = Service(_planner([("m", backend)], "m"), UsageTracker())
    events = service.stream(_request("x"))
    assert isinstance(await anext(events), TextDelta)
    assert isinstance(await anext(events), TextDelta)
    await events.aclose()  # type: ignore[attr-defined]
    assert _outcomes(service) == (1, 0, 1, 0, 4, 4)
    assert backend.closed, "the model's stream was not closed at once"


async def test_a_stream_closed_after_its_deadline_is_deadline_exceeded() -> None:
    service = Service(_planner([("m", CutBackend(hang=True))], "m"), UsageTracker())
    events = service.stream(_request("x", deadline=time.monotonic() + 0.05))
    await anext(events)
    await asyncio.sleep(0.1)
    await events.aclose()  # type: ignore[attr-defined]
    assert _outcomes(service) == (1, 0, 0, 1, 4, 2)


async def test_a_cancelled_task_is_cancelled_or_deadline_by_the_request_deadline() -> None:
    for deadline, expected in ((None, (1, 0, 1, 0, 4, 6)), (0.0, (1, 0, 0, 1, 4, 6))):
        service = Service(_planner([("m", CutBackend(hang=True))], "m"), UsageTracker())
        request = _request("x", deadline=None if deadline is None else time.monotonic())
        task = asyncio.create_task(service.generate(request))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert _outcomes(service) == expected, deadline


@pytest.mark.parametrize(
    ("fail", "expected"),
    [
        (DeadlineExceeded("late"), (1, 0, 0, 1, 4, 6)),
        (QueueFull("full"), (1, 1, 0, 0, 4, 6)),
        (RuntimeError("bug"), (1, 1, 0, 0, 4, 6)),
        (None, (1, 1, 0, 0, 4, 6)),  # ended without a finish
    ],
    ids=["deadline", "domain-error", "bug", "no-finish"],
)
async def test_a_failed_stream_is_counted_once_with_its_tokens(
    fail: Exception | None, expected: tuple[int, ...]
) -> None:
    service = Service(_planner([("m", CutBackend(fail=fail))], "m"), UsageTracker())
    with pytest.raises(type(fail) if fail is not None else Unavailable):
        await service.generate(_request("x"))
    assert _outcomes(service) == expected


async def test_a_completed_request_is_ok_once() -> None:
    service = Service(_planner([("m", ScriptedBackend("m"))], "m"), UsageTracker())
    await service.generate(_request("a b c"))  # closes the stream after its summary
    events = [e async for e in service.stream(_request("d e"))]
    assert isinstance(events[-1], StreamEnd)
    assert _outcomes(service) == (2, 0, 0, 0, 5, 5)


async def test_a_cut_cache_replay_is_cancelled(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    service = Service(
        _planner([("m", ScriptedBackend("m"))], "m"),
        UsageTracker(),
        cache,
        replay_chunk_chars=1,
    )
    await service.generate(_request("replay me"))
    await service.wait_for_stores(5.0)
    events = service.stream(_request("replay me"))
    await anext(events)
    await events.aclose()  # type: ignore[attr-defined]
    usage = service.usage().total
    assert (usage.requests, usage.cancelled, usage.exact_hits) == (2, 1, 0)
    cache.close()


async def test_usage_of_an_unknown_model_and_a_schema_nobody_honours() -> None:
    from optiserve.domain.errors import FailedPrecondition

    backend = ScriptedBackend("m")
    service = Service(_planner([("m", backend)], "m"), UsageTracker())
    with pytest.raises(ModelNotFound, match=r"^unknown model 'zzz'; this server serves: m$"):
        service.usage("zzz")
    assert service.usage("m").models == []
    with pytest.raises(FailedPrecondition, match="model 'm' cannot honour"):
        await service.generate(_request("x", json_schema='{"type": "object"}'))
    with pytest.raises(InvalidRequest, match=r"response_format\.json_schema is not valid JSON"):
        await service.generate(_request("x", json_schema="{"))
    with pytest.raises(InvalidRequest, match="must be a JSON object, got a JSON array"):
        await service.generate(_request("x", json_schema="[]"))
    assert backend.calls == 0
    assert service.usage().total.requests == 0
