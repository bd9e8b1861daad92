"""Replicas of an OpenAI-compatible provider: least outstanding requests, passive health
(ejection and cooldown), and the pool shared by a provider's models."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from optiserve.models.remote.pools import ProviderPools
from optiserve.models.remote.replicas import Replica, ReplicaSet
from providers.mock_provider import MockProvider, Reply

from .helpers import Backends, collect, provider_config, request


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def replica_set(n: int, clock: Clock, eject: int = 2, cooldown: float = 10.0) -> ReplicaSet[str]:
    replicas = [Replica(f"r{i}", f"client{i}") for i in range(n)]
    return ReplicaSet(replicas, failures_to_eject=eject, cooldown_s=cooldown, clock=clock)


def test_least_outstanding_wins_and_ties_take_turns() -> None:
    rs = replica_set(3, Clock())
    picked = [rs.pick() for _ in range(6)]  # idle: each in turn
    assert [r.url for r in picked] == ["r0", "r1", "r2", "r0", "r1", "r2"]
    busy = rs.replicas[0]
    rs.started(busy)
    rs.started(rs.replicas[1])
    assert rs.pick().url == "r2"
    rs.started(rs.replicas[2])
    rs.started(rs.replicas[2])
    assert rs.pick().url in {"r0", "r1"}
    assert rs.pick(avoid=[rs.replicas[0], rs.replicas[1]]).url == "r2"  # not tried yet


def test_ejection_cooldown_and_return() -> None:
    clock = Clock()
    rs = replica_set(2, clock, eject=2, cooldown=10.0)
    bad = rs.replicas[0]
    for _ in range(2):
        rs.started(bad)
        rs.finished(bad, ok=False)
    assert rs.ejected() == ["r0"]
    assert {rs.pick().url for _ in range(4)} == {"r1"}
    clock.now += 10.0
    assert rs.ejected() == []
    assert "r0" in {rs.pick().url for _ in range(2)}
    rs.started(bad)
    rs.finished(bad, ok=False)  # one more failure after the cooldown ejects it again
    assert rs.ejected() == ["r0"]
    clock.now += 10.0
    rs.started(bad)
    rs.finished(bad, ok=True)  # a success clears the count
    rs.started(bad)
    rs.finished(bad, ok=False)
    assert rs.ejected() == []


def test_a_request_fault_is_no_verdict_on_the_replica() -> None:
    rs = replica_set(1, Clock(), eject=1)
    rs.started(rs.replicas[0])
    rs.finished(rs.replicas[0], ok=None)
    assert rs.ejected() == [] and rs.replicas[0].outstanding == 0


def test_all_cooling_down_uses_the_one_back_first() -> None:
    clock = Clock()
    rs = replica_set(3, clock, eject=1, cooldown=10.0)
    for i in (1, 0, 2):
        rs.started(rs.replicas[i])
        rs.finished(rs.replicas[i], ok=False)
        clock.now += 1.0
    assert rs.pick().url == "r1"


@pytest.fixture
def fleet() -> Iterator[list[MockProvider]]:
    """Three replicas of one OpenAI-compatible server."""
    mocks = [MockProvider().start() for _ in range(3)]
    yield mocks
    for m in mocks:
        m.close()


async def test_concurrent_requests_spread_by_least_outstanding(
    backends: Backends, fleet: list[MockProvider]
) -> None:
    for m in fleet:
        m.default_reply = Reply.ok("slow", delay_s=0.2)
    backend = backends("openai_compatible", urls=tuple(m.openai_base_url for m in fleet))
    await asyncio.gather(*(collect(backend, request()) for _ in range(9)))
    assert [m.calls for m in fleet] == [3, 3, 3]


async def test_a_slow_replica_gets_no_more_calls_while_busy(
    backends: Backends, fleet: list[MockProvider]
) -> None:
    """Three clients in a loop for 0.3 s: the replica holding a 0.4 s call is never picked
    while another has nothing outstanding."""
    fleet[0].default_reply = Reply.ok("slow", delay_s=0.4)
    fleet[1].default_reply = fleet[2].default_reply = Reply.ok("fast", delay_s=0.02)
    backend = backends("openai_compatible", urls=tuple(m.openai_base_url for m in fleet))
    loop = asyncio.get_running_loop()
    until = loop.time() + 0.3

    async def client() -> None:
        while loop.time() < until:
            await collect(backend, request())

    await asyncio.gather(client(), client(), client())
    assert fleet[0].calls == 1
    assert fleet[1].calls >= 4 and fleet[2].calls >= 4


async def test_a_failing_replica_is_ejected_then_retried_after_cooldown(
    backends: Backends, fleet: list[MockProvider]
) -> None:
    bad = fleet[1]
    bad.default_reply = Reply.server_error(502)
    backend = backends(
        "openai_compatible",
        urls=tuple(m.openai_base_url for m in fleet),
        failures_to_eject=2,
        cooldown_s=0.6,
        max_retries=2,
    )
    for _ in range(12):  # every request succeeds: a failed call moves to another replica
        assert (await collect(backend, request())).text
    assert bad.calls == 2  # ejected after 2 failures in a row, skipped since
    await asyncio.sleep(0.6)
    for _ in range(3):
        await collect(backend, request())
    assert bad.calls == 3  # tried again after the cooldown, failed, ejected at once


async def test_a_providers_models_share_one_pool(mock: MockProvider) -> None:
    from optiserve.models.remote.factory import build_remote_backend

    from .helpers import model_config

    pools = ProviderPools()
    provider = provider_config("openai", (mock.openai_base_url,))
    env = {"MOCK_PROVIDER_KEY": "k"}
    a = build_remote_backend(model_config(provider.name, "a"), provider, env=env, pools=pools)
    b = build_remote_backend(model_config(provider.name, "b"), provider, env=env, pools=pools)
    a.load()
    b.load()
    await collect(a, request())  # type: ignore[arg-type]
    await collect(b, request())  # type: ignore[arg-type]
    pool = a._pool  # type: ignore[attr-defined]
    assert pool is b._pool  # type: ignore[attr-defined]
    assert pool.replicas.replicas[0].calls == 2
    a.close()
    assert not pool.http.is_closed  # b still uses it
    b.close()  # the last user closes it, on this loop
    await asyncio.sleep(0.01)
    assert pool.http.is_closed and provider.name not in pools


def test_close_from_another_thread_runs_on_the_pools_loop(mock: MockProvider) -> None:
    """As the app does it: close() on a worker thread while the serving loop runs."""
    from optiserve.models.remote.factory import build_remote_backend

    from .helpers import model_config

    provider = provider_config("anthropic", (mock.anthropic_base_url,))
    backend = build_remote_backend(
        model_config(provider.name), provider, env={"MOCK_PROVIDER_KEY": "k"}
    )
    backend.load()

    async def serve() -> None:
        await collect(backend, request())  # type: ignore[arg-type]
        await asyncio.to_thread(backend.close)

    asyncio.run(serve())
    assert backend._pool is None  # type: ignore[attr-defined]

    never_used = build_remote_backend(
        model_config(provider.name), provider, env={"MOCK_PROVIDER_KEY": "k"}
    )
    never_used.load()
    closer = threading.Thread(target=never_used.close)  # no loop anywhere: closed here
    closer.start()
    closer.join(5)
    assert not closer.is_alive()
