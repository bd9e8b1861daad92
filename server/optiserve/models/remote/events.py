"""What one streamed provider call yields, provider-neutrally: each backend turns its SDK's
stream into these, and :class:`~optiserve.models.remote.upstream.RemoteBackend` does the
rest (retries, the start, deltas and finish of the Backend protocol)."""

from __future__ import annotations

from dataclasses import dataclass

from optiserve.domain.pricing import TokenCounts
from optiserve.domain.types import FinishReason


@dataclass(frozen=True)
class Accepted:
    """The provider accepted the call (its response headers arrived)."""


@dataclass(frozen=True)
class Text:
    """A piece of the answer (for a structured answer: a piece of its JSON)."""

    text: str


@dataclass(frozen=True)
class Usage:
    """The provider's token counts for the call, normalised."""

    counts: TokenCounts


@dataclass(frozen=True)
class Final:
    """The provider's final event: the call ended, for this reason."""

    reason: FinishReason


UpstreamEvent = Accepted | Text | Usage | Final
