"""One pooled HTTP client per provider, shared by every model of that provider.

The composition root makes one :class:`ProviderPools` and hands it to
:func:`~optiserve.models.remote.factory.build_remote_backend` for every remote model; there
is no process-wide registry. A model's ``load`` opens (or joins) its provider's
:class:`ProviderPool`: one ``httpx2.AsyncClient`` with the provider's timeouts and
connection limit, one SDK client per base URL on top of it, and the
:class:`~optiserve.models.remote.replicas.ReplicaSet` that spreads calls over them (health
and outstanding calls are therefore counted per provider, across its models). Nothing
touches the network before the first call.

Closing is counted: each model's ``close`` leaves the pool, and the last one closes the HTTP
client. ``Backend.close`` is synchronous while the client closes on an event loop, so
:meth:`ProviderPools.release` does what works where it is called (see :func:`_close_soon`);
a caller on the loop may instead ``await pools.aclose()``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, cast

import httpx2

from optiserve.models.remote.config import ProviderConfig
from optiserve.models.remote.replicas import ClientT, Replica, ReplicaSet

log = logging.getLogger(__name__)

#: Builds the SDK client for one base URL (None: the SDK's default) over the shared pool.
ClientFactory = Callable[[str | None, httpx2.AsyncClient], ClientT]

#: Seconds a close from another thread waits for the event loop to close the pool.
_CLOSE_WAIT_S = 5.0


@dataclass(eq=False)
class ProviderPool(Generic[ClientT]):
    """A provider's HTTP pool, SDK clients and replicas."""

    provider: ProviderConfig
    http: httpx2.AsyncClient
    replicas: ReplicaSet[ClientT]
    users: int = 0
    #: The event loop the pool's connections live on (set by the first call).
    loop: asyncio.AbstractEventLoop | None = None
    _closing: set[asyncio.Task[None]] = field(default_factory=set)

    def bind_loop(self) -> None:
        """Remember the running loop (where the connections must later be closed)."""
        if self.loop is None:
            self.loop = asyncio.get_running_loop()


class ProviderPools:
    """The providers' pools, by provider name (see the module docstring)."""

    def __init__(self) -> None:
        self._pools: dict[str, ProviderPool[Any]] = {}
        self._lock = threading.Lock()

    def open(
        self, provider: ProviderConfig, build: ClientFactory[ClientT]
    ) -> ProviderPool[ClientT]:
        """Join ``provider``'s pool, creating it (and its SDK clients) on first use."""
        with self._lock:
            pool = self._pools.get(provider.name)
            if pool is None:
                pool = _new_pool(provider, build)
                self._pools[provider.name] = pool
            elif pool.provider != provider:
                raise ValueError(f"two different providers are named {provider.name!r}")
            pool.users += 1
            return cast(ProviderPool[ClientT], pool)

    def release(self, provider: ProviderConfig) -> None:
        """Leave ``provider``'s pool; the last user closes it (best effort, see
        :func:`_close_soon`)."""
        with self._lock:
            pool = self._pools.get(provider.name)
            if pool is None:
                return
            pool.users -= 1
            if pool.users > 0:
                return
            del self._pools[provider.name]
        _close_soon(pool)

    async def aclose(self) -> None:
        """Close every pool now, on the running loop (whatever their users)."""
        with self._lock:
            pools = list(self._pools.values())
            self._pools.clear()
        for pool in pools:
            await pool.http.aclose()

    def __contains__(self, provider_name: object) -> bool:
        return provider_name in self._pools


def _new_pool(provider: ProviderConfig, build: ClientFactory[ClientT]) -> ProviderPool[ClientT]:
    http = httpx2.AsyncClient(
        timeout=httpx2.Timeout(provider.timeout_s, connect=provider.connect_timeout_s),
        limits=httpx2.Limits(
            max_connections=provider.max_connections,
            max_keepalive_connections=provider.max_connections,
        ),
        follow_redirects=True,
    )
    urls: tuple[str | None, ...] = provider.base_urls or (None,)
    replicas = [Replica(url or "(default)", build(url, http)) for url in urls]
    return ProviderPool(
        provider,
        http,
        ReplicaSet(
            replicas,
            failures_to_eject=provider.failures_to_eject,
            cooldown_s=provider.cooldown_s,
        ),
    )


def _close_soon(pool: ProviderPool[Any]) -> None:
    """Close ``pool``'s HTTP client from wherever ``Backend.close`` runs.

    - On the pool's loop (in a coroutine): a task closes it, soon.
    - On another thread while the pool's loop runs (``asyncio.to_thread(backend.close)``,
      as the app does): the close runs on that loop and this thread waits for it.
    - The pool was never used (no connections yet): closed on a loop of its own, here.
    - Its loop is stopped but not closed: closed on that loop, here.
    - Its loop is closed (or stopped while another loop runs in this thread): the
      connections cannot be closed on it any more; they go with the pool.
    """
    loop = pool.loop
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is not None and (loop is None or loop is running):
        task = running.create_task(pool.http.aclose())
        pool._closing.add(task)
        task.add_done_callback(pool._closing.discard)
    elif loop is not None and loop.is_running():
        future = asyncio.run_coroutine_threadsafe(pool.http.aclose(), loop)
        if running is None:  # never block a running loop on another one
            try:
                future.result(_CLOSE_WAIT_S)
            except Exception as exc:  # best effort: the process is shutting the pool down
                log.warning("closing a provider's HTTP pool failed: %s", type(exc).__name__)
    elif loop is None:
        asyncio.run(pool.http.aclose())
    elif running is None and not loop.is_closed():
        loop.run_until_complete(pool.http.aclose())
