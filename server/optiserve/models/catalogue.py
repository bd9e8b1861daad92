"""The models this server serves, by name."""

from __future__ import annotations

from collections.abc import Iterable

from optiserve.domain.errors import ModelNotFound
from optiserve.domain.types import ModelInfo
from optiserve.models.base import Backend


class ModelCatalogue:
    """Backends by name (routes and the default are the planner's: routing/planner.py)."""

    def __init__(self, backends: Iterable[tuple[str, Backend]]) -> None:
        self._backends = dict(backends)

    def has(self, name: str) -> bool:
        """True when ``name`` is a served model."""
        return name in self._backends

    def backend(self, name: str) -> Backend:
        """The backend serving ``name``; ModelNotFound for a name not served."""
        backend = self._backends.get(name)
        if backend is None:
            raise ModelNotFound(
                f"unknown model {name!r}; this server serves: {', '.join(sorted(self._backends))}"
            )
        return backend

    def add(self, name: str, backend: Backend) -> None:
        """Serve ``backend`` as ``name`` from now on (a loaded, new model: ValueError for a
        name already served)."""
        if name in self._backends:
            raise ValueError(f"model {name!r} is already served")
        self._backends[name] = backend

    def names(self) -> list[str]:
        """Every served model's name."""
        return list(self._backends)

    def models(self) -> list[ModelInfo]:
        """ModelInfo for every model."""
        return [b.info for b in self._backends.values()]
