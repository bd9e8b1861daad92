"""One sequence's side of the scheduler: its state, its per-token work, its failures.

Per-row work (detokenizing, matching stop strings; choosing the token is the batch's, see
:class:`~optiserve.models.local.batch.Generation`) raises :class:`RowFailure` naming the
stage, so the scheduler fails that one sequence and keeps the others going. The errors a
client sees are built here too:

* a failure of one sequence is deterministic for that request: INTERNAL (an
  :class:`~optiserve.domain.errors.Internal`), saying a retry will fail again;
* a failed forward pass of a batch is INTERNAL too (the scheduler first retries or
  isolates it, see :mod:`~optiserve.models.local.scheduler`), except running out of
  memory, which depends on the load and so is UNAVAILABLE with "retry".
"""

from __future__ import annotations

import time

import torch

from optiserve.domain.errors import Internal, OptiserveError, Unavailable
from optiserve.domain.types import FinishReason
from optiserve.models.local.batch import ForwardError, Generation, SequenceRequest
from optiserve.models.local.events import SequenceHandle
from optiserve.models.local.text import IncrementalDetokenizer, StopMatcher


class RowFailure(Exception):
    """Per-row work failed for one sequence (the cause is ``__cause__``)."""

    def __init__(self, stage: str, cause: BaseException) -> None:
        super().__init__(f"{stage}: {type(cause).__name__}: {cause}")
        self.stage = stage
        self.__cause__ = cause


class SequenceState:
    """Worker-side state of one sequence."""

    __slots__ = (
        "admitted",
        "deadline",
        "detok",
        "first_token",
        "handle",
        "last_token",
        "request",
        "stop",
        "submitted",
        "tokens",
    )

    def __init__(
        self,
        request: SequenceRequest,
        handle: SequenceHandle,
        deadline: float | None,
        detok: IncrementalDetokenizer,
    ) -> None:
        self.request = request
        self.handle = handle
        self.deadline = deadline
        self.detok = detok
        self.stop = StopMatcher(request.params.stop)
        self.submitted = time.monotonic()
        self.admitted = 0.0
        self.first_token = 0.0
        self.last_token = 0.0
        self.tokens = 0

    @property
    def reserved(self) -> int:
        return len(self.request.prompt_ids) + self.request.max_new_tokens

    def output(self, gen: Generation) -> tuple[str, FinishReason | None]:
        """The text ``gen`` releases and how the sequence ends (None: it goes on).

        Raises :class:`RowFailure` when this sequence's token could not be chosen or its
        text could not be made.
        """
        if gen.error is not None:
            raise RowFailure("sampling", gen.error)
        # An end-of-sequence token is not part of the answer (nor of completion_tokens),
        # even when it is no special token that detokenization would skip.
        try:
            piece = "" if gen.finish is FinishReason.EOS else self.detok.push(gen.token_id)
        except Exception as exc:
            raise RowFailure("detokenizing", exc) from exc
        try:
            text = self.stop.feed(piece)
            finish = FinishReason.STOP_SEQUENCE if self.stop.stopped else gen.finish
            if finish is not None:  # text held back for a stop string that never came
                text += self.stop.flush()
        except Exception as exc:
            raise RowFailure("matching stop strings", exc) from exc
        return text, finish


def _describe(exc: BaseException) -> str:
    cause = exc.__cause__ if isinstance(exc, ForwardError | RowFailure) else None
    error = cause if cause is not None else exc
    return f"{type(error).__name__}: {error}"


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) is the device or host running out of memory."""
    error = exc.__cause__ if isinstance(exc, ForwardError) and exc.__cause__ else exc
    return isinstance(error, torch.cuda.OutOfMemoryError | MemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower()
    )


def row_error(model: str, failure: RowFailure) -> OptiserveError:
    """What the client of a sequence that failed alone sees: INTERNAL, no retry."""
    return Internal(
        f"internal error in model {model!r} while {failure.stage}: {_describe(failure)}; "
        "this request will fail again if retried"
    )


def step_error(model: str, step: str, exc: BaseException, detail: str = "") -> OptiserveError:
    """What the sequences of a failed step see.

    Out of memory depends on the load: UNAVAILABLE, retry. Anything else is an internal
    error (INTERNAL) that a retry is not known to fix; ``detail`` says what was tried.
    """
    what = _describe(exc)
    if is_out_of_memory(exc):
        return Unavailable(
            f"model {model!r} ran out of memory during {step} ({what}); retry the request, "
            "or send a shorter prompt or fewer max_new_tokens"
        )
    return Internal(
        f"internal error in model {model!r} during {step}: {what}"
        f"{'; ' + detail if detail else ''}; see the server log"
    )


__all__ = [
    "RowFailure",
    "SequenceState",
    "is_out_of_memory",
    "row_error",
    "step_error",
]
