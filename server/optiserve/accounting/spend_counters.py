"""Money spent and reserved per (scope, period): in this process, or shared in Redis.

A counter is keyed by a scope (``"global"`` or ``"tenant:<name>"``) and a UTC period
(``"day:2026-12-02"``, ``"month:2026-12"``) and holds two integers in **nano-dollars**
(1e-9 USD): ``settled`` (what finished requests cost) and ``reserved`` (the worst cases of
requests still running). Budgets round reservations and charges *up* to the nano-dollar, so
the counters never undercount; the exact figures are the ledger's.

:class:`MemorySpendCounters` serves one process. :class:`RedisSpendCounters` shares the
counters between replicas through the exact cache's Redis, so a limit holds for the whole
fleet: the check of every applicable limit and the reservation are one Lua script
(atomic in Redis; a reply lost on its way back leaves the reservation in Redis until its
key expires, the safe side), amounts move with ``HINCRBY``, and each key expires
``EXPIRY_GRACE`` after its period ends. All keys share one hash tag, so the scripts also
run on a Redis Cluster. Lua compares in doubles: exact up to 2**53 nano-dollars (about
$9 million) per scope and period.

Redis down. Budgets must not stop serving because Redis did, so when Redis does not answer
within ``timeout_s`` the counters fall back to this process (a warning is logged once per
outage, and Redis is tried again every ``retry_after_s``). The trade-off: during an outage
each replica enforces every limit on *its own* spend (what it spent since start, loaded from
its ledger, plus what it spends during the outage), so the fleet together can pass a limit,
at most by a factor of the number of replicas. What Redis missed during the outage (charges,
and the ends of reservations it holds) is kept and added to Redis once it answers again, so
the shared totals catch up. Give that Redis persistence (RDB or AOF): a Redis restarted
empty forgets the period's shared spend, and replicas put back only what their own ledgers
hold when they next start (:meth:`Budgets.load_from`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

logger = logging.getLogger(__name__)

#: A counter outlives its period by this much, for requests that reserved in the period and
#: settle after it ended (a request straddling midnight counts in the day it reserved in).
EXPIRY_GRACE = timedelta(hours=1)

#: Redis key prefix; the braces are a hash tag, so every budget key lives in one slot.
PREFIX = "{optiserve:budget}:"


@dataclass(frozen=True)
class CounterKey:
    """One scope in one UTC period ``[starts_at, ends_at)``."""

    scope: str
    period: str
    starts_at: datetime
    ends_at: datetime

    @property
    def name(self) -> str:
        """``"<period>:<scope>"``, e.g. ``"day:2026-12-02:tenant:acme"``."""
        return f"{self.period}:{self.scope}"


@dataclass(frozen=True)
class Spend:
    """A counter's value, in nano-dollars."""

    settled: int = 0
    reserved: int = 0

    @property
    def total(self) -> int:
        """Settled plus reserved: what a new reservation is checked against."""
        return self.settled + self.reserved


@dataclass(frozen=True)
class Hold:
    """A reservation of ``amount`` nano-dollars on ``keys``, as the counters took it."""

    keys: tuple[CounterKey, ...]
    amount: int
    #: True when Redis holds the reservation (False: this process alone does).
    shared: bool = False


@dataclass(frozen=True)
class Refusal:
    """A reservation refused: ``(index into the limits, spend in nano-dollars)`` of each
    limit that ``amount`` would have passed."""

    over: tuple[tuple[int, int], ...]


