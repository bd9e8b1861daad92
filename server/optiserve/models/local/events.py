"""What a consumer of the scheduler sees: the events of a sequence and its handle.

Events a :class:`SequenceHandle` yields, in order: zero or more :class:`TokenEvent`, then
exactly one :class:`SequenceEnd`; or it raises the domain error that ended the sequence.
The scheduler's worker thread hands a step's events to each consumer's event loop with one
``call_soon_threadsafe(deliver, items)``.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass
from typing import Any

from optiserve.domain.types import FinishReason


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """One generated token and the text it completes (``""`` while text is held back).

    Text is detokenized incrementally and cut before any stop string; the token that ends
    a sequence (EOS included) is delivered too, carrying any text released at the end (an
    end-of-sequence token's own text is never part of the answer).
    """

    token_id: int
    text: str


@dataclass(frozen=True, slots=True)
class SequenceEnd:
    """The last event of a sequence: why it ended, its token counts and timings.

    ``completion_tokens`` counts the generated tokens without a final end-of-sequence
    token (which is still delivered as a :class:`TokenEvent` with its id). ``queued_ms`` is
    submission to admission in milliseconds; ``first_token_at``/``last_token_at`` are
    ``time.monotonic()`` instants.
    """

    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    queued_ms: float
    first_token_at: float
    last_token_at: float


SequenceEvent = TokenEvent | SequenceEnd


class SequenceHandle:
    """The consumer side of one submitted sequence: an async iterator of events.

    ``async for event in handle`` yields :class:`TokenEvent` then one :class:`SequenceEnd`,
    or raises the sequence's domain error. Iterate it on the event loop that submitted it.
    Cancelling the awaiting task cancels the sequence too.
    """

    def __init__(self, seq_id: int, loop: asyncio.AbstractEventLoop) -> None:
        self.seq_id = seq_id
        self._loop = loop
        self._items: collections.deque[SequenceEvent | BaseException] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._finished = False
        #: Read by the worker thread; set once, never cleared.
        self.cancelled = False

    def cancel(self) -> None:
        """Stop generating (idempotent): the sequence leaves the batch at the next step.

        Events not yet consumed are dropped; iteration then ends without a SequenceEnd.
        """
        self.cancelled = True
        self._finished = True
        self._items.clear()
        self._wake()

    def __aiter__(self) -> SequenceHandle:
        return self

    async def __anext__(self) -> SequenceEvent:
        if not await self._wait():
            raise StopAsyncIteration
        return self._pop()

    async def next_events(self) -> list[SequenceEvent]:
        """Wait for at least one event; return it and every event already delivered.

        The events come in order and end at the SequenceEnd (if it is among them). Returns
        ``[]`` once the sequence has ended; raises the sequence's domain error when it is
        the next item (events delivered before an error are returned first). Lets a
        consumer that fell behind send one message for several tokens.
        """
        if not await self._wait():
            return []
        events = [self._pop()]
        items = self._items
        while items and not self._finished and not isinstance(items[0], BaseException):
            events.append(self._pop())
        return events

    async def _wait(self) -> bool:
        """Wait until an item is available (True) or the sequence has ended (False)."""
        while not self._items:
            if self._finished:
                return False
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            except asyncio.CancelledError:
                self.cancel()
                raise
            finally:
                self._waiter = None
        return True

    def _pop(self) -> SequenceEvent:
        item = self._items.popleft()
        if isinstance(item, BaseException):
            self._finished = True
            self._items.clear()
            raise item
        if isinstance(item, SequenceEnd):
            self._finished = True
        return item

    def _push(self, items: list[SequenceEvent | BaseException]) -> None:
        """Called on the handle's event loop with the events of one step."""
        if self.cancelled:
            return
        self._items.extend(items)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


def deliver(items: list[tuple[SequenceHandle, Any]]) -> None:
    """Runs on the consumer's event loop: hand each handle its events, in order."""
    grouped: dict[SequenceHandle, list[Any]] = {}
    for handle, item in items:
        grouped.setdefault(handle, []).append(item)
    for handle, events in grouped.items():
        handle._push(events)


__all__ = ["SequenceEnd", "SequenceEvent", "SequenceHandle", "TokenEvent", "deliver"]
