"""What one call answered with, noted by the servicer and read by the access log.

The observing interceptor (rpc/observe.py) opens a :class:`CallRecord` for each call and
sets :data:`current_call`; the servicer fills it in (:func:`note_summary`) when it has an
answer. Both run in the call's task, so the record is the same object on both sides.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

from optiserve.domain.types import ResponseSummary


@dataclass
class CallRecord:
    """The answer's model, route and cache outcome ("" until known)."""

    model: str = ""
    provider: str = ""
    route: str = ""
    #: The cache lookups, "layer:outcome" joined by commas (e.g. "exact:miss,semantic:hit").
    cache: str = ""
    finish_reason: str = ""


current_call: contextvars.ContextVar[CallRecord | None] = contextvars.ContextVar(
    "current_call", default=None
)


def note_summary(summary: ResponseSummary) -> None:
    """Note the answer's summary in the call's record (nothing outside a call)."""
    record = current_call.get()
    if record is None:
        return
    record.model = summary.model
    record.provider = summary.provider
    record.route = summary.trace.route.route
    record.cache = ",".join(f"{c.layer.value}:{c.outcome.value}" for c in summary.trace.cache)
    record.finish_reason = summary.finish_reason.value
