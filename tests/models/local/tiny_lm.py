"""A loaded tiny model, the greedy reference loop the engine tests compare against, and a
driver that runs waves of requests through the batch contract."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from prometheus_client import CollectorRegistry

from optiserve.domain.types import SamplingParams
from optiserve.models.local.batch import CausalLMBatch, SequenceRequest
from optiserve.models.local.config import EngineConfig
from optiserve.models.local.metrics import SchedulerMetrics
from optiserve.models.local.scheduler import Scheduler


class TinyLM:
    """A loaded tiny model and its tokenizer."""

    def __init__(self, path: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.path = path
        self.model: Any = AutoModelForCausalLM.from_pretrained(path).eval()
        self.tokenizer: Any = AutoTokenizer.from_pretrained(path)
        self.eos = {int(self.tokenizer.eos_token_id)}

    @torch.inference_mode()
    def reference(
        self,
        prompt: Sequence[int],
        max_new_tokens: int,
        min_new_tokens: int = 0,
        eos: Sequence[int] | None = None,
    ) -> list[int]:
        """Greedy tokens of ``prompt`` generated alone: prefill + KV-cache decode, argmax.

        Below ``min_new_tokens`` the end-of-sequence ids (``eos``, default the model's) are
        masked out before the argmax.
        """
        from transformers import DynamicCache

        ends = set(self.eos if eos is None else eos)
        out = self.model(
            input_ids=torch.tensor([list(prompt)]),
            past_key_values=DynamicCache(config=self.model.config),
            use_cache=True,
        )
        tokens: list[int] = []
        while True:
            logits = out.logits[0, -1].clone()
            if len(tokens) < min_new_tokens:
                logits[sorted(ends)] = float("-inf")
            token = int(logits.argmax())
            tokens.append(token)
            if token in ends or len(tokens) >= max_new_tokens:
                return tokens
            out = self.model(
                input_ids=torch.tensor([[token]]),
                past_key_values=out.past_key_values,
                use_cache=True,
            )


class ForcedToken:
    """Wraps a model so that the ``at``-th generated token of a sequence is ``token``.

    Counts steps from the last prefill (a forward with more than one input column), so it
    serves one sequence at a time with a prompt of at least two tokens. ``token=None``
    forces nothing.
    """

    def __init__(self, model: Any) -> None:
        self._model = model
        self.config = model.config
        self.generation_config = model.generation_config
        self.token: int | None = None
        self.at = 1
        self._step = 0

    def __call__(self, **kwargs: Any) -> Any:
        out = self._model(**kwargs)
        self._step = 1 if kwargs["input_ids"].shape[1] > 1 else self._step + 1
        if self.token is not None and self._step == self.at:
            logits = out.logits[:, -1, :]
            logits[:, self.token] = logits.max() + 100.0
        return out


def random_requests(n: int, seed: int, start_id: int = 0) -> list[SequenceRequest]:
    """``n`` greedy requests with random prompts (1-70 tokens) and limits (1-24 tokens)."""
    rng = random.Random(seed)
    return [
        SequenceRequest(
            start_id + i,
            [rng.randrange(4, 2000) for _ in range(rng.randint(1, 70))],
            SamplingParams(max_new_tokens=rng.randint(1, 24)),
        )
        for i in range(n)
    ]


def run_waves(
    lm: TinyLM, waves: list[list[SequenceRequest]], eos: Sequence[int] | None = None
) -> dict[int, list[int]]:
    """Admit one wave every two decode steps into a running batch; collect tokens.

    Exercises ``from_requests``, ``prefill``, ``concatenate``, ``decode`` and ``filter``;
    ``eos`` overrides the model's end-of-sequence ids.
    """
    eos_ids = sorted(lm.eos) if eos is None else list(eos)
    out: dict[int, list[int]] = {r.seq_id: [] for wave in waves for r in wave}
    waves = list(waves)
    running: CausalLMBatch | None = None
    pad = lm.tokenizer.pad_token_id
    step = 0
    while waves or running is not None:
        if waves and step % 2 == 0:
            new = CausalLMBatch.from_requests(waves.pop(0), pad, eos_ids)
            gens = new.prefill(lm.model)
            for g in gens:
                out[g.seq_id].append(g.token_id)
            kept = new.filter([g.seq_id for g in gens if g.finish is None])
            if kept is not None:
                running = kept if running is None else CausalLMBatch.concatenate([running, kept])
        if running is not None:
            gens = running.decode(lm.model)
            for g in gens:
                out[g.seq_id].append(g.token_id)
            running = running.filter([g.seq_id for g in gens if g.finish is None])
        step += 1
    return out


def twin_workload(lm: TinyLM) -> dict[int, list[int]]:
    """A fixed workload that touches every batching function: collation, waves joining a
    running batch, rows leaving, a token-id stop sequence, an extra end-of-sequence id and
    a min_new_tokens row whose greedy first token is that id.

    Run in two processes (Cython core and pure-Python twin), it must give equal tokens.
    """
    reqs = random_requests(10, seed=21)
    long = SamplingParams(max_new_tokens=20)
    first = lm.reference(reqs[0].prompt_ids, 20)
    reqs[0] = SequenceRequest(0, reqs[0].prompt_ids, long, stop_token_ids=(tuple(first[4:6]),))
    second = lm.reference(reqs[1].prompt_ids, 20)
    reqs[1] = SequenceRequest(1, reqs[1].prompt_ids, long)
    third = lm.reference(reqs[2].prompt_ids, 1)
    held = SamplingParams(max_new_tokens=12, min_new_tokens=5)
    reqs[2] = SequenceRequest(2, reqs[2].prompt_ids, held)
    eos = sorted(lm.eos | {second[7], third[0]})
    return run_waves(lm, [reqs[:3], reqs[3:4], reqs[4:]], eos=eos)


@contextmanager
def running_scheduler(
    lm: TinyLM, model: Any = None, **config: Any
) -> Iterator[tuple[Scheduler, CollectorRegistry]]:
    """A started Scheduler for ``lm`` (or ``model`` in its place) with ``config``, and the
    registry of its metrics; stopped on exit."""
    registry = CollectorRegistry()
    scheduler = Scheduler(
        model if model is not None else lm.model,
        lm.tokenizer,
        EngineConfig(**config),
        SchedulerMetrics(registry),
        name="tiny",
    )
    scheduler.start()
    try:
        yield scheduler, registry
    finally:
        scheduler.stop()
