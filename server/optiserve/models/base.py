"""The Backend protocol every model implementation follows."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from optiserve.domain.types import FinishReason, GenerateRequest, ModelInfo, SamplingParams


@dataclass(frozen=True)
class BackendStart:
    """The prompt was accepted by the model: its measured size, before any output."""

    prompt_tokens: int


@dataclass(frozen=True)
class BackendDelta:
    """Output of one or more tokens: their text (may be ``""`` while text is held back,
    e.g. for a stop string) and how many tokens of the answer it accounts for."""

    text: str
    tokens: int


@dataclass(frozen=True)
class BackendFinish:
    """How a backend's generation ended, with its measured figures."""

    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    queued_ms: float
    #: Seconds (monotonic clock) when the first and the last token were produced.
    first_token_at: float | None
    last_token_at: float | None
    cost_usd: float = 0.0


BackendEvent = BackendStart | BackendDelta | BackendFinish
"""A backend yields one :class:`BackendStart`, then :class:`BackendDelta` events, then
exactly one :class:`BackendFinish` (whose counts are authoritative). A stream cut short
(cancelled, deadline, failure) ends without the finish; the start and the deltas already
yielded are what was spent, and are accounted as such."""


class Backend(Protocol):
    """A servable model."""

    @property
    def info(self) -> ModelInfo:
        """What ListModels shows for this model."""
        ...

    def load(self) -> None:
        """Load weights or open connections (blocking; called off the event loop)."""
        ...

    def close(self) -> None:
        """Release what ``load`` acquired."""
        ...

    def resolve_sampling(self, params: SamplingParams) -> SamplingParams:
        """Fill ``max_new_tokens`` and ``min_new_tokens`` with the model's defaults; check
        ``max_new_tokens`` against the model's cap and ``min_new_tokens`` against it.

        ``params`` passed ``validate_request`` (its shape: max >= 1, min >= 0). Raises
        :class:`~optiserve.domain.errors.InvalidRequest` when a value is out of range.
        """
        ...

    def check_input(self, request: GenerateRequest) -> None:
        """Refuse input that cannot fit, cheaply and before any other work (no tokenizing
        on the event loop): raises :class:`~optiserve.domain.errors.InvalidRequest`."""
        ...

    def stream(self, request: GenerateRequest) -> AsyncIterator[BackendEvent]:
        """Generate for ``request`` (sampling already resolved by :meth:`resolve_sampling`):
        a BackendStart, deltas, then a BackendFinish (see :data:`BackendEvent`).

        Raises domain errors (InvalidRequest for a too-long prompt, QueueFull, ...). Closing
        the iterator early (client gone, deadline) stops the generation.
        """
        ...
