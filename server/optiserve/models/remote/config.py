"""Settings of one remote provider (``[[providers]]`` in the configuration file)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from optiserve.domain.settings import above, at_least, check, require

#: The HTTP API a provider speaks.
ProviderKind = Literal["openai", "anthropic", "openai_compatible"]
#: Lifetime of an Anthropic prompt-cache entry written by optiserve's cache_control.
PromptCacheTtl = Literal["5m", "1h"]

#: Where each kind reads its key when ``api_key_env`` is empty.
DEFAULT_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}


@dataclass(frozen=True)
class ProviderConfig:
    """One remote provider: its API, where it is, its key and how hard to try."""

    name: str
    #: "openai", "anthropic" or "openai_compatible" (vLLM, TGI, Ollama, llama.cpp, ...).
    kind: ProviderKind
    #: Base URLs; several = replicas of one OpenAI-compatible server, spread by least
    #: outstanding requests. Empty = the SDK's default (OpenAI's and Anthropic's own API).
    #: OpenAI URLs end in /v1; Anthropic's do not.
    base_urls: tuple[str, ...] = ()
    #: Environment variable holding the key ("" = OPENAI_API_KEY / ANTHROPIC_API_KEY; an
    #: openai_compatible provider without one sends no key).
    api_key_env: str = ""
    #: The key itself (prefer api_key_env: config files get copied around).
    api_key: str = ""
    #: Seconds to connect, and for the whole upstream call (a stream: between events).
    connect_timeout_s: float = 5.0
    timeout_s: float = 60.0
    #: Retries per model of a request on 429, 5xx and connection errors, with exponential
    #: backoff from backoff_s up to backoff_max_s (a Retry-After header wins when longer):
    #: at most 1 + max_retries upstream calls per model.
    max_retries: int = 2
    backoff_s: float = 0.25
    backoff_max_s: float = 8.0
    #: Pooled HTTP connections to this provider.
    max_connections: int = 100
    #: A replica that fails this many times in a row is skipped for cooldown_s seconds.
    failures_to_eject: int = 3
    cooldown_s: float = 30.0
    #: Anthropic: a first user turn of at least this many (estimated) tokens gets
    #: cache_control; the system prompt always does.
    prompt_cache_min_tokens: int = 1024
    #: Anthropic: lifetime of the prompt-cache entries optiserve asks for ("5m" or "1h").
    prompt_cache_ttl: PromptCacheTtl = "5m"

    def __post_init__(self) -> None:
        require(bool(self.name.strip()), "name", "must not be empty")
        require(self.name != "local", "name", "'local' is reserved for local models")
        check(
            self,
            {
                "connect_timeout_s": above(0),
                "timeout_s": above(0),
                "max_retries": at_least(0),
                "backoff_s": at_least(0),
                "backoff_max_s": at_least(0),
                "max_connections": at_least(1),
                "failures_to_eject": at_least(1),
                "cooldown_s": at_least(0),
                "prompt_cache_min_tokens": at_least(0),
            },
        )
        for i, url in enumerate(self.base_urls):
            require(
                url.startswith(("http://", "https://")),
                "base_urls",
                f"[{i}] must start with http:// or https://, got {url!r}",
            )
        require(
            self.kind != "openai_compatible" or bool(self.base_urls),
            "base_urls",
            "an openai_compatible provider needs at least one base URL (ending in /v1)",
        )

    @property
    def key_env(self) -> str:
        """The environment variable the key is read from ("" = none)."""
        return self.api_key_env or DEFAULT_KEY_ENV.get(self.kind, "")
