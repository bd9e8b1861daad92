"""A local Hugging Face causal LM, loaded by hub id or path with ``from_pretrained``.

Generation goes through the model's continuous-batching :class:`Scheduler`, which runs
on its own worker thread (never the event loop) and admits new requests into the running
batch between decode steps. Closing the stream (client gone, deadline passed) cancels
the sequence, which leaves the batch at the next step: no work continues for a dead RPC.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import torch

from optiserve.domain.errors import InvalidRequest, Unavailable
from optiserve.domain.types import (
    FinishReason,
    GenerateRequest,
    ModelInfo,
    ModelKind,
    SamplingParams,
)
from optiserve.models.base import BackendDelta, BackendEvent, BackendFinish, BackendStart
from optiserve.models.config import DEMO_SOURCE, ModelConfig
from optiserve.models.demo import demo_model_dir
from optiserve.models.local import scheduler as sched
from optiserve.models.local.batch import eos_token_ids
from optiserve.models.local.config import EngineConfig
from optiserve.models.local.metrics import SchedulerMetrics
from optiserve.models.local.stops import TokenStops

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto`` is cuda when a GPU is present, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class LocalHFBackend:
    """Serves one Hugging Face causal LM on this host with continuous batching."""

    def __init__(
        self,
        config: ModelConfig,
        scheduler_config: EngineConfig,
        metrics: SchedulerMetrics | None = None,
    ) -> None:
        self._config = config
        self._scheduler_config = scheduler_config
        self._metrics = metrics
        self._tokenizer: Any = None
        self._stops: TokenStops | None = None
        self.scheduler: sched.Scheduler | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def source_path(self) -> str:
        """The hub id or directory ``from_pretrained`` loads (``demo``: the package's)."""
        if self._config.source == DEMO_SOURCE:
            return str(demo_model_dir())
        return self._config.source

    def load(self) -> None:
        """Load tokenizer and weights (blocking), then start the scheduler."""
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        cfg = self._config
        source = self.source_path
        started = time.perf_counter()
        self._tokenizer = AutoTokenizer.from_pretrained(
            source, trust_remote_code=cfg.trust_remote_code
        )
        device = resolve_device(cfg.device)
        model: Any = AutoModelForCausalLM.from_pretrained(
            source,
            dtype=getattr(torch, cfg.dtype),  # the Dtype literals are torch dtype names
            trust_remote_code=cfg.trust_remote_code,
        )
        model = model.to(device).eval()
        self._stops = TokenStops(self._tokenizer, eos_token_ids(model, self._tokenizer))
        self.scheduler = sched.Scheduler(
            model,
            self._tokenizer,
            self._scheduler_config,
            self._metrics,
            device=str(device),
            name=cfg.name,
        )
        if cfg.context_length:
            self.scheduler.context_length = cfg.context_length
        self.scheduler.start()
        log.info(
            "model loaded",
            extra={
                "model": cfg.name,
                "source": source,
                "device": str(device),
                "dtype": cfg.dtype,
                "context_length": self.context_length,
                "load_s": round(time.perf_counter() - started, 2),
            },
        )

    def close(self) -> None:
        """Stop the scheduler (waiting and running sequences fail with UNAVAILABLE)."""
        if self.scheduler is not None:
            self.scheduler.stop()

    @property
    def context_length(self) -> int:
        """Prompt plus completion tokens the model takes (0 until loaded)."""
        if self.scheduler is not None and self.scheduler.context_length:
            return self.scheduler.context_length
        return self._config.context_length

    @property
    def info(self) -> ModelInfo:
        """What ListModels shows."""
        cfg = self._config
        return ModelInfo(
            name=cfg.name,
            kind=ModelKind.LOCAL,
            provider="local",
            source=cfg.source,
            context_length=self.context_length,
            demo=cfg.source == DEMO_SOURCE,
            description=cfg.description,
            quantization="none" if cfg.dtype == "float32" else cfg.dtype,
            max_new_tokens_cap=cfg.max_new_tokens_cap,
            default_max_new_tokens=cfg.default_max_new_tokens,
        )

    # -- requests --------------------------------------------------------------------------

    def resolve_sampling(self, params: SamplingParams) -> SamplingParams:
        """Apply the model's defaults (max_new_tokens, min_new_tokens) and check the model's
        cap and min_new_tokens <= max_new_tokens.

        The request's shape (max_new_tokens >= 1, min_new_tokens >= 0) was checked by
        ``validate_request``. An unset min_new_tokens takes the model's default, lowered to
        max_new_tokens when the request asks for fewer tokens than that default.
        """
        cfg = self._config
        max_new = params.max_new_tokens
        if max_new is None:
            max_new = cfg.default_max_new_tokens
        elif max_new > cfg.max_new_tokens_cap:
            raise InvalidRequest(
                f"sampling.max_new_tokens must be in [1, {cfg.max_new_tokens_cap}] for model "
                f"{cfg.name!r}, got {max_new}"
            )
        min_new = params.min_new_tokens
        if min_new is None:
            min_new = min(cfg.default_min_new_tokens, max_new)
        elif min_new > max_new:
            source = "" if params.max_new_tokens is not None else ", the model's default"
            raise InvalidRequest(
                f"sampling.min_new_tokens must be in [0, {max_new}] (at most max_new_tokens, "
                f"{max_new}{source}) for model {cfg.name!r}, got {min_new}; lower "
                "min_new_tokens or raise max_new_tokens"
            )
        return replace(params, max_new_tokens=max_new, min_new_tokens=min_new)

    def check_input(self, request: GenerateRequest) -> None:
        """Cheap size checks before any work (see the Backend protocol)."""

    def encode(self, request: GenerateRequest) -> list[int]:
        """Token ids of the prompt (chat template applied to messages when there is one)."""
        tok = self._tokenizer
        if request.messages:
            messages = [{"role": m.role, "content": m.content} for m in request.messages]
            if getattr(tok, "chat_template", None):
                text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            else:
                text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
            return list(tok(text, add_special_tokens=False)["input_ids"])
        return list(tok(request.prompt)["input_ids"])

    async def stream(self, request: GenerateRequest) -> AsyncIterator[BackendEvent]:
        """Generate: a BackendStart, deltas as tokens are decoded, then one BackendFinish.

        Tokens that arrived while the consumer was busy are coalesced into one delta (one
        message per stream and step at most); the first token is never held back. Stop
        strings that are special tokens, and for chat requests the template's end-of-turn
        tokens, stop at token level (:class:`~optiserve.models.local.stops.TokenStops`).
        """
        if self.scheduler is None or self._stops is None:
            raise Unavailable(f"model {self._config.name!r} is not loaded yet; retry shortly")
        stop_ids = self._stops.for_request(request.sampling.stop, chat=bool(request.messages))
        prompt_ids = self.encode(request)
        handle = self.scheduler.submit(prompt_ids, request.sampling, request.deadline, stop_ids)
        try:
            yield BackendStart(prompt_tokens=len(prompt_ids))
            while events := await handle.next_events():
                event = events[-1]
                end = event if isinstance(event, sched.SequenceEnd) else None
                tokens = [e for e in events if isinstance(e, sched.TokenEvent)]
                text = "".join(e.text for e in tokens)
                # The end-of-sequence token is delivered but is not part of the answer.
                count = len(tokens) - int(end is not None and end.finish_reason is FinishReason.EOS)
                if text or count:
                    yield BackendDelta(text, count)
                if end is not None:
                    yield BackendFinish(
                        finish_reason=end.finish_reason,
                        prompt_tokens=end.prompt_tokens,
                        completion_tokens=end.completion_tokens,
                        queued_ms=end.queued_ms,
                        first_token_at=end.first_token_at,
                        last_token_at=end.last_token_at,
                    )
                    return
        finally:
            handle.cancel()
