"""How long to wait before calling a provider again, and whether to call it at all.

A request makes at most ``1 + max_retries`` upstream calls per model (the SDKs' own retries
are off: ``max_retries=0`` on every client). Between calls the wait is exponential with
jitter, ``backoff_s * 2**n`` capped at ``backoff_max_s`` and scaled by a random factor in
[0.5, 1] so that clients rate-limited together do not come back together. A Retry-After
(``retry-after`` in seconds or as an HTTP date, or ``retry-after-ms``) wins when longer: no
call goes out before the provider said it may. A Retry-After longer than ``backoff_max_s``,
or one that would outlast the request's deadline, is not waited for: the request fails at
once with the provider's hint (``retry_after_s``), so a route can fall back to another model
instead of holding the client.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from optiserve.models.remote.config import ProviderConfig


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """The wait a response asks for (``retry-after-ms``, else ``retry-after`` as seconds or
    an HTTP date), or None when it asks for none or the header cannot be read."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(float(raw_ms) / 1000.0, 0.0)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(float(raw), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff and jitter (see the module docstring)."""

    max_retries: int
    backoff_s: float
    backoff_max_s: float
    #: A factor in [0, 1) per call; injectable so tests can pin the jitter.
    jitter: Callable[[], float] = random.random

    @classmethod
    def of(cls, provider: ProviderConfig) -> RetryPolicy:
        """The policy configured for ``provider``."""
        return cls(provider.max_retries, provider.backoff_s, provider.backoff_max_s)

    @property
    def max_calls(self) -> int:
        """Upstream calls one request may make to one model."""
        return 1 + self.max_retries

    def wait_s(
        self, retry: int, retry_after: float | None, deadline: float | None, now: float
    ) -> float | None:
        """Seconds to wait before retry number ``retry`` (1-based), or None when the request
        should fail now: no retries left, a Retry-After longer than ``backoff_max_s``, or a
        wait that would outlast ``deadline`` (monotonic)."""
        if retry > self.max_retries:
            return None
        if retry_after is not None and retry_after > self.backoff_max_s:
            return None
        base = min(self.backoff_s * 2.0 ** (retry - 1), self.backoff_max_s)
        wait = base * (0.5 + 0.5 * self.jitter())
        if retry_after is not None:
            wait = max(wait, retry_after)
        if deadline is not None and now + wait >= deadline:
            return None
        return wait
