"""Building the backend of a remote model from its configuration."""

from __future__ import annotations

import os
from collections.abc import Mapping

from optiserve.models.base import Backend
from optiserve.models.config import ModelConfig
from optiserve.models.remote.anthropic_backend import AnthropicBackend
from optiserve.models.remote.config import ProviderConfig
from optiserve.models.remote.openai_backend import OpenAIBackend
from optiserve.models.remote.pools import ProviderPools


def resolve_key(provider: ProviderConfig, env: Mapping[str, str]) -> str:
    """The provider's key: ``api_key`` from the config file, else its environment variable
    (``""`` when neither is set)."""
    if provider.api_key:
        return provider.api_key
    return env.get(provider.key_env, "") if provider.key_env else ""


def build_remote_backend(
    model: ModelConfig,
    provider: ProviderConfig,
    *,
    env: Mapping[str, str] | None = None,
    pools: ProviderPools | None = None,
) -> Backend:
    """The backend of ``model``, served by ``provider`` (not loaded yet).

    ``env`` is where keys are read (default: ``os.environ``, read now, not at import).
    ``pools`` is the composition root's :class:`ProviderPools`: pass the same one for every
    remote model so that the models of a provider share its pooled HTTP client, replicas
    and their health; None gives this model a pool of its own. A missing key does not fail
    here: the model is listed and its requests fail FAILED_PRECONDITION naming the variable.
    """
    if model.provider != provider.name:
        raise ValueError(
            f"model {model.name!r} is served by {model.provider!r}, not {provider.name!r}"
        )
    key = resolve_key(provider, os.environ if env is None else env)
    shared = pools if pools is not None else ProviderPools()
    if provider.kind == "anthropic":
        return AnthropicBackend(model, provider, key, shared)
    return OpenAIBackend(model, provider, key, shared)
