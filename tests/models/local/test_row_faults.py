"""A failure fails only whom it can be pinned on, with a status that says whether to retry.

* per-row work (sampling, detokenizing) that raises fails that sequence alone;
* a failed prefill of several requests is redone request by request;
* a failed decode step is retried once; failing again it fails the running sequences;
* only running out of memory says "retry" (UNAVAILABLE); the rest is INTERNAL.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import pytest
import torch
from prometheus_client import CollectorRegistry
from tiny_lm import TinyLM
from tiny_lm import running_scheduler as running

from optiserve.domain.errors import OptiserveError, Unavailable, status_code_name
from optiserve.domain.types import SamplingParams
from optiserve.models.local import batch as batch_module
from optiserve.models.local import scheduler as scheduler_module
from optiserve.models.local.scheduler import SequenceEnd, SequenceHandle, TokenEvent
from optiserve.models.local.text import IncrementalDetokenizer

WATCHDOG_S = 60.0
POISON = 1999


class HookedModel:
    """Delegates to a model: ``before(input_ids)`` may raise, ``after(input_ids, logits)``
    may corrupt the logits in place."""

    def __init__(
        self,
        model: Any,
        before: Callable[[torch.Tensor], None] = lambda ids: None,
        after: Callable[[torch.Tensor, torch.Tensor], None] = lambda ids, logits: None,
    ) -> None:
        self._model = model
        self._before = before
        self._after = after
        self.forward = model.forward  # for the cache argument's name
        self.config = model.config
        self.generation_config = model.generation_config

    def __call__(self, **kwargs: Any) -> Any:
        self._before(kwargs["input_ids"])
        out = self._model(**kwargs)
        self._after(kwargs["input_ids"], out.logits)
        return out


async def collect(handle: SequenceHandle) -> tuple[list[int], str]:
    tokens: list[int] = []
    text = ""
    async for event in handle:
        if isinstance(event, TokenEvent):
            tokens.append(event.token_id)
            text += event.text
        else:
            assert isinstance(event, SequenceEnd)
    return tokens, text


async def gather(handles: list[SequenceHandle]) -> list[Any]:
    return list(
        await asyncio.wait_for(
            asyncio.gather(*map(collect, handles), return_exceptions=True), WATCHDOG_S
        )
    )


def prompts(n: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(4, 1900) for _ in range(rng.randint(5, 40))] for _ in range(n)]


def greedy(max_new: int, **kw: Any) -> SamplingParams:
    return SamplingParams(max_new_tokens=max_new, **kw)


def failures(registry: CollectorRegistry, name: str) -> float:
    value = registry.get_sample_value(f"optiserve_scheduler_{name}_total", {"model": "tiny"})
    return value or 0.0


def assert_internal(exc: object, *needles: str) -> None:
    """INTERNAL, naming what failed, and not inviting a retry."""
    assert isinstance(exc, OptiserveError), exc
    assert status_code_name(exc) == "INTERNAL", exc
    for needle in needles:
        assert needle in exc.message, (needle, exc.message)
    assert "retry the request" not in exc.message


def assert_others_correct(lm: TinyLM, cases: list[list[int]], results: list[Any], bad: int) -> None:
    for i, (prompt, result) in enumerate(zip(cases, results, strict=True)):
        if i == bad:
            continue
        assert not isinstance(result, BaseException), (i, result)
        tokens, text = result
        assert tokens == lm.reference(prompt, 20), i
        # All of it, but an incomplete character at the end (held back, never sent).
        full = lm.tokenizer.decode(tokens, skip_special_tokens=True)
        assert full.startswith(text) and not full[len(text) :].strip("\ufffd"), i


@pytest.mark.parametrize("fail_at", [1, 6])
async def test_a_detokenizer_fault_fails_only_its_sequence(
    tiny_llama: TinyLM, monkeypatch: pytest.MonkeyPatch, fail_at: int
) -> None:
    """Raised at the first token (the prefill's) or a later one (a decode step's)."""

    class Faulty(IncrementalDetokenizer):
        pushed = 0

        def push(self, token_id: int) -> str:
            if POISON in self._ids[:4]:
                self.pushed += 1
                if self.pushed == fail_at:
                    raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "injected detokenizer fault")
            return super().push(token_id)

    monkeypatch.setattr(scheduler_module, "IncrementalDetokenizer", Faulty)
    cases = prompts(6, seed=1)
    cases[2] = [*cases[2], POISON]
    with running(tiny_llama, max_wait_ms=200, max_batch_size=6) as (scheduler, registry):
        results = await gather([scheduler.submit(p, greedy(20)) for p in cases])
        assert scheduler.running_count == 0
    assert_internal(results[2], "while detokenizing", "injected detokenizer fault", "fail again")
    assert_others_correct(tiny_llama, cases, results, bad=2)
    assert failures(registry, "sequence_failures") == 1
    assert failures(registry, "step_failures") == 0


async def test_a_sampling_fault_fails_only_its_sequence(
    tiny_llama: TinyLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = batch_module.select_token
    calls = {"n": 0}

    def faulty(logits: torch.Tensor, params: SamplingParams, generator: Any) -> int:
        if params.seed == 666:
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("injected sampling fault")
        return real(logits, params, generator)

    monkeypatch.setattr(batch_module, "select_token", faulty)
    cases = prompts(5, seed=2)
    with running(tiny_llama, max_wait_ms=200, max_batch_size=5) as (scheduler, _):
        handles = [scheduler.submit(p, greedy(20)) for p in cases]
        handles[4].cancel()
        handles[4] = scheduler.submit(cases[4], greedy(20, temperature=0.8, seed=666))
        results = await gather(handles)
    assert_internal(results[4], "while sampling", "injected sampling fault", "fail again")
    assert_others_correct(tiny_llama, cases, results, bad=4)


async def test_nan_scores_fail_only_their_sequence(tiny_llama: TinyLM) -> None:
    """A row whose logits are NaN (greedy: argmax would return garbage) fails alone."""
    poisoned_rows: set[int] = set()

    def after(ids: torch.Tensor, logits: torch.Tensor) -> None:
        if ids.shape[1] > 1:  # prefill: remember which row holds the poisoned prompt
            poisoned_rows.clear()
            poisoned_rows.update((ids == POISON).any(dim=1).nonzero().flatten().tolist())
            for row in poisoned_rows:
                logits[row] = float("nan")

    cases = prompts(4, seed=3)
    cases[1] = [*cases[1], POISON]
    model = HookedModel(tiny_llama.model, after=after)
    with running(tiny_llama, model, max_wait_ms=200, max_batch_size=4) as (scheduler, _):
        results = await gather([scheduler.submit(p, greedy(20)) for p in cases])
    assert poisoned_rows == {1}
    assert_internal(results[1], "while sampling", "NaN")
    assert_others_correct(tiny_llama, cases, results, bad=1)


async def test_a_failed_prefill_batch_is_redone_request_by_request(tiny_llama: TinyLM) -> None:
    def before(ids: torch.Tensor) -> None:
        if ids.shape[1] > 1 and bool((ids == POISON).any()):
            raise RuntimeError("poisoned prompt")

    cases = prompts(5, seed=4)
    cases[3] = [*cases[3], POISON]
    model = HookedModel(tiny_llama.model, before=before)
    with running(tiny_llama, model, max_wait_ms=200, max_batch_size=5) as (scheduler, registry):
        results = await gather([scheduler.submit(p, greedy(20)) for p in cases])
    assert_internal(results[3], "during prefill", "poisoned prompt", "fail again if retried")
    assert_others_correct(tiny_llama, cases, results, bad=3)
    assert failures(registry, "step_failures") == 2  # the batch's, then the request's alone


async def test_a_failed_decode_step_is_retried_once(tiny_llama: TinyLM) -> None:
    steps = [0]
    fail_at = {4}

    def before(ids: torch.Tensor) -> None:
        if ids.shape[1] == 1:
            steps[0] += 1
            if steps[0] in fail_at:
                raise RuntimeError("decode blew up")

    cases = prompts(4, seed=5)
    model = HookedModel(tiny_llama.model, before=before)
    with running(tiny_llama, model, max_wait_ms=200, max_batch_size=4) as (scheduler, registry):
        # Fails once (the 4th step): the retry succeeds and nobody notices.
        results = await gather([scheduler.submit(p, greedy(20)) for p in cases])
        assert_others_correct(tiny_llama, cases, results, bad=-1)
        assert failures(registry, "step_failures") == 1
        # Fails twice in a row: the running sequences fail, INTERNAL, no "retry".
        fail_at.update({steps[0] + 3, steps[0] + 4})
        results = await gather([scheduler.submit(p, greedy(20)) for p in cases])
        for result in results:
            assert_internal(result, "during decode", "decode blew up", "failed twice")
        # The loop goes on serving.
        tokens, _ = await asyncio.wait_for(collect(scheduler.submit(cases[0], greedy(20))), 60)
        assert tokens == tiny_llama.reference(cases[0], 20)


async def test_running_out_of_memory_is_unavailable_and_says_retry(tiny_llama: TinyLM) -> None:
    def before(ids: torch.Tensor) -> None:
        if ids.shape[1] == 1:  # every decode step (the prefill succeeds)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    model = HookedModel(tiny_llama.model, before=before)
    with running(tiny_llama, model) as (scheduler, registry):
        handle = scheduler.submit(prompts(1, seed=6)[0], greedy(40))
        with pytest.raises(Unavailable, match="out of memory") as info:
            await asyncio.wait_for(collect(handle), WATCHDOG_S)
    assert "retry the request" in info.value.message
    assert failures(registry, "step_failures") == 2  # the step and its retry
