"""The Backend protocol every model implementation follows."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from optiserve.domain.pricing import TokenCounts
from optiserve.domain.types import FinishReason, GenerateRequest, ModelInfo, SamplingParams


@dataclass(frozen=True)
class BackendStart:
    """The prompt was accepted by the model: its size before any output (measured by a
    local tokenizer; a remote provider reports it only at the end, so a remote backend
    sends :func:`~optiserve.domain.pricing.prompt_token_bound` and ``measured=False``)."""

    prompt_tokens: int
    measured: bool = True


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
    #: Provider prompt-cache tokens, part of ``prompt_tokens`` (see
    #: :class:`~optiserve.domain.pricing.TokenCounts`).
    cache_read_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    #: False when the provider's reply carried no usage: the counts are then bounds and
    #: the request is charged its reserved worst case.
    usage_reported: bool = True

    @property
    def counts(self) -> TokenCounts:
        """The tokens by kind, normalised."""
        cached = self.cache_read_tokens + self.cache_write_5m_tokens + self.cache_write_1h_tokens
        return TokenCounts(
            input_tokens=max(self.prompt_tokens - cached, 0),
            output_tokens=self.completion_tokens,
            cache_read_tokens=self.cache_read_tokens,
            cache_write_5m_tokens=self.cache_write_5m_tokens,
            cache_write_1h_tokens=self.cache_write_1h_tokens,
        )


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
