"""Continuous (iteration-level) batching for one local model.

One :class:`Scheduler` per model owns a worker thread (never the asyncio event loop) that
runs this loop::

    while running:
        drop cancelled and deadline-expired sequences (waiting and running)
        admit waiting requests in FIFO order while max_batch_size / max_batch_tokens /
          max_prefill_tokens allow (when idle, first wait up to max_wait_ms so a burst is
          prefilled together)
        prefill the admitted ones, deliver their first tokens at once, and concatenate
          them into the running batch; a burst into an idle batch is prefilled chunk
          after chunk (no running row waits on it), otherwise one chunk per step so the
          running rows keep decoding
        decode one token for every running sequence
        detokenize, match stop strings, deliver events, filter finished sequences

Admission is strictly FIFO (the head of the queue is never overtaken), so no request
starves: its wait is bounded by the work queued before it. Tokens reach each asyncio
consumer through ``loop.call_soon_threadsafe``, once per step per event loop.

A failure fails only the sequences it can be pinned on, and the loop goes on:

* per-row work (choosing the token, detokenizing, matching stop strings) that raises
  fails that sequence alone; the rest of the batch continues
  (:mod:`~optiserve.models.local.rows`);
* a prefill of several requests that fails is redone one request at a time, so only a
  request whose prefill fails alone fails;
* a decode step that fails is retried once (the batch is unchanged by a failed forward
  pass); failing again, it fails the running sequences.

A failure that a retry would meet again is INTERNAL and says so; only running out of
memory (load-dependent) is UNAVAILABLE with "retry" (see :func:`rows.step_error`).

Events a :class:`SequenceHandle` yields, in order: zero or more :class:`TokenEvent`, then
exactly one :class:`SequenceEnd`; or it raises the domain error that ended the sequence
(:class:`~optiserve.domain.errors.OptiserveError` for an internal error,
:class:`~optiserve.domain.errors.Unavailable`, :class:`~optiserve.domain.errors.DeadlineExceeded`).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from optiserve.domain.errors import (
    DeadlineExceeded,
    InvalidRequest,
    OptiserveError,
    QueueFull,
    Unavailable,
)
from optiserve.domain.types import FinishReason, SamplingParams
from optiserve.models.local.batch import (
    CausalLMBatch,
    ForwardError,
    Generation,
    SequenceRequest,
    eos_token_ids,
)
from optiserve.models.local.config import EngineConfig
from optiserve.models.local.events import (
    SequenceEnd,
    SequenceEvent,
    SequenceHandle,
    TokenEvent,
    deliver,
)
from optiserve.models.local.metrics import BoundMetrics, SchedulerMetrics
from optiserve.models.local.rows import (
    RowFailure,
    SequenceState,
    row_error,
    step_error,
)
from optiserve.models.local.sampling import is_greedy, make_generator
from optiserve.models.local.text import IncrementalDetokenizer, fast_decoder
from optiserve.models.local.throughput import CompletionRate

log = logging.getLogger(__name__)

#: Prompt tokens that seed each sequence's detokenizer (for correct leading spaces).
_PROMPT_TAIL = 4


def _context_length(model: Any) -> int | None:
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


class Scheduler:
    """Continuous batching for one model; see the module docstring for the loop.

    ``model`` is a Hugging Face causal LM (eval mode), ``tokenizer`` its tokenizer. Call
    :meth:`start` once, :meth:`submit` from the event loop, :meth:`stop` to shut down.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        config: EngineConfig,
        metrics: SchedulerMetrics | None = None,
        device: str = "cpu",
        *,
        name: str = "local",
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self._decoder = fast_decoder(tokenizer)
        self.config = config
        self.device = device
        self.name = name
        self._metrics: BoundMetrics | None = metrics.bind(name) if metrics else None
        self._eos = eos_token_ids(model, tokenizer)
        pad = getattr(tokenizer, "pad_token_id", None)
        self._pad_id = int(pad) if pad is not None else (self._eos[0] if self._eos else 0)
        self.context_length = _context_length(model)
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._waiting: collections.deque[SequenceState] = collections.deque()
        self._running: dict[int, SequenceState] = {}
        self._batch: CausalLMBatch | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._completions = CompletionRate()
        self._completed_in_step = 0
        self._outbox: dict[asyncio.AbstractEventLoop, list[tuple[SequenceHandle, Any]]] = {}

    # ------------------------------------------------------------------ public API

    def set_max_batch_size(self, size: int) -> int:
        """Admit at most ``size`` running sequences from the next admission on (running
        ones are not evicted); return the previous limit. For benchmark sweeps."""
        if size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {size}")
        old = self.config.max_batch_size
        self.config = replace(self.config, max_batch_size=size)
        with self._cond:
            self._cond.notify_all()
        return old

    def start(self) -> None:
        """Start the worker thread."""
        if self._thread is not None:
            raise RuntimeError("scheduler already started")
        self._thread = threading.Thread(
            target=self._loop, name=f"optiserve-scheduler-{self.name}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop the worker; waiting and running sequences fail with Unavailable."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._cond:
            doomed = list(self._waiting) + list(self._running.values())
            self._waiting.clear()
            self._running.clear()
            self._batch = None
        error = Unavailable(f"model {self.name!r} is shutting down; retry on another replica")
        for seq in doomed:
            self._post(seq.handle, error)
        self._flush()

    @property
    def queue_depth(self) -> int:
        """Requests waiting for admission."""
        return len(self._waiting)

    @property
    def running_count(self) -> int:
        """Sequences in the running batch."""
        return len(self._running)

    def submit(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        deadline: float | None = None,
        stop_token_ids: tuple[tuple[int, ...], ...] = (),
    ) -> SequenceHandle:
        """Queue a sequence; call from the event loop that will iterate the handle.

        ``params`` must be resolved by the backend (``max_new_tokens`` an int >= 1, else
        ValueError: a bug, not a bad request); ``deadline`` is on the ``time.monotonic()``
        clock. Raises InvalidRequest for prompts that cannot fit, QueueFull (with
        ``retry_after_s``) when the waiting queue is full, and Unavailable when the
        scheduler is not running.
        """
        loop = asyncio.get_running_loop()
        if not prompt_ids:
            raise InvalidRequest("the prompt is empty; send at least one token")
        seq_id = next(self._ids)
        generator = None if is_greedy(params) else make_generator(params)
        # Checks the invariant (resolved sampling): a ValueError here is a bug upstream.
        request = SequenceRequest(seq_id, list(prompt_ids), params, generator, stop_token_ids)
        max_new = request.max_new_tokens
        total = len(prompt_ids) + max_new
        if total > self.config.max_batch_tokens:
            raise InvalidRequest(
                f"prompt ({len(prompt_ids)} tokens) + max_new_tokens ({max_new}) = {total} "
                f"exceeds max_batch_tokens ({self.config.max_batch_tokens}) of model "
                f"{self.name!r}; shorten the prompt or lower max_new_tokens"
            )
        if self.context_length is not None and total > self.context_length:
            raise InvalidRequest(
                f"prompt ({len(prompt_ids)} tokens) + max_new_tokens ({max_new}) = {total} "
                f"exceeds the context length ({self.context_length}) of model {self.name!r}; "
                "shorten the prompt or lower max_new_tokens"
            )
        handle = SequenceHandle(seq_id, loop)
        detok = IncrementalDetokenizer(self._decoder, list(prompt_ids[-_PROMPT_TAIL:]))
        with self._cond:
            if self._stopping or self._thread is None:
                raise Unavailable(f"model {self.name!r} is not running; retry shortly")
            self._check_room()
            self._waiting.append(SequenceState(request, handle, deadline, detok))
            depth = len(self._waiting)
            self._cond.notify()
        if self._metrics:
            self._metrics.queue_depth.set(depth)
        return handle

    # ------------------------------------------------------------------ worker loop

    def _check_room(self) -> None:
        """Raise QueueFull when the queue is full, or when a new request would likely wait
        longer than ``max_queue_delay_s`` (from the measured completion rate), so overload
        is refused at once instead of queued into a collapse. Call with ``_cond`` held."""
        waiting = len(self._waiting)
        wait = self._completions.expected_wait_s(waiting, time.monotonic())
        limit = self.config.max_queue_delay_s
        if waiting >= self.config.max_queue:
            hint = 1.0 if wait is None else min(60.0, max(0.05, wait))
            raise QueueFull(
                f"model {self.name!r} has {waiting} requests waiting (limit "
                f"{self.config.max_queue}); retry after {hint:.2f}s",
                retry_after_s=round(hint, 3),
            )
        if limit > 0 and wait is not None and wait > limit:
            hint = min(60.0, max(0.05, wait - limit))
            raise QueueFull(
                f"model {self.name!r} is overloaded: a new request would wait about "
                f"{wait:.1f} s behind {waiting} others (limit engine.max_queue_delay_s = "
                f"{limit:g} s); retry after {hint:.2f}s",
                retry_after_s=round(hint, 3),
            )

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._waiting and not self._running:
                    self._cond.wait()
                if self._stopping:
                    return
                if not self._running and self.config.max_wait_ms > 0:
                    self._gather()
                if self._stopping:
                    return
            started = time.monotonic()
            self._completed_in_step = 0
            try:
                self._step()
            except Exception as exc:  # a bug in the loop itself: fail everyone, keep serving
                log.exception("scheduler step crashed", extra={"model": self.name})
                error = step_error(self.name, "a scheduler step", exc)
                for seq in self._running.values():
                    self._post(seq.handle, error)
                self._running.clear()
                self._batch = None
            ended = time.monotonic()
            self._completions.step(ended, ended - started, self._completed_in_step)
            self._flush()

    def _gather(self) -> None:
        """Idle: wait up to max_wait_ms after the oldest arrival for a burst (lock held)."""
        until = self._waiting[0].submitted + self.config.max_wait_ms / 1000.0
        while len(self._waiting) < self.config.max_batch_size and not self._stopping:
            remaining = until - time.monotonic()
            if remaining <= 0:
                return
            self._cond.wait(remaining)

    def _step(self) -> None:
        now = time.monotonic()
        self._evict(now)
        idle = self._batch is None
        admitted = self._admit(now)
        while admitted:
            self._prefill(admitted)
            self._flush()  # first tokens go out now, not after the decode step
            # A burst into an idle batch is prefilled chunk after chunk: no earlier row's
            # decode waits on it. Once rows from before this step run, one chunk a step.
            admitted = self._admit(time.monotonic()) if idle else []
        if self._batch is not None:
            self._decode()
        if self._metrics:
            self._metrics.queue_depth.set(len(self._waiting))
            self._metrics.running.set(len(self._running))

    def _evict(self, now: float) -> None:
        """Drop cancelled and expired sequences from the queue and the running batch."""
        with self._cond:
            kept: collections.deque[SequenceState] = collections.deque()
            for seq in self._waiting:
                if seq.handle.cancelled:
                    continue
                if seq.deadline is not None and now >= seq.deadline:
                    self._post(seq.handle, self._deadline_error(seq))
                    continue
                kept.append(seq)
            self._waiting = kept
        gone = []
        for seq in self._running.values():
            if seq.handle.cancelled:
                gone.append(seq)
            elif seq.deadline is not None and now >= seq.deadline:
                self._post(seq.handle, self._deadline_error(seq))
                gone.append(seq)
        if gone:
            for seq in gone:
                del self._running[seq.request.seq_id]
            self._filter()

    def _deadline_error(self, seq: SequenceState) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"the deadline passed after {seq.tokens} generated tokens on model "
            f"{self.name!r}; allow more time or request fewer tokens"
        )

    def _admit(self, now: float) -> list[SequenceState]:
        """Pop waiting sequences in FIFO order while the batch and prefill limits allow."""
        budget = self.config.max_batch_tokens - sum(s.reserved for s in self._running.values())
        room = self.config.max_batch_size - len(self._running)
        admitted: list[SequenceState] = []
        widest = 0
        with self._cond:
            while self._waiting and room > 0 and self._waiting[0].reserved <= budget:
                head = self._waiting[0]
                widest = max(widest, len(head.request.prompt_ids))
                if admitted and widest * (len(admitted) + 1) > self.config.max_prefill_tokens:
                    break
                seq = self._waiting.popleft()
                budget -= seq.reserved
                room -= 1
                seq.admitted = now
                admitted.append(seq)
        if self._metrics:
            for seq in admitted:
                self._metrics.queue_wait.observe(now - seq.submitted)
        return admitted

    def _prefill(self, admitted: list[SequenceState]) -> None:
        """Prefill ``admitted`` and merge them into the running batch.

        A failed prefill of several requests is redone one request at a time (nothing of
        it reached the running batch), so a request that makes the model fail fails alone.
        """
        try:
            batch = CausalLMBatch.from_requests(
                [s.request for s in admitted], self._pad_id, self._eos, self.device
            )
            gens = batch.prefill(self.model)
        except Exception as exc:
            self._step_failed("prefill", exc, len(admitted))
            if len(admitted) > 1:
                for seq in admitted:
                    self._prefill([seq])
                return
            self._post(
                admitted[0].handle,
                step_error(
                    self.name,
                    "prefill",
                    exc,
                    "it failed for this request alone, and will fail again if retried",
                ),
            )
            return
        for seq in admitted:
            self._running[seq.request.seq_id] = seq
        keep = self._emit(gens)
        new = batch.filter(keep)
        if new is None:
            return
        try:
            if self._batch is None:
                longest = max(s.reserved for s in self._running.values())
                new.reserve(self.config.max_batch_size, longest)
                self._batch = new
            else:
                self._batch = CausalLMBatch.concatenate([self._batch, new])
        except Exception as exc:
            self._step_failed("batch merge", exc, len(self._running))
            self._fail_running(step_error(self.name, "batch merge", exc))

    def _decode(self) -> None:
        assert self._batch is not None
        started = time.perf_counter()
        try:
            gens = self._batch.decode(self.model)
        except ForwardError as exc:  # the batch is unchanged: retry the step once
            self._step_failed("decode", exc, len(self._running))
            try:
                gens = self._batch.decode(self.model)
            except Exception as again:
                self._step_failed("decode", again, len(self._running))
                detail = "the step failed twice in a row for the batch this request ran in"
                self._fail_running(step_error(self.name, "decode", again, detail))
                return
        except Exception as exc:  # the batch's own bookkeeping failed: not retried
            self._step_failed("decode", exc, len(self._running))
            self._fail_running(step_error(self.name, "decode", exc))
            return
        if self._metrics:
            elapsed = time.perf_counter() - started
            self._metrics.batch_size.observe(len(gens))
            self._metrics.tokens_per_second.set(len(gens) / elapsed if elapsed > 0 else 0.0)
        if len(self._emit(gens)) < len(gens):  # someone finished: free their slots
            self._filter()

    def _filter(self) -> None:
        if self._batch is not None:
            self._batch = self._batch.filter(list(self._running))

    def _step_failed(self, what: str, exc: Exception, rows: int) -> None:
        """Log and count a failed step (the caller decides who fails)."""
        log.warning(
            "model step failed",
            extra={"model": self.name, "step": what, "rows": rows, "error": repr(exc)},
            exc_info=exc,
        )
        if self._metrics:
            self._metrics.step_failures.inc()

    def _fail_running(self, error: OptiserveError) -> None:
        """Fail every running sequence with ``error`` and drop the running batch."""
        for seq in self._running.values():
            self._post(seq.handle, error)
        self._running.clear()
        self._batch = None

    def _row_failed(self, seq: SequenceState, failure: RowFailure) -> None:
        """One sequence failed on its own: fail it alone (the caller filters it out)."""
        log.warning(
            "sequence failed",
            extra={"model": self.name, "stage": failure.stage, "error": str(failure)},
            exc_info=failure,
        )
        if self._metrics:
            self._metrics.row_failures.inc()
        del self._running[seq.request.seq_id]
        self._post(seq.handle, row_error(self.name, failure))

    # ------------------------------------------------------------------ events

    def _emit(self, gens: list[Generation]) -> list[int]:
        """Turn one step's tokens into events; return the ids of the unfinished sequences."""
        now = time.monotonic()
        keep: list[int] = []
        metrics = self._metrics
        for gen in gens:
            seq = self._running.get(gen.seq_id)
            if seq is None:
                continue
            seq.tokens += 1
            if seq.tokens == 1:
                seq.first_token = now
                if metrics:
                    metrics.ttft.observe(now - seq.submitted)
            elif metrics:
                metrics.inter_token.observe(now - seq.last_token)
            seq.last_token = now
            try:
                text, finish = seq.output(gen)
            except RowFailure as failure:
                self._row_failed(seq, failure)
                continue
            if finish is None:
                self._post(seq.handle, TokenEvent(gen.token_id, text))
                keep.append(gen.seq_id)
                continue
            del self._running[gen.seq_id]
            self._post(seq.handle, TokenEvent(gen.token_id, text))
            self._post(seq.handle, self._completion(seq, finish, now))
        if metrics:
            metrics.tokens_generated.inc(len(gens))
        return keep

    def _completion(self, seq: SequenceState, finish: FinishReason, now: float) -> SequenceEnd:
        self._completed_in_step += 1
        return SequenceEnd(
            finish_reason=finish,
            prompt_tokens=len(seq.request.prompt_ids),
            completion_tokens=seq.tokens - (finish is FinishReason.EOS),
            queued_ms=(seq.admitted - seq.submitted) * 1000.0,
            first_token_at=seq.first_token,
            last_token_at=seq.last_token,
        )

    def _post(self, handle: SequenceHandle, item: SequenceEvent | OptiserveError) -> None:
        self._outbox.setdefault(handle._loop, []).append((handle, item))

    def _flush(self) -> None:
        """Deliver this step's events: one thread-safe callback per event loop."""
        outbox, self._outbox = self._outbox, {}
        for loop, items in outbox.items():
            try:
                loop.call_soon_threadsafe(deliver, items)
            except RuntimeError:  # the consumer's loop is closed: nobody is listening
                for handle, _ in items:
                    handle.cancelled = True


__all__ = [
    "EngineConfig",
    "Scheduler",
    "SequenceEnd",
    "SequenceEvent",
    "SequenceHandle",
    "TokenEvent",
]
