"""The measured service rate of a scheduler, and the queue delay it predicts.

The rate is the sequences completed per second *of work*: each scheduler step reports how
long it ran and how many sequences it completed, and the rate is their sums over the
steps of the last ``window_s`` seconds. Idle time is not counted, so a server that was
idle does not look slow to the first burst after it; and sequences finish in bursts (a
batch that started together ends together), which a count over many steps absorbs. A
request queued behind ``waiting`` others is expected to wait ``waiting / rate``.
"""

from __future__ import annotations

import collections
import threading

#: Completions needed in the window before a rate is given.
MIN_COMPLETIONS = 2


class CompletionRate:
    """Completions per busy second over the last ``window_s`` seconds (thread-safe)."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._steps: collections.deque[tuple[float, float, int]] = collections.deque()
        self._busy_s = 0.0
        self._completed = 0
        self._lock = threading.Lock()

    def step(self, now: float, busy_s: float, completed: int) -> None:
        """A step that ended at ``now`` (``time.monotonic()``) ran ``busy_s`` seconds and
        completed ``completed`` sequences."""
        with self._lock:
            self._steps.append((now, busy_s, completed))
            self._busy_s += busy_s
            self._completed += completed
            self._prune(now)

    def per_s(self, now: float) -> float:
        """The rate, or 0.0 while fewer than MIN_COMPLETIONS fall in the window."""
        with self._lock:
            self._prune(now)
            if self._completed < MIN_COMPLETIONS or self._busy_s <= 0:
                return 0.0
            return self._completed / self._busy_s

    def expected_wait_s(self, waiting: int, now: float) -> float | None:
        """Seconds a request queued behind ``waiting`` others would likely wait (None:
        no rate measured yet)."""
        rate = self.per_s(now)
        return waiting / rate if rate > 0 else None

    def _prune(self, now: float) -> None:
        horizon = now - self.window_s
        while self._steps and self._steps[0][0] < horizon:
            _, busy_s, completed = self._steps.popleft()
            self._busy_s -= busy_s
            self._completed -= completed
        if not self._steps:  # no float drift left behind
            self._busy_s, self._completed = 0.0, 0
