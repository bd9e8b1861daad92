"""Helpers of the remote-provider tests: configs with short timeouts and backoffs, backends
built on the mock provider (through the real SDKs), and the events they yield."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from optiserve.domain.types import ChatMessage, GenerateRequest, SamplingParams
from optiserve.models.base import BackendDelta, BackendEvent, BackendFinish, BackendStart
from optiserve.models.config import ModelConfig
from optiserve.models.remote.config import ProviderConfig
from optiserve.models.remote.factory import build_remote_backend
from optiserve.models.remote.pools import ProviderPools
from optiserve.models.remote.upstream import RemoteBackend
from providers.mock_provider import MockProvider

#: The key the tests configure; no message or log line may ever contain it.
SECRET = "sk-test-SECRET-0123456789abcdef"
KEY_ENV = "MOCK_PROVIDER_KEY"

#: Short timeouts and backoffs so that faults are quick to provoke.
FAST = {"timeout_s": 2.0, "connect_timeout_s": 1.0, "backoff_s": 0.01, "backoff_max_s": 1.0}


def provider_config(kind: str, urls: tuple[str, ...], **fields: Any) -> ProviderConfig:
    """A provider of ``kind`` at ``urls`` with the test key's variable and FAST settings."""
    return ProviderConfig(
        name=f"mock-{kind}",
        kind=kind,  # type: ignore[arg-type]
        base_urls=urls,
        api_key_env=KEY_ENV,
        **{**FAST, **fields},
    )


def model_config(provider: str, name: str = "m", **fields: Any) -> ModelConfig:
    """A remote model of ``provider``."""
    defaults: dict[str, Any] = {
        "source": "mock-model-1",
        "context_length": 100_000,
        "default_max_new_tokens": 32,
        "max_new_tokens_cap": 4096,
        "input_price_per_mtok": 1.0,
        "output_price_per_mtok": 4.0,
    }
    return ModelConfig(name=name, provider=provider, **{**defaults, **fields})


@dataclass
class Backends:
    """Builds loaded backends over one shared ProviderPools (closed after the test)."""

    mock: MockProvider
    pools: ProviderPools = field(default_factory=ProviderPools)
    env: dict[str, str] = field(default_factory=lambda: {KEY_ENV: SECRET})

    def __call__(
        self,
        kind: str = "openai",
        *,
        urls: tuple[str, ...] | None = None,
        model: dict[str, Any] | None = None,
        **provider_fields: Any,
    ) -> RemoteBackend[Any]:
        if urls is None:
            base = (
                self.mock.anthropic_base_url if kind == "anthropic" else self.mock.openai_base_url
            )
            urls = (base,)
        provider = provider_config(kind, urls, **provider_fields)
        backend = build_remote_backend(
            model_config(provider.name, **(model or {})), provider, env=self.env, pools=self.pools
        )
        assert isinstance(backend, RemoteBackend)
        backend.load()
        return backend


@dataclass
class Outcome:
    """What a backend yielded for one request."""

    events: list[BackendEvent]

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, BackendDelta))

    @property
    def deltas(self) -> list[BackendDelta]:
        return [e for e in self.events if isinstance(e, BackendDelta)]

    @property
    def start(self) -> BackendStart:
        first = self.events[0]
        assert isinstance(first, BackendStart)
        return first

    @property
    def finish(self) -> BackendFinish:
        last = self.events[-1]
        assert isinstance(last, BackendFinish), last
        return last


def request(
    prompt: str = "Say hello.",
    *,
    messages: tuple[tuple[str, str], ...] = (),
    max_new_tokens: int = 32,
    **fields: Any,
) -> GenerateRequest:
    """A request with resolved sampling (as the service hands it to a backend)."""
    return GenerateRequest(
        request_id="r1",
        prompt="" if messages else prompt,
        messages=tuple(ChatMessage(role, content) for role, content in messages),
        sampling=SamplingParams(max_new_tokens=max_new_tokens, min_new_tokens=0),
        **fields,
    )


async def collect(
    backend: RemoteBackend[Any], req: GenerateRequest, into: list[BackendEvent] | None = None
) -> Outcome:
    """Every event of ``backend.stream(req)`` (also into ``into``, kept when it raises)."""
    events = [] if into is None else into
    async for event in backend.stream(req):
        events.append(event)
    return Outcome(events)


async def timed(coro: Any) -> tuple[Any, float]:
    """(result, seconds) of awaiting ``coro``."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await coro
    return result, loop.time() - started
