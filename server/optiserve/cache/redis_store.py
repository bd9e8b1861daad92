"""Optional shared exact layer in Redis, for several replicas behind one load balancer.

Values are small JSON documents (the answer and its metadata) under
``optiserve:cache:<exact key>`` with the entry's TTL (Redis expires them itself; its own
``maxmemory-policy`` bounds memory). Redis is an accelerator, never a dependency: when it is
configured but unreachable, every call returns None/False after ``timeout_s``, a warning is
logged once, and the exact layer carries on in process; it retries Redis every
``retry_after_s``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

PREFIX = "optiserve:cache:"


@dataclass(frozen=True)
class RedisAnswer:
    """An answer as stored in Redis."""

    entry_id: str
    text: str
    model: str
    completion_tokens: int
    cost_usd: float
    finish_reason: str


class RedisExact:
    """Exact-key answers in Redis with graceful fallback when Redis is down."""

    def __init__(self, url: str, *, timeout_s: float = 0.2, retry_after_s: float = 5.0) -> None:
        import redis

        self.url = url
        self.retry_after_s = retry_after_s
        self.errors = 0
        self._down_until = 0.0
        self._warned = False
        self._lock = threading.Lock()
        self._client: Any = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )

    @property
    def available(self) -> bool:
        """False while Redis is considered down (between retries)."""
        return time.monotonic() >= self._down_until

    def _failed(self, exc: Exception) -> None:
        with self._lock:
            self.errors += 1
            self._down_until = time.monotonic() + self.retry_after_s
            if not self._warned:
                logger.warning(
                    "Redis cache at %s is unreachable (%s): the exact cache falls back to "
                    "this process until it answers again",
                    self.url,
                    exc,
                )
                self._warned = True

    def _ok(self) -> None:
        if self._warned:
            logger.info("Redis cache at %s answers again", self.url)
            self._warned = False

    def get(self, key: str) -> RedisAnswer | None:
        """The answer under ``key``, or None on a miss or when Redis is down."""
        if not self.available:
            return None
        try:
            raw = self._client.get(PREFIX + key)
        except Exception as exc:  # any client/network error means "fall back"
            self._failed(exc)
            return None
        self._ok()
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            return RedisAnswer(
                entry_id=str(data["entry_id"]),
                text=str(data["text"]),
                model=str(data["model"]),
                completion_tokens=int(data["completion_tokens"]),
                cost_usd=float(data["cost_usd"]),
                finish_reason=str(data["finish_reason"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("ignoring unreadable Redis cache value under %s: %s", key, exc)
            return None

    def put(self, key: str, answer: RedisAnswer, ttl_s: float) -> bool:
        """Store ``answer`` under ``key`` (``ttl_s`` 0 = no expiry); False when Redis is down."""
        if not self.available:
            return False
        payload = json.dumps(answer.__dict__, ensure_ascii=False)
        try:
            if ttl_s > 0:
                self._client.set(PREFIX + key, payload, px=max(1, int(ttl_s * 1000)))
            else:
                self._client.set(PREFIX + key, payload)
        except Exception as exc:
            self._failed(exc)
            return False
        self._ok()
        return True

    def delete(self, key: str) -> None:
        """Forget ``key`` (best effort)."""
        if not self.available:
            return
        try:
            self._client.delete(PREFIX + key)
        except Exception as exc:
            self._failed(exc)

    def close(self) -> None:
        """Close the connection pool."""
        with contextlib.suppress(Exception):  # closing a dead connection may raise
            self._client.close()
