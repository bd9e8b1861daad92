"""Settings of local model execution on this host (section ``[engine]``)."""

from __future__ import annotations

from dataclasses import dataclass

from optiserve.domain.settings import at_least, check


@dataclass(frozen=True)
class EngineConfig:
    """How local models run and how each model's scheduler batches requests.

    * ``torch_threads``: torch intra-op threads, applied once by the app at start. 1 is
      fastest on a small, busy CPU (``benchmarks/batching.py --threads``); raise it on
      machines with idle cores.
    * ``max_batch_size``: sequences decoding together at most, per model.
    * ``max_batch_tokens``: the running batch's token budget, counted as the sum over its
      sequences of ``prompt tokens + max_new_tokens``; a single request above it is refused.
    * ``max_wait_ms``: when idle, how long the first request waits for others to arrive so
      they are prefilled together (dynamic batching); 0 disables the wait.
    * ``max_queue``: waiting requests at most, per model; one more is refused with
      ``QueueFull`` (RESOURCE_EXHAUSTED).
    * ``max_queue_delay_s``: a request that would likely wait longer than this for a slot
      (its place in the queue over the sequences the model completed per second of work
      in the last 10 s, idle time not counted) is refused at once with ``QueueFull``, so
      an overloaded model keeps the latency of the requests it admits bounded; 0 = only
      ``max_queue`` bounds the queue.
    * ``max_prefill_tokens``: padded prompt tokens (rows x longest prompt) prefilled in one
      step at most; a burst is admitted over several steps, each followed by a decode step
      of the running rows, so the first arrivals get their first token sooner and running
      rows are not stalled behind one huge prefill. At least one request is always
      admitted when the batch has room.
    * ``warmup_tokens``: at start, each local model generates this many tokens for a
      short prompt before health reports SERVING (0 = no warm-up).
    """

    torch_threads: int = 1
    max_batch_size: int = 32
    max_batch_tokens: int = 8192
    max_wait_ms: float = 5.0
    max_queue: int = 256
    max_queue_delay_s: float = 30.0
    max_prefill_tokens: int = 512
    warmup_tokens: int = 8

    def __post_init__(self) -> None:
        check(
            self,
            {
                "torch_threads": at_least(1),
                "max_batch_size": at_least(1),
                "max_batch_tokens": at_least(2),
                "max_wait_ms": at_least(0),
                "max_queue": at_least(1),
                "max_queue_delay_s": at_least(0),
                "max_prefill_tokens": at_least(1),
                "warmup_tokens": at_least(0),
            },
        )
