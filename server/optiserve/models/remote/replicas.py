"""Replicas of one provider (several base URLs of an OpenAI-compatible server, e.g. a vLLM
fleet): which one takes the next call.

The choice is the replica with the fewest outstanding calls among the healthy ones, ties
broken in turn so that an idle fleet is still spread. Health is passive: a replica whose
calls failed ``failures_to_eject`` times in a row (connection errors, timeouts, 5xx, cut
streams; not the request's own faults such as a 400) is skipped for ``cooldown_s``. After
its cooldown it gets calls again and one more failure ejects it again; one success clears
its count. When every replica is cooling down, the one whose cooldown ends first is used
rather than failing outright: a fleet that is down answers with its own errors, and one
that came back is found without waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

ClientT = TypeVar("ClientT")


@dataclass(eq=False)
class Replica(Generic[ClientT]):
    """One base URL and the SDK client that calls it."""

    url: str
    client: ClientT
    outstanding: int = 0
    failures_in_row: int = 0
    #: Monotonic time until which the replica is skipped (0: healthy).
    cooled_until: float = 0.0
    #: Calls started on this replica (for tests and logs).
    calls: int = 0


class ReplicaSet(Generic[ClientT]):
    """Least-outstanding choice with passive health (see the module docstring).

    Not thread-safe: used from the event loop only.
    """

    def __init__(
        self,
        replicas: Sequence[Replica[ClientT]],
        *,
        failures_to_eject: int,
        cooldown_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not replicas:
            raise ValueError("a replica set needs at least one replica")
        self.replicas = tuple(replicas)
        self._failures_to_eject = failures_to_eject
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._turn = 0

    def pick(self, avoid: Collection[Replica[ClientT]] = ()) -> Replica[ClientT]:
        """The replica for the next call: healthy, not in ``avoid`` (those this request
        already tried) when another is left, fewest outstanding calls, in turn on ties."""
        now = self._clock()
        healthy = [r for r in self.replicas if r.cooled_until <= now]
        if not healthy:
            return min(self.replicas, key=lambda r: r.cooled_until)
        fresh = [r for r in healthy if r not in avoid] or healthy
        n = len(self.replicas)
        start = self._turn
        self._turn = (self._turn + 1) % n
        order = {id(r): (i - start) % n for i, r in enumerate(self.replicas)}
        return min(fresh, key=lambda r: (r.outstanding, order[id(r)]))

    def started(self, replica: Replica[ClientT]) -> None:
        """A call to ``replica`` began."""
        replica.outstanding += 1
        replica.calls += 1

    def finished(self, replica: Replica[ClientT], *, ok: bool | None) -> None:
        """A call to ``replica`` ended: ``ok`` True (healthy answer), False (the replica
        failed) or None (no verdict: the request's own fault, or it was cancelled)."""
        replica.outstanding -= 1
        if ok is None:
            return
        if ok:
            replica.failures_in_row = 0
            replica.cooled_until = 0.0
            return
        replica.failures_in_row += 1
        if replica.failures_in_row >= self._failures_to_eject:
            # The count is kept: after the cooldown one more failure ejects it again.
            replica.cooled_until = self._clock() + self._cooldown_s

    def ejected(self) -> list[str]:
        """URLs of the replicas cooling down now."""
        now = self._clock()
        return [r.url for r in self.replicas if r.cooled_until > now]