class SpendCounters(Protocol):
    """Where budgets keep spent and reserved money."""

    def reserve(self, limits: Sequence[tuple[CounterKey, int]], amount: int) -> Hold | Refusal:
        """Atomically: when ``settled + reserved + amount <= limit`` for every
        ``(key, limit)``, add ``amount`` to each key's reserved and return the hold; else
        change nothing and return which limits it would pass."""
        ...

    def settle(self, hold: Hold, actual: int) -> None:
        """End ``hold``: take its amount off reserved and add ``actual`` to settled."""
        ...

    def read(self, keys: Sequence[CounterKey]) -> list[Spend]:
        """The current value of each key (zero for a key never used)."""
        ...

    def raise_settled(self, key: CounterKey, settled: int) -> None:
        """Make ``key``'s settled at least ``settled`` (spend found in a ledger at start)."""
        ...

    def scopes(self, period: str) -> list[str]:
        """The scopes that have a counter in ``period``."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


@dataclass
class _Entry:
    key: CounterKey
    settled: int = 0
    reserved: int = 0


class MemorySpendCounters:
    """Counters in this process, under one lock. Counters of periods that ended more than
    ``EXPIRY_GRACE`` before a new period starts are dropped when its first counter is made."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}

    def _entry(self, key: CounterKey) -> _Entry:
        entry = self._entries.get(key.name)
        if entry is None:
            for name, old in list(self._entries.items()):
                if old.key.ends_at + EXPIRY_GRACE <= key.starts_at:
                    del self._entries[name]
            entry = self._entries[key.name] = _Entry(key)
        return entry

    def reserve(self, limits: Sequence[tuple[CounterKey, int]], amount: int) -> Hold | Refusal:
        with self._lock:
            entries = [self._entry(key) for key, _ in limits]
            over = tuple(
                (i, e.settled + e.reserved)
                for i, (e, (_, limit)) in enumerate(zip(entries, limits, strict=True))
                if e.settled + e.reserved + amount > limit
            )
            if over:
                return Refusal(over)
            for entry in entries:
                entry.reserved += amount
        return Hold(tuple(key for key, _ in limits), amount)

    def add_reserved(self, keys: Sequence[CounterKey], amount: int) -> None:
        """Add ``amount`` to each key's reserved without a check (the mirror of a
        reservation that Redis admitted)."""
        with self._lock:
            for key in keys:
                self._entry(key).reserved += amount

    def settle(self, hold: Hold, actual: int) -> None:
        with self._lock:
            for key in hold.keys:
                entry = self._entries.get(key.name)
                if entry is not None:  # else its period ended long ago: nobody reads it
                    entry.reserved -= hold.amount
                    entry.settled += actual

    def read(self, keys: Sequence[CounterKey]) -> list[Spend]:
        with self._lock:
            found = [self._entries.get(key.name) for key in keys]
        return [Spend(e.settled, e.reserved) if e else Spend() for e in found]

    def raise_settled(self, key: CounterKey, settled: int) -> None:
        with self._lock:
            entry = self._entry(key)
            entry.settled = max(entry.settled, settled)

    def scopes(self, period: str) -> list[str]:
        with self._lock:
            return sorted(e.key.scope for e in self._entries.values() if e.key.period == period)

    def close(self) -> None:
        """Nothing to release."""


_RESERVE = """
-- KEYS[i]: the counter of limit i; ARGV[1]: amount; ARGV[1+i]: limit i;
-- ARGV[1+n+i]: when KEYS[i] expires (ms since the epoch)
local n = #KEYS
local amount = tonumber(ARGV[1])
local over = {}
for i = 1, n do
  local v = redis.call('HMGET', KEYS[i], 'settled', 'reserved')
  local spent = (tonumber(v[1]) or 0) + (tonumber(v[2]) or 0)
  if spent + amount > tonumber(ARGV[1 + i]) then
    over[#over + 1] = i - 1
    over[#over + 1] = spent
  end
end
if #over == 0 then
  for i = 1, n do
    redis.call('HINCRBY', KEYS[i], 'reserved', ARGV[1])
    redis.call('PEXPIREAT', KEYS[i], ARGV[1 + n + i])
  end
end
return over
"""

_APPLY = """
-- For each KEYS[i]: ARGV[3i-2] added to settled, ARGV[3i-1] to reserved, ARGV[3i] = expiry.
-- Reserved never goes below 0 (a Redis restarted empty forgot the reservations it held).
for i = 1, #KEYS do
  redis.call('HINCRBY', KEYS[i], 'settled', ARGV[3 * i - 2])
  if redis.call('HINCRBY', KEYS[i], 'reserved', ARGV[3 * i - 1]) < 0 then
    redis.call('HSET', KEYS[i], 'reserved', 0)
  end
  redis.call('PEXPIREAT', KEYS[i], ARGV[3 * i])
end
return 0
"""

_RAISE = """
-- KEYS[1]: a counter; ARGV[1]: the least its settled may be; ARGV[2]: expiry
local settled = tonumber(redis.call('HGET', KEYS[1], 'settled') or '0')
if settled < tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'settled', ARGV[1])
end
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return 0
"""


def _expiry_ms(key: CounterKey) -> int:
    return int((key.ends_at + EXPIRY_GRACE).timestamp() * 1000)


