"""One request's account: the tokens it produced so far, recorded exactly once.

The service opens an account when a request reaches a model (or the cache answers it),
adds the prompt and completion tokens as the model reports them, and closes it once: with
the summary when the answer completed, otherwise with the outcome the failure maps to
(:func:`outcome_of`). Closing also charges the tokens to the caller's per-key token limit
(:data:`optiserve.domain.key_limits.current_token_meter`), when it has one.
"""

from __future__ import annotations

import asyncio
import time

from optiserve.accounting.usage import Outcome, UsageTracker
from optiserve.domain.errors import DeadlineExceeded
from optiserve.domain.key_limits import current_token_meter
from optiserve.domain.types import CacheLayer, ResponseSummary

#: A cut this close before the request's own deadline is the deadline's (the transport's
#: timer and the monotonic clock the deadline was computed on may differ by a little).
DEADLINE_SLACK_S = 0.005


def outcome_of(error: BaseException, deadline: float | None, now: float | None = None) -> Outcome:
    """The outcome of a request ended by ``error``.

    The transport cancels the handler both when the client goes away and when the client's
    deadline passes, so a cancellation counts as a deadline when the request's own
    ``deadline`` (``time.monotonic()`` clock) has passed.
    """
    if isinstance(error, DeadlineExceeded):
        return Outcome.DEADLINE_EXCEEDED
    if isinstance(error, (GeneratorExit, asyncio.CancelledError)):
        now = time.monotonic() if now is None else now
        if deadline is not None and now >= deadline - DEADLINE_SLACK_S:
            return Outcome.DEADLINE_EXCEEDED
        return Outcome.CANCELLED
    return Outcome.ERROR


class RequestAccount:
    """Usage of one request for ``model``; the first close records, later ones do nothing."""

    def __init__(self, usage: UsageTracker, model: str, deadline: float | None) -> None:
        self._usage = usage
        self.model = model
        self.deadline = deadline
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.closed = False

    def started(self, prompt_tokens: int) -> None:
        """The model accepted the prompt (its measured size)."""
        self.prompt_tokens = prompt_tokens

    def produced(self, tokens: int) -> None:
        """The model produced ``tokens`` more tokens of the answer."""
        self.completion_tokens += tokens

    def completed(self, summary: ResponseSummary, hit: CacheLayer | None = None) -> None:
        """Record the completed request with its summary (authoritative figures)."""
        if not self.closed:
            self.closed = True
            self._usage.record(self.model, summary, hit)
            _meter(summary.usage.prompt_tokens + summary.usage.completion_tokens)

    def cut(self, error: BaseException) -> Outcome | None:
        """Record the request ended by ``error`` with the tokens produced until then;
        return the outcome (None when the account was already closed)."""
        if self.closed:
            return None
        self.closed = True
        outcome = outcome_of(error, self.deadline)
        self._usage.record_cut(
            self.model,
            outcome,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
        )
        _meter(self.prompt_tokens + self.completion_tokens)
        return outcome


def _meter(tokens: int) -> None:
    meter = current_token_meter.get()
    if meter is not None:
        meter(tokens)
