"""The continuous-batching scheduler: correctness, cancellation, limits, failures, fairness."""

from __future__ import annotations

import asyncio
import copy
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from tiny_lm import TinyLM, running_scheduler

from optiserve.domain.errors import (
    DeadlineExceeded,
    InvalidRequest,
    OptiserveError,
    QueueFull,
    Unavailable,
    status_code_name,
)
from optiserve.domain.types import FinishReason, SamplingParams
from optiserve.models.local.config import EngineConfig
from optiserve.models.local.metrics import SchedulerMetrics
from optiserve.models.local.scheduler import Scheduler, SequenceEnd, SequenceHandle, TokenEvent

WATCHDOG_S = 60.0


class WrappedModel:
    """Delegates to a model; ``hook(input_ids)`` runs first (to block, slow down or raise)."""

    def __init__(self, model: Any, hook: Callable[[Any], None]) -> None:
        self._model = model
        self._hook = hook
        self.config = model.config
        self.generation_config = model.generation_config

    def __call__(self, **kwargs: Any) -> Any:
        self._hook(kwargs["input_ids"])
        return self._model(**kwargs)


@contextmanager
def running(lm: TinyLM, model: Any = None, **config: Any) -> Iterator[Scheduler]:
    with running_scheduler(lm, model, **config) as (scheduler, _):
        yield scheduler


async def collect(handle: SequenceHandle) -> tuple[list[int], str, SequenceEnd | None]:
    tokens: list[int] = []
    text = ""
    completion = None
    async for event in handle:
        if isinstance(event, TokenEvent):
            tokens.append(event.token_id)
            text += event.text
        else:
            completion = event
    return tokens, text, completion


def prompts(n: int, seed: int, lo: int = 1, hi: int = 80) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(4, 2000) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


def greedy(max_new: int, **kw: Any) -> SamplingParams:
    return SamplingParams(max_new_tokens=max_new, **kw)


async def test_greedy_batch_of_32_equals_alone(tiny_lm: TinyLM) -> None:
    rng = random.Random(5)
    cases = [(p, rng.randint(1, 40)) for p in prompts(32, seed=4)]
    with running(tiny_lm, max_batch_size=32, max_wait_ms=2) as scheduler:

        async def one(i: int, prompt: list[int], max_new: int) -> list[int]:
            await asyncio.sleep(0.002 * (i % 8))  # staggered arrivals: admitted mid-batch
            tokens, _, completion = await collect(scheduler.submit(prompt, greedy(max_new)))
            assert completion is not None
            eos = completion.finish_reason is FinishReason.EOS
            assert completion.completion_tokens == len(tokens) - eos
            assert completion.prompt_tokens == len(prompt)
            return tokens

        results = await asyncio.wait_for(
            asyncio.gather(*(one(i, p, m) for i, (p, m) in enumerate(cases))), WATCHDOG_S
        )
    for (prompt, max_new), tokens in zip(cases, results, strict=True):
        assert tokens == tiny_lm.reference(prompt, max_new)


