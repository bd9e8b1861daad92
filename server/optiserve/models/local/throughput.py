"""The measured completion rate of a scheduler, and the queue delay it predicts.

Sequences finish in bursts (a batch that started together ends together), so the rate is
a count over a sliding window, not an average of gaps between completions. It estimates
how long a new request would wait behind the queue: ``waiting / rate``.
"""

from __future__ import annotations

import collections
import threading


class CompletionRate:
    """Completions per second over the last ``window_s`` seconds (thread-safe)."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._times: collections.deque[float] = collections.deque()
        self._first: float | None = None
        self._lock = threading.Lock()

    def add(self, now: float, count: int = 1) -> None:
        """``count`` sequences completed at ``now`` (``time.monotonic()``)."""
        with self._lock:
            if self._first is None:
                self._first = now
            self._times.extend([now] * count)
            self._prune(now)

    def per_s(self, now: float) -> float:
        """The rate, or 0.0 while fewer than two completions fall in the window."""
        with self._lock:
            self._prune(now)
            if len(self._times) < 2 or self._first is None:
                return 0.0
            # The window, or the time since the first completion when that is shorter
            # (a server just started); never under the span the completions cover.
            span = min(self.window_s, now - self._first)
            span = max(span, self._times[-1] - self._times[0], 1e-3)
            return len(self._times) / span

    def expected_wait_s(self, waiting: int, now: float) -> float | None:
        """Seconds a request queued behind ``waiting`` others would likely wait (None:
        no rate measured yet)."""
        rate = self.per_s(now)
        return waiting / rate if rate > 0 else None

    def _prune(self, now: float) -> None:
        horizon = now - self.window_s
        while self._times and self._times[0] < horizon:
            self._times.popleft()
