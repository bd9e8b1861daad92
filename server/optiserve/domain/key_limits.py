"""Limits per API key: requests per second, tokens per minute, concurrent streams.

Requests and tokens are each a token bucket: it holds at most ``capacity`` and refills at
``rate`` per second. A request takes one from the request bucket, or is refused when
there is less than one, told how long until there is. Tokens cannot be counted before
the answer exists, so the token bucket is charged afterwards with the tokens the request
used (prompt and completion, as its account recorded them, a cut answer's included) and
may go below zero; a key whose token bucket is empty is refused until it refills. So a
key uses at most its rate over time, plus one bucket's worth, plus the answers it had in
flight when the bucket ran out.

A call is named by its key's id when the key is known, else by its tenant (callers
without a known key share their tenant's limits: "anonymous", or the hash of the unknown
key). The limiter keeps the state of idle callers only until their buckets are full
again, so random unknown keys cannot grow it without bound.

Nothing here does I/O or imports grpc; the rpc layer checks calls with
:meth:`KeyLimiter.admit` and :data:`current_token_meter` carries the charge from the
request's account back to the bucket.
"""

from __future__ import annotations

import contextvars
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from optiserve.domain.errors import ResourceExhausted
from optiserve.domain.settings import at_least, check

#: Where a call's measured tokens go once its account closes (None: not limited).
current_token_meter: contextvars.ContextVar[Callable[[int], None] | None] = contextvars.ContextVar(
    "optiserve_token_meter", default=None
)


class KeyLimitReached(ResourceExhausted):
    """A key is over one of its limits; ``retry_after_s`` says when it may try again."""


@dataclass(frozen=True)
class KeyLimits:
    """Limits of one API key (``[key_limits]`` for every key; a key's own, set with
    ``optiserve keys create``, override them field by field). 0 = no limit."""

    #: OptiServe calls per second, refilled continuously.
    requests_per_s: float = 0.0
    #: Calls a key may make at once above its rate (0 = one second's worth, at least 1).
    burst: int = 0
    #: Prompt plus completion tokens per minute (cache hits included); a minute's worth
    #: may be used at once.
    tokens_per_min: int = 0
    #: Streaming calls (StreamGenerate, Benchmark, Quantize) in progress at once.
    max_streams: int = 0

    def __post_init__(self) -> None:
        check(
            self,
            {
                "requests_per_s": at_least(0),
                "burst": at_least(0),
                "tokens_per_min": at_least(0),
                "max_streams": at_least(0),
            },
        )

    @property
    def request_capacity(self) -> float:
        """The request bucket's size."""
        return float(self.burst or max(1, math.ceil(self.requests_per_s)))

    def overridden(self, own: Mapping[str, float]) -> KeyLimits:
        """These limits with a key's own settings (``own``: field name -> value) applied."""
        if not own:
            return self
        types = {f.name: f.type for f in fields(self)}
        values: dict[str, Any] = {
            k: (int(v) if types[k] in ("int", int) else float(v)) for k, v in own.items()
        }
        return replace(self, **values)

    @property
    def unlimited(self) -> bool:
        """Whether no limit is set."""
        return not (self.requests_per_s or self.tokens_per_min or self.max_streams)


LIMIT_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(KeyLimits))


def check_own_limits(own: Mapping[str, Any]) -> dict[str, float]:
    """A key's own limits, checked: known names, numbers in range; ValueError otherwise."""
    unknown = sorted(set(own) - set(LIMIT_FIELDS))
    if unknown:
        raise ValueError(f"unknown limit {unknown[0]!r}; limits are {', '.join(LIMIT_FIELDS)}")
    checked: dict[str, float] = {}
    for name, value in own.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"limit {name} must be a number, got {value!r}")
        checked[name] = value
    try:
        KeyLimits().overridden(checked)
    except ValueError as exc:
        raise ValueError(f"limit {exc}") from None
    return checked


