"""The models this server serves, by name, and the default route."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from optiserve.domain.errors import ModelNotFound
from optiserve.domain.types import ModelInfo
from optiserve.models.base import Backend


class ModelCatalogue:
    """Backends by name; resolves the model a request names (or the default)."""

    def __init__(self, backends: Iterable[tuple[str, Backend]], default: str) -> None:
        self._backends = dict(backends)
        if default not in self._backends:
            raise ValueError(f"default model {default!r} is not one of {sorted(self._backends)}")
        self.default = default

    def resolve(self, name: str) -> tuple[str, Backend, str]:
        """``(name, backend, route reason)`` for a requested name ("" = the default)."""
        if not name:
            return self.default, self._backends[self.default], "default route"
        backend = self._backends.get(name)
        if backend is None:
            raise ModelNotFound(
                f"unknown model {name!r}; this server serves: {', '.join(sorted(self._backends))}"
            )
        return name, backend, "requested"

    def models(self) -> list[ModelInfo]:
        """ModelInfo for every model, the default marked."""
        return [replace(b.info, default=n == self.default) for n, b in self._backends.items()]
