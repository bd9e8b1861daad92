"""A local Hugging Face causal LM, loaded by hub id or path with ``from_pretrained``.

Generation goes through the model's continuous-batching :class:`Scheduler`, which runs
on its own worker thread (never the event loop) and admits new requests into the running
batch between decode steps. Closing the stream (client gone, deadline passed) cancels
the sequence, which leaves the batch at the next step: no work continues for a dead RPC.

Input that cannot fit is refused by :meth:`LocalHFBackend.check_input` from its length in
characters (:mod:`~optiserve.models.local.input_bound`), before any tokenizing; what is
left is tokenized off the event loop (short prompts, where a thread hop costs more than
the tokenizing, inline).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
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
from optiserve.models.local.input_bound import CharBound, char_bound
from optiserve.models.local.metrics import SchedulerMetrics
from optiserve.models.local.quantize.base import VariantRecipe
from optiserve.models.local.quantize.common import weight_bytes
from optiserve.models.local.quantize.variant_io import is_variant, load_variant
from optiserve.models.local.stops import TokenStops

log = logging.getLogger(__name__)

#: Input of at most this many characters is tokenized on the event loop: it takes well
#: under a millisecond, less than handing it to a thread and back.
INLINE_TOKENIZE_CHARS = 2000


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
        #: Characters one token covers at most (None: no sound bound for this tokenizer).
        self._bound: CharBound | None = None
        self._tokenize_pool: ThreadPoolExecutor | None = None
        self.scheduler: sched.Scheduler | None = None
        #: The recipe and weight bytes of a Quantize variant (None for other models).
        self._variant: VariantRecipe | None = None
        self._variant_bytes = 0

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
        model: Any
        if is_variant(source):  # a Quantize variant: its recipe says how to rebuild it
            self._variant = VariantRecipe.read(Path(source))
            self._variant_bytes = weight_bytes(Path(source))
            # float32 (the default) means the variant's own dtype; others are asked for.
            dtype = None if cfg.dtype == "float32" else getattr(torch, cfg.dtype)
            model = load_variant(source, dtype=dtype, device=str(device))
        else:
            model = AutoModelForCausalLM.from_pretrained(
                source,
                dtype=getattr(torch, cfg.dtype),  # the Dtype literals are torch dtype names
                trust_remote_code=cfg.trust_remote_code,
            )
        model = model.to(device).eval()
        self._stops = TokenStops(self._tokenizer, eos_token_ids(model, self._tokenizer))
        self._bound = char_bound(self._tokenizer)
        self._tokenize_pool = ThreadPoolExecutor(
            max_workers=min(4, os.cpu_count() or 1), thread_name_prefix=f"tokenize-{cfg.name}"
        )
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
                "chars_per_token": self._bound.chars_per_token if self._bound else None,
                "load_s": round(time.perf_counter() - started, 2),
            },
        )

    def close(self) -> None:
        """Stop the scheduler (waiting and running sequences fail with UNAVAILABLE)."""
        if self.scheduler is not None:
            self.scheduler.stop()
        pool, self._tokenize_pool = self._tokenize_pool, None
        if pool is not None:  # later requests tokenize inline, then meet the stopped scheduler
            pool.shutdown(wait=False, cancel_futures=True)

    def set_max_batch_size(self, size: int) -> int:
        """The scheduler's max_batch_size from now on; return the previous one."""
        if self.scheduler is None:
            raise Unavailable(f"model {self._config.name!r} is not loaded yet; retry shortly")
        return self.scheduler.set_max_batch_size(size)

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
        variant = self._variant
        quantization = "none" if cfg.dtype == "float32" else cfg.dtype
        return ModelInfo(
            name=cfg.name,
            kind=ModelKind.LOCAL,
            provider="local",
            source=cfg.source,
            context_length=self.context_length,
            demo=cfg.source == DEMO_SOURCE,
            description=cfg.description,
            quantization=variant.method if variant else quantization,
            quant_bits=variant.bits if variant else 0,
            size_bytes=self._variant_bytes,
            variant_of=variant.source if variant else "",
            prices=cfg.prices,
            tier=cfg.tier_value,
            quality=cfg.quality,
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
        """Refuse input longer in characters than the prompt tokens the model takes times
        the characters one token covers at most (see the Backend protocol).

        Costs ``len()`` of the prompt or message contents (plus a whitespace count for
        tokenizers that can swallow whitespace, only when over the bound). The chat
        template only adds text, so the contents alone are a lower bound. No bound is
        known before load or for tokenizers without a sound one: then the token count
        decides, after tokenizing off the event loop.
        """
        bound = self._bound
        if bound is None:
            return
        max_new = request.sampling.max_new_tokens or 0
        context = self.context_length
        cap = self._scheduler_config.max_batch_tokens
        if context and context <= cap:
            total, limit_name = context, f"the context length ({context})"
        else:
            total, limit_name = cap, f"max_batch_tokens ({cap})"
        limit = total - max_new
        if limit < 1:  # max_new_tokens alone fills it: the scheduler says so
            return
        texts = [request.prompt] if not request.messages else [m.content for m in request.messages]
        most = bound.chars_per_token * limit
        if sum(len(t) for t in texts) <= most:
            return
        chars = bound.count(texts)
        if chars <= most:
            return
        tokens = -(-chars // bound.chars_per_token)  # at least this many: ceil
        what = "prompt" if not request.messages else "messages"
        counted = " besides whitespace" if bound.skips_whitespace else ""
        raise InvalidRequest(
            f"{what} ({chars} characters{counted}, so at least {tokens} tokens) + "
            f"max_new_tokens ({max_new}) exceeds {limit_name} of model "
            f"{self._config.name!r}: one of its tokens covers at most "
            f"{bound.chars_per_token} characters, so at most {most} characters ({limit} "
            "tokens) can fit; shorten the prompt or lower max_new_tokens"
        )

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

    async def warm_up(self, tokens: int) -> float:
        """Generate ``tokens`` tokens for a short prompt through the scheduler, as a request
        would (tokenizer, prefill, decode steps, detokenizer), so the first real request
        does not pay the first calls' costs; return the seconds it took. Nothing is
        recorded: no account, no ledger row."""
        started = time.perf_counter()
        request = GenerateRequest(
            request_id="warm-up",
            prompt="Hello, who are you?",
            sampling=SamplingParams(max_new_tokens=tokens, min_new_tokens=tokens),
        )
        async for _ in self.stream(request):
            pass
        return time.perf_counter() - started

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
        chars = len(request.prompt) + sum(len(m.content) for m in request.messages)
        if chars <= INLINE_TOKENIZE_CHARS or self._tokenize_pool is None:
            prompt_ids = self.encode(request)
        else:
            loop = asyncio.get_running_loop()
            prompt_ids = await loop.run_in_executor(self._tokenize_pool, self.encode, request)
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