async def test_text_and_stop_strings(tiny_llama: TinyLM) -> None:
    prompt = prompts(1, seed=9, lo=20, hi=20)[0]
    with running(tiny_llama) as scheduler:
        tokens, text, completion = await collect(scheduler.submit(prompt, greedy(30)))
        assert completion is not None
        assert text == tiny_llama.tokenizer.decode(tokens, skip_special_tokens=True)
        stop = text[len(text) // 2 : len(text) // 2 + 3]
        _, cut, completion = await collect(scheduler.submit(prompt, greedy(30, stop=(stop,))))
    assert completion is not None
    assert completion.finish_reason is FinishReason.STOP_SEQUENCE
    assert cut == text[: text.find(stop)]


async def test_cancel_one_does_not_disturb_others(tiny_llama: TinyLM) -> None:
    cases = prompts(6, seed=11)
    with running(tiny_llama, max_batch_size=8) as scheduler:
        handles = [scheduler.submit(p, greedy(25)) for p in cases]
        victim = handles[2]
        seen = 0
        async for event in victim:
            assert isinstance(event, TokenEvent)
            seen += 1
            if seen == 3:
                victim.cancel()
                victim.cancel()  # idempotent
        assert seen == 3
        others = [h for h in handles if h is not victim]
        results = await asyncio.wait_for(asyncio.gather(*map(collect, others)), WATCHDOG_S)
        await asyncio.sleep(0.05)
        assert scheduler.running_count == 0
    for prompt, (tokens, _, _) in zip(cases[:2] + cases[3:], results, strict=True):
        assert tokens == tiny_llama.reference(prompt, 25)


async def test_many_streams_with_random_cancellations(tiny_llama: TinyLM) -> None:
    rng = random.Random(3)
    with running(tiny_llama, max_batch_size=16, max_queue=200) as scheduler:

        async def stream(prompt: list[int]) -> str:
            handle = scheduler.submit(prompt, greedy(rng.randint(4, 24)))
            cancel_at = rng.randint(1, 10) if rng.random() < 0.3 else -1
            n = 0
            async for event in handle:
                n += 1
                if n == cancel_at:
                    handle.cancel()
                if isinstance(event, SequenceEnd):
                    return "completed"
            return "cancelled"

        async def task_cancelled(prompt: list[int]) -> str:
            task = asyncio.ensure_future(stream(prompt))
            await asyncio.sleep(rng.random() * 0.05)
            task.cancel()  # the consumer goes away mid-await: the sequence is cancelled too
            try:
                return await task
            except asyncio.CancelledError:
                return "cancelled"

        jobs = [
            task_cancelled(p) if i % 10 == 0 else stream(p)
            for i, p in enumerate(prompts(120, seed=3, hi=40))
        ]
        outcomes = await asyncio.wait_for(asyncio.gather(*jobs), WATCHDOG_S)
        await asyncio.sleep(0.1)
        assert scheduler.running_count == 0
        assert scheduler.queue_depth == 0
    assert outcomes.count("completed") + outcomes.count("cancelled") == 120
    assert outcomes.count("cancelled") > 10


async def test_queue_full_has_retry_hint(tiny_llama: TinyLM) -> None:
    gate = threading.Event()
    model = WrappedModel(tiny_llama.model, lambda _: gate.wait(WATCHDOG_S))
    with running(tiny_llama, model, max_batch_size=1, max_queue=2, max_wait_ms=0) as scheduler:
        first = scheduler.submit([5, 6, 7], greedy(3))
        for _ in range(200):  # until the worker has taken it (blocked in prefill)
            if scheduler.queue_depth == 0:
                break
            await asyncio.sleep(0.005)
        queued = [scheduler.submit([5, 6, 7], greedy(3)) for _ in range(2)]
        with pytest.raises(QueueFull) as info:
            scheduler.submit([5, 6, 7], greedy(3))
        assert info.value.retry_after_s is not None
        assert info.value.retry_after_s > 0
        assert "limit 2" in info.value.message
        gate.set()
        results = await asyncio.wait_for(asyncio.gather(*map(collect, [first, *queued])), 30)
    assert all(len(tokens) == 3 for tokens, _, _ in results)


async def test_invalid_requests_name_the_limits(tiny_llama: TinyLM) -> None:
    with running(tiny_llama, max_batch_tokens=100) as scheduler:
        with pytest.raises(InvalidRequest, match=r"max_batch_tokens \(100\)"):
            scheduler.submit(list(range(10, 90)), greedy(30))
        with pytest.raises(InvalidRequest, match="empty"):
            scheduler.submit([], greedy(3))
        for unresolved in (None, 0):  # a bug upstream (resolve_sampling), not a bad request
            with pytest.raises(ValueError, match="resolved to an int >= 1") as info:
                scheduler.submit([5], SamplingParams(max_new_tokens=unresolved))
            assert not isinstance(info.value, InvalidRequest)
    with (
        running(tiny_llama, max_batch_tokens=4096) as scheduler,
        pytest.raises(InvalidRequest, match=r"context length \(512\)"),
    ):
        scheduler.submit(list(range(10, 500)), greedy(30))


async def test_min_new_tokens_keeps_a_sequence_past_its_eos(tiny_llama: TinyLM) -> None:
    prompt = prompts(1, seed=17, lo=12, hi=12)[0]
    first = tiny_llama.reference(prompt, 1)[0]
    model = WrappedModel(tiny_llama.model, lambda _: None)
    model.generation_config = copy.deepcopy(tiny_llama.model.generation_config)
    eos = sorted(tiny_llama.eos | {first})
    model.generation_config.eos_token_id = eos  # the greedy first token ends the answer
    with running(tiny_llama, model) as scheduler:
        tokens, text, end = await collect(scheduler.submit(prompt, greedy(8)))
        assert end is not None
        assert (tokens, text, end.finish_reason, end.completion_tokens) == (
            [first],
            "",
            FinishReason.EOS,
            0,
        )
        handles = [scheduler.submit(prompt, greedy(8, min_new_tokens=m)) for m in (1, 3, 8)]
        results = await asyncio.wait_for(asyncio.gather(*map(collect, handles)), WATCHDOG_S)
    for m, (tokens, _, end) in zip((1, 3, 8), results, strict=True):
        assert tokens == tiny_llama.reference(prompt, 8, min_new_tokens=m, eos=eos)
        assert end is not None and end.completion_tokens >= m


async def test_deadline_expiry_removes_sequence(tiny_llama: TinyLM) -> None:
    model = WrappedModel(tiny_llama.model, lambda _: time.sleep(0.004))
    with running(tiny_llama, model) as scheduler:
        prompt = [5, 6, 7, 8]
        doomed = scheduler.submit(prompt, greedy(200), deadline=time.monotonic() + 0.1)
        fine = scheduler.submit(prompt, greedy(40))
        with pytest.raises(DeadlineExceeded, match="deadline passed"):
            await asyncio.wait_for(collect(doomed), WATCHDOG_S)
        tokens, _, _ = await asyncio.wait_for(collect(fine), WATCHDOG_S)
        expired = scheduler.submit(prompt, greedy(5), deadline=time.monotonic() - 1)
        with pytest.raises(DeadlineExceeded):
            await asyncio.wait_for(collect(expired), WATCHDOG_S)
    assert tokens == tiny_llama.reference(prompt, 40)


POISON = 1999


async def test_model_failure_fails_only_that_step(tiny_llama: TinyLM) -> None:
    """A prefill failing for one request fails it (INTERNAL, no "retry"); a decode step
    failing once is retried and nobody notices (more in test_row_faults.py)."""
    state = {"fail_decode": False}

    def hook(input_ids: Any) -> None:
        if input_ids.shape[1] > 1 and bool((input_ids == POISON).any()):
            raise RuntimeError("poisoned prompt")
        if input_ids.shape[1] == 1 and state["fail_decode"]:
            state["fail_decode"] = False
            raise RuntimeError("decode blew up")

    model = WrappedModel(tiny_llama.model, lambda ids: (time.sleep(0.002), hook(ids))[1])
    registry = CollectorRegistry()
    scheduler = Scheduler(model, tiny_llama.tokenizer, EngineConfig(), SchedulerMetrics(registry))
    scheduler.start()
    try:
        healthy_prompt = [5, 6, 7, 8, 9]
        healthy = scheduler.submit(healthy_prompt, greedy(30))
        await asyncio.sleep(0.02)
        poisoned = scheduler.submit([5, POISON, 7], greedy(30))
        with pytest.raises(OptiserveError, match="poisoned prompt") as info:
            await asyncio.wait_for(collect(poisoned), WATCHDOG_S)
        assert status_code_name(info.value) == "INTERNAL"
        assert "prefill" in info.value.message
        assert "fail again if retried" in info.value.message
        tokens, _, _ = await asyncio.wait_for(collect(healthy), WATCHDOG_S)
        assert tokens == tiny_llama.reference(healthy_prompt, 30)
        # A decode failure is retried once: the running sequence does not notice.
        victim = scheduler.submit(healthy_prompt, greedy(30))
        await asyncio.sleep(0.02)
        state["fail_decode"] = True
        tokens, _, _ = await asyncio.wait_for(collect(victim), WATCHDOG_S)
        assert tokens == tiny_llama.reference(healthy_prompt, 30)
        assert not state["fail_decode"]
        assert (
            registry.get_sample_value("optiserve_scheduler_step_failures_total", {"model": "local"})
            == 2
        )
    finally:
        scheduler.stop()


async def test_fifo_admission_no_starvation(tiny_llama: TinyLM) -> None:
    """A big request behind many small ones is admitted in arrival order, never overtaken."""
    with running(tiny_llama, max_batch_size=4, max_batch_tokens=200, max_wait_ms=0) as sched:
        order: list[int] = []
        submitted: dict[int, float] = {}
        waits: list[float] = []

        async def job(i: int, prompt: list[int], max_new: int) -> None:
            submitted[i] = time.monotonic()
            _, _, completion = await collect(sched.submit(prompt, greedy(max_new)))
            assert completion is not None
            order.append(i)
            waits.append(completion.queued_ms)

        async def steady_load() -> None:
            tasks = []
            for i in range(40):  # steady arrivals of small requests, big one at i == 10
                big = i == 10
                prompt = list(range(10, 10 + (150 if big else 20)))
                tasks.append(asyncio.ensure_future(job(i, prompt, 40 if big else 20)))
                await asyncio.sleep(0.004)
            await asyncio.gather(*tasks)

        await asyncio.wait_for(steady_load(), WATCHDOG_S)
    assert len(order) == 40
    # The big request (190 tokens reserved) needs the whole budget: it finishes before every
    # request submitted well after it, and no request waits unboundedly.
    assert order.index(10) < order.index(39)
    assert max(waits) < 10_000


async def test_stop_fails_pending_with_unavailable(tiny_llama: TinyLM) -> None:
    model = WrappedModel(tiny_llama.model, lambda _: time.sleep(0.005))
    scheduler = Scheduler(model, tiny_llama.tokenizer, EngineConfig())
    scheduler.start()
    handle = scheduler.submit([5, 6, 7], greedy(400 - 3))
    await asyncio.sleep(0.05)
    await asyncio.get_running_loop().run_in_executor(None, scheduler.stop)
    with pytest.raises(Unavailable, match="shutting down"):
        await asyncio.wait_for(collect(handle), WATCHDOG_S)
    with pytest.raises(Unavailable, match="not running"):
        scheduler.submit([5], greedy(1))


async def test_metrics_are_recorded(tiny_llama: TinyLM) -> None:
    registry = CollectorRegistry()
    scheduler = Scheduler(
        tiny_llama.model,
        tiny_llama.tokenizer,
        EngineConfig(),
        SchedulerMetrics(registry),
        name="m",
    )
    scheduler.start()
    try:
        results = await asyncio.gather(
            *(collect(scheduler.submit(p, greedy(8))) for p in prompts(5, seed=2))
        )
    finally:
        scheduler.stop()
    total = sum(len(tokens) for tokens, _, _ in results)
    labels = {"model": "m"}
    assert registry.get_sample_value("optiserve_scheduler_tokens_generated_total", labels) == total
    assert (
        registry.get_sample_value("optiserve_scheduler_time_to_first_token_seconds_count", labels)
        == 5
    )
    assert registry.get_sample_value("optiserve_scheduler_batch_size_count", labels) >= 7
    assert (
        registry.get_sample_value("optiserve_scheduler_inter_token_latency_seconds_count", labels)
        == total - 5
    )


async def test_prefill_budget_splits_a_burst_into_chunks(tiny_llama: TinyLM) -> None:
    """A burst larger than max_prefill_tokens is prefilled in FIFO chunks, tokens exact."""
    widths: list[int] = []

    def record(input_ids: Any) -> None:
        if input_ids.shape[1] > 1:  # a prefill
            widths.append(int(input_ids.shape[0] * input_ids.shape[1]))

    model = WrappedModel(tiny_llama.model, record)
    cases = prompts(12, seed=8, lo=20, hi=40)
    with running(tiny_llama, model, max_prefill_tokens=100, max_wait_ms=20) as scheduler:
        handles = [scheduler.submit(p, greedy(6)) for p in cases]
        results = await asyncio.wait_for(asyncio.gather(*map(collect, handles)), WATCHDOG_S)
    assert len(widths) >= 4  # 12 prompts of 20-40 tokens, at most 100 padded tokens a step
    assert all(w <= 100 for w in widths)
    for prompt, (tokens, _, _) in zip(cases, results, strict=True):
        assert tokens == tiny_llama.reference(prompt, 6)


async def test_next_events_coalesces_what_a_slow_consumer_missed(tiny_llama: TinyLM) -> None:
    prompt = prompts(1, seed=9, lo=10, hi=10)[0]
    with running(tiny_llama, max_wait_ms=0) as scheduler:
        handle = scheduler.submit(prompt, greedy(12))
        first = await asyncio.wait_for(handle.next_events(), WATCHDOG_S)
        assert len(first) >= 1  # the first token is never held back
        await asyncio.sleep(0.3)  # fall behind: the rest is already delivered
        rest = await handle.next_events()
        assert len(rest) > 1
        assert isinstance(rest[-1], SequenceEnd)
        assert await handle.next_events() == []
    tokens = [e.token_id for e in first + rest if isinstance(e, TokenEvent)]
    assert tokens == tiny_llama.reference(prompt, 12)