class TokenBucket:
    """Holds at most ``capacity``, refills at ``rate`` per second; may be charged below 0."""

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.level = capacity
        self._at = now

    def refill(self, now: float) -> None:
        """Add what accrued since the last look."""
        if now > self._at:
            self.level = min(self.capacity, self.level + (now - self._at) * self.rate)
        self._at = max(self._at, now)

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until the bucket holds ``amount`` (0 when it does now)."""
        self.refill(now)
        if self.level >= amount - 1e-9:  # what accrued in exactly the hinted time suffices
            return 0.0
        return (amount - self.level) / self.rate

    def full(self, now: float) -> bool:
        """Whether the bucket is full again (its caller has been idle long enough)."""
        self.refill(now)
        return self.level >= self.capacity


@dataclass
class _Caller:
    requests: TokenBucket | None
    tokens: TokenBucket | None
    streams: int = 0


@dataclass(frozen=True)
class Admission:
    """A call let in; give it back to :meth:`KeyLimiter.finish` when the call ends."""

    caller: str
    streaming: bool


class KeyLimiter:
    """The buckets and stream counts of every caller. Runs on one event loop (no lock)."""

    #: Admissions between two sweeps of idle callers.
    SWEEP_EVERY = 1024

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._callers: dict[str, _Caller] = {}
        self._since_sweep = 0

    def __len__(self) -> int:
        return len(self._callers)

    def admit(self, caller: str, limits: KeyLimits, streaming: bool) -> Admission | None:
        """Let a call of ``caller`` in under ``limits``, or raise :class:`KeyLimitReached`.

        None when ``limits`` sets no limit (nothing to give back).
        """
        if limits.unlimited:
            return None
        now = self._clock()
        state = self._state(caller, limits, now)
        if state.tokens is not None:
            wait = state.tokens.wait_for(1.0, now)
            if wait > 0:
                raise KeyLimitReached(
                    f"{_who(caller)} used its {limits.tokens_per_min} tokens per minute "
                    f"(key_limits.tokens_per_min, or the key's own); retry in {wait:.1f} s",
                    retry_after_s=_round_up(wait),
                )
        if streaming and limits.max_streams and state.streams >= limits.max_streams:
            raise KeyLimitReached(
                f"{_who(caller)} already has {state.streams} streams in progress, its limit "
                "(key_limits.max_streams, or the key's own); wait for one to finish",
                retry_after_s=1.0,
            )
        if state.requests is not None:
            wait = state.requests.wait_for(1.0, now)
            if wait > 0:
                raise KeyLimitReached(
                    f"{_who(caller)} is over its {limits.requests_per_s:g} requests per "
                    f"second (burst {state.requests.capacity:g}; key_limits.requests_per_s, "
                    f"or the key's own); retry in {wait:.2f} s",
                    retry_after_s=_round_up(wait),
                )
            state.requests.level -= 1.0
        if streaming:
            state.streams += 1
        return Admission(caller, streaming)

    def charge(self, caller: str, tokens: int) -> None:
        """Take ``tokens`` (measured) from ``caller``'s token bucket, if it has one."""
        state = self._callers.get(caller)
        if state is not None and state.tokens is not None and tokens > 0:
            state.tokens.refill(self._clock())
            state.tokens.level -= tokens

    def finish(self, admission: Admission | None) -> None:
        """The call of ``admission`` ended."""
        if admission is None or not admission.streaming:
            return
        state = self._callers.get(admission.caller)
        if state is not None:
            state.streams = max(0, state.streams - 1)

    def _state(self, caller: str, limits: KeyLimits, now: float) -> _Caller:
        self._since_sweep += 1
        if self._since_sweep >= self.SWEEP_EVERY:
            self._since_sweep = 0
            self._sweep(now)
        state = self._callers.get(caller)
        if state is None:
            state = self._callers[caller] = _Caller(None, None)
        state.requests = _resized(
            state.requests, limits.requests_per_s, limits.request_capacity, now
        )
        per_min = float(limits.tokens_per_min)
        state.tokens = _resized(state.tokens, per_min / 60.0, per_min, now)
        return state

    def _sweep(self, now: float) -> None:
        """Forget callers with no stream in progress whose buckets are full again."""
        idle = [
            name
            for name, s in self._callers.items()
            if s.streams == 0
            and (s.requests is None or s.requests.full(now))
            and (s.tokens is None or s.tokens.full(now))
        ]
        for name in idle:
            del self._callers[name]


def _resized(
    bucket: TokenBucket | None, rate: float, capacity: float, now: float
) -> TokenBucket | None:
    """The bucket for ``rate`` and ``capacity``: kept (level and all) when they are
    unchanged, re-made when a limit changed (e.g. the keys file was edited), None when
    the limit is off."""
    if rate <= 0:
        return None
    if bucket is not None and bucket.rate == rate and bucket.capacity == capacity:
        return bucket
    fresh = TokenBucket(rate, capacity, now)
    if bucket is not None:
        bucket.refill(now)
        fresh.level = min(capacity, bucket.level)
    return fresh


def _who(caller: str) -> str:
    return (
        f"API key {caller.removeprefix('key:')}"
        if caller.startswith("key:")
        else (f"tenant {caller.removeprefix('tenant:')}")
    )


def _round_up(seconds: float) -> float:
    """A retry hint, rounded up to the millisecond so retrying then succeeds."""
    return math.ceil(seconds * 1000.0) / 1000.0