class RedisSpendCounters:
    """Counters shared through Redis at ``url``, falling back to this process while Redis
    does not answer (see the module docstring for the trade-off)."""

    def __init__(self, url: str, *, timeout_s: float = 0.2, retry_after_s: float = 5.0) -> None:
        import redis

        self.url = url
        self.retry_after_s = retry_after_s
        self.errors = 0
        self._local = MemorySpendCounters()
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._warned = False
        #: Changes Redis missed: counter name -> [key, settled delta, reserved delta].
        self._pending: dict[str, list[Any]] = {}
        self._client: Any = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._reserve = self._client.register_script(_RESERVE)
        self._apply = self._client.register_script(_APPLY)
        self._raise = self._client.register_script(_RAISE)

    @property
    def shared(self) -> bool:
        """False while Redis is considered down and this process counts alone."""
        return time.monotonic() >= self._down_until

    def _failed(self, exc: Exception) -> None:
        with self._lock:
            self.errors += 1
            self._down_until = time.monotonic() + self.retry_after_s
            if not self._warned:
                logger.warning(
                    "Redis budget counters at %s are unreachable (%s): each replica now "
                    "enforces the spending limits on its own spend until Redis answers again",
                    self.url,
                    exc,
                )
                self._warned = True

    def _ok(self) -> None:
        if self._warned:
            logger.info("Redis budget counters at %s answer again", self.url)
            self._warned = False

    def _usable(self) -> bool:
        """True when Redis may be asked now; first hands it the changes it missed."""
        if not self.shared:
            return False
        with self._lock:
            missed, self._pending = list(self._pending.values()), {}
        if not missed:
            return True
        if self._send(missed):
            return True
        self._keep(missed)
        return False

    def _send(self, changes: Sequence[Sequence[Any]]) -> bool:
        args: list[int] = []
        for key, settled, reserved in changes:
            args += [settled, reserved, _expiry_ms(key)]
        try:
            self._apply(keys=[PREFIX + key.name for key, _, _ in changes], args=args)
        except Exception as exc:  # any client or network error means "fall back"
            self._failed(exc)
            return False
        self._ok()
        return True

    def _keep(self, changes: Sequence[Sequence[Any]]) -> None:
        with self._lock:
            for key, settled, reserved in changes:
                kept = self._pending.setdefault(key.name, [key, 0, 0])
                kept[1] += settled
                kept[2] += reserved

    def reserve(self, limits: Sequence[tuple[CounterKey, int]], amount: int) -> Hold | Refusal:
        if self._usable():
            keys = [key for key, _ in limits]
            args = [amount, *(limit for _, limit in limits), *map(_expiry_ms, keys)]
            try:
                over = self._reserve(keys=[PREFIX + key.name for key in keys], args=args)
            except Exception as exc:
                self._failed(exc)
            else:
                self._ok()
                if over:
                    pairs = zip(over[::2], over[1::2], strict=True)
                    return Refusal(tuple((int(i), int(spent)) for i, spent in pairs))
                self._local.add_reserved(keys, amount)
                return Hold(tuple(keys), amount, shared=True)
        return self._local.reserve(limits, amount)

    def settle(self, hold: Hold, actual: int) -> None:
        self._local.settle(hold, actual)
        # Redis never saw a reservation taken while it was down: only the charge goes there.
        changes = [(key, actual, -hold.amount if hold.shared else 0) for key in hold.keys]
        if not changes or (self._usable() and self._send(changes)):
            return
        self._keep(changes)

    def read(self, keys: Sequence[CounterKey]) -> list[Spend]:
        if keys and self._usable():
            try:
                pipe = self._client.pipeline(transaction=False)
                for key in keys:
                    pipe.hmget(PREFIX + key.name, "settled", "reserved")
                found = pipe.execute()
            except Exception as exc:
                self._failed(exc)
            else:
                self._ok()
                return [Spend(int(s or 0), int(r or 0)) for s, r in found]
        return self._local.read(keys)

    def raise_settled(self, key: CounterKey, settled: int) -> None:
        self._local.raise_settled(key, settled)
        if self._usable():
            try:
                self._raise(keys=[PREFIX + key.name], args=[settled, _expiry_ms(key)])
            except Exception as exc:
                self._failed(exc)
            else:
                self._ok()

    def scopes(self, period: str) -> list[str]:
        if self._usable():
            start = f"{PREFIX}{period}:"
            try:
                names = list(self._client.scan_iter(match=start + "*", count=1000))
            except Exception as exc:
                self._failed(exc)
            else:
                self._ok()
                return sorted(name.decode()[len(start) :] for name in names)
        return self._local.scopes(period)

    def close(self) -> None:
        """Close the connection pool."""
        with contextlib.suppress(Exception):  # closing a dead connection may raise
            self._client.close()
