"""Settings of the continuous-batching scheduler (one object per concern)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SchedulerConfig:
    """How one local model's scheduler batches requests.

    * ``max_batch_size``: sequences decoding together at most.
    * ``max_batch_tokens``: the running batch's token budget, counted as the sum over its
      sequences of ``prompt tokens + max_new_tokens``; a single request above it is refused.
    * ``max_wait_ms``: when idle, how long the first request waits for others to arrive so
      they are prefilled together (dynamic batching); 0 disables the wait.
    * ``max_queue``: waiting requests at most; one more is refused with ``QueueFull``.
    * ``max_prefill_tokens``: padded prompt tokens (rows x longest prompt) prefilled in one
      step at most; a burst is admitted over several steps, each followed by a decode step
      of the running rows, so the first arrivals get their first token sooner and running
      rows are not stalled behind one huge prefill. At least one request is always
      admitted when the batch has room.
    """

    max_batch_size: int = 32
    max_batch_tokens: int = 8192
    max_wait_ms: float = 5.0
    max_queue: int = 256
    max_prefill_tokens: int = 512

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.max_batch_tokens < 2:
            raise ValueError(f"max_batch_tokens must be >= 2, got {self.max_batch_tokens}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.max_prefill_tokens < 1:
            raise ValueError(f"max_prefill_tokens must be >= 1, got {self.max_prefill_tokens}")
        if self.max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {self.max_queue}")
