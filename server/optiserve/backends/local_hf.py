"""A local Hugging Face causal LM, loaded by hub id or path with ``from_pretrained``.

Model work runs on one dedicated worker thread per model, never on the event loop. Text
reaches the caller through an asyncio queue as tokens are produced; closing the stream
(client gone, deadline passed) sets a flag the worker checks before every step, so no work
continues for a dead RPC. Requests beyond the one running wait in a bounded queue.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from optiserve import batching
from optiserve.backends.base import BackendEvent, Completion
from optiserve.config import DEMO_SOURCE, ModelConfig
from optiserve.engine.sampling import make_generator, select_token
from optiserve.engine.text import IncrementalDetokenizer, StopMatcher
from optiserve.engine.types import (
    FinishReason,
    GenerateRequest,
    ModelInfo,
    ModelKind,
    SamplingParams,
)
from optiserve.errors import DeadlineExceeded, InvalidRequest, QueueFull, Unavailable
from optiserve.tinymodels import ensure_demo_model

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: Tokens of prompt context handed to the detokenizer so the first delta is spaced right.
_DETOK_CONTEXT = 4


def resolve_device(name: str) -> torch.device:
    """``auto`` is cuda when a GPU is present, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class _Cancelled(Exception):
    """The consumer went away; the worker stops quietly."""


class LocalHFBackend:
    """Serves one Hugging Face causal LM on this host."""

    def __init__(self, config: ModelConfig, data_dir: Path, max_queue: int) -> None:
        self._config = config
        self._data_dir = data_dir
        self._max_queue = max_queue
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"model-{config.name}")
        self._slot = asyncio.Semaphore(1)
        self._waiting = 0
        self._model: Any = None
        self._tokenizer: Any = None
        self._device = torch.device("cpu")
        self._eos_ids: frozenset[int] = frozenset()
        self._context_length = config.context_length
        #: Generations that stopped early because their consumer went away (for tests/metrics).
        self.cancelled_generations = 0
        self.active_generations = 0

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def source_path(self) -> str:
        """The hub id or directory ``from_pretrained`` loads."""
        if self._config.source == DEMO_SOURCE:
            return str(ensure_demo_model(self._data_dir))
        return self._config.source

    def load(self) -> None:
        """Load tokenizer and weights (blocking)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        cfg = self._config
        source = self.source_path
        started = time.perf_counter()
        self._tokenizer = AutoTokenizer.from_pretrained(
            source, trust_remote_code=cfg.trust_remote_code
        )
        self._device = resolve_device(cfg.device)
        model: Any = AutoModelForCausalLM.from_pretrained(
            source, dtype=_DTYPES[cfg.dtype], trust_remote_code=cfg.trust_remote_code
        )
        self._model = model.to(self._device).eval()
        eos = model.generation_config.eos_token_id
        eos_list = eos if isinstance(eos, list) else [eos]
        if self._tokenizer.eos_token_id is not None:
            eos_list.append(self._tokenizer.eos_token_id)
        self._eos_ids = frozenset(int(e) for e in eos_list if e is not None)
        if not self._context_length:
            mc = model.config
            self._context_length = int(
                getattr(mc, "max_position_embeddings", 0) or getattr(mc, "n_positions", 0) or 2048
            )
        log.info(
            "model loaded",
            extra={
                "model": cfg.name,
                "source": source,
                "device": str(self._device),
                "dtype": cfg.dtype,
                "context_length": self._context_length,
                "load_s": round(time.perf_counter() - started, 2),
            },
        )

    def close(self) -> None:
        """Stop the worker thread."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def info(self) -> ModelInfo:
        """What ListModels shows."""
        cfg = self._config
        return ModelInfo(
            name=cfg.name,
            kind=ModelKind.LOCAL,
            provider="local",
            source=cfg.source,
            context_length=self._context_length,
            demo=cfg.source == DEMO_SOURCE,
            description=cfg.description,
            quantization="none" if cfg.dtype == "float32" else cfg.dtype,
        )

    # -- requests --------------------------------------------------------------------------

    def resolve_sampling(self, params: SamplingParams) -> SamplingParams:
        """Apply the model's default max_new_tokens and check the cap."""
        cfg = self._config
        if params.max_new_tokens is None:
            return _replace_max(params, cfg.default_max_new_tokens)
        if not 1 <= params.max_new_tokens <= cfg.max_new_tokens_cap:
            raise InvalidRequest(
                f"sampling.max_new_tokens must be in [1, {cfg.max_new_tokens_cap}] for model "
                f"{cfg.name!r}, got {params.max_new_tokens}"
            )
        return params

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

    async def stream(
        self, request: GenerateRequest, params: SamplingParams
    ) -> AsyncIterator[BackendEvent]:
        """Generate: text deltas as they are decoded, then one Completion."""
        prompt_ids = self.encode(request)
        max_new = params.max_new_tokens or self._config.default_max_new_tokens
        if len(prompt_ids) + max_new > self._context_length:
            raise InvalidRequest(
                f"prompt is {len(prompt_ids)} tokens and max_new_tokens is {max_new}: together "
                f"{len(prompt_ids) + max_new}, above model {self._config.name!r}'s context length "
                f"of {self._context_length} tokens; shorten the prompt or lower max_new_tokens"
            )
        if self._waiting >= self._max_queue:
            raise QueueFull(
                f"model {self._config.name!r} has {self._waiting} requests waiting (the limit); "
                "retry later",
                retry_after_s=1.0,
            )
        arrived = time.monotonic()
        self._waiting += 1
        try:
            await self._slot.acquire()
        finally:
            self._waiting -= 1
        try:
            queued_ms = (time.monotonic() - arrived) * 1000.0
            async for event in self._run(prompt_ids, params, max_new, request.deadline, queued_ms):
                yield event
        finally:
            self._slot.release()

    async def _run(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        max_new: int,
        deadline: float | None,
        queued_ms: float,
    ) -> AsyncIterator[BackendEvent]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[BackendEvent | BaseException] = asyncio.Queue()
        stop = threading.Event()

        def emit(item: BackendEvent | BaseException) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        future = loop.run_in_executor(
            self._executor,
            self._generate,
            prompt_ids,
            params,
            max_new,
            deadline,
            queued_ms,
            emit,
            stop,
        )
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, Completion):
                    return
        finally:
            stop.set()
            # Wait for the worker to notice, so the slot is free only once it really is.
            await asyncio.shield(future)

    def _generate(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        max_new: int,
        deadline: float | None,
        queued_ms: float,
        emit: Callable[[BackendEvent | BaseException], None],
        stop: threading.Event,
    ) -> None:
        """The worker: prefill, then one decode step per token (runs on the model thread)."""
        self.active_generations += 1
        try:
            emit(self._decode_loop(prompt_ids, params, max_new, deadline, queued_ms, emit, stop))
        except _Cancelled:
            self.cancelled_generations += 1
        except (DeadlineExceeded, InvalidRequest) as exc:
            emit(exc)
        except Exception as exc:
            log.exception("generation failed", extra={"model": self._config.name})
            emit(Unavailable(f"model {self._config.name!r} failed during generation: {exc}"))
        finally:
            self.active_generations -= 1

    def _decode_loop(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        max_new: int,
        deadline: float | None,
        queued_ms: float,
        emit: Callable[[BackendEvent | BaseException], None],
        stop: threading.Event,
    ) -> Completion:
        model, device = self._model, self._device
        pad_id = self._tokenizer.pad_token_id or 0
        ids, mask, positions = batching.collate([prompt_ids], pad_id)
        detok = IncrementalDetokenizer(self._tokenizer, prompt_ids[-_DETOK_CONTEXT:])
        stops = StopMatcher(params.stop)
        generator = make_generator(params)
        first_at: float | None = None
        last_at: float | None = None
        generated = 0
        finish = FinishReason.LENGTH
        with torch.inference_mode():
            out = model(
                input_ids=torch.from_numpy(ids).to(device),
                attention_mask=torch.from_numpy(mask).to(device),
                position_ids=torch.from_numpy(positions).to(device),
                use_cache=True,
            )
            past = out.past_key_values
            next_position = len(prompt_ids)
            while generated < max_new:
                if stop.is_set():
                    raise _Cancelled
                if deadline is not None and time.monotonic() > deadline:
                    raise DeadlineExceeded(
                        f"deadline passed after {generated} of {max_new} tokens; "
                        "raise the deadline or lower max_new_tokens"
                    )
                token = select_token(out.logits[0, -1], params, generator)
                generated += 1
                last_at = time.monotonic()
                if first_at is None:
                    first_at = last_at
                if token in self._eos_ids:
                    finish = FinishReason.EOS
                    generated -= 1
                    break
                text = stops.feed(detok.push(token))
                if text:
                    emit(text)
                if stops.stopped:
                    finish = FinishReason.STOP_SEQUENCE
                    break
                if generated >= max_new:
                    break
                out = model(
                    input_ids=torch.tensor([[token]], device=device),
                    position_ids=torch.tensor([[next_position]], device=device),
                    past_key_values=past,
                    use_cache=True,
                )
                past = out.past_key_values
                next_position += 1
        tail = stops.flush()
        if tail:
            emit(tail)
        return Completion(
            finish_reason=finish,
            prompt_tokens=len(prompt_ids),
            completion_tokens=generated,
            queued_ms=queued_ms,
            first_token_at=first_at,
            last_token_at=last_at,
        )


def _replace_max(params: SamplingParams, value: int) -> SamplingParams:
    from dataclasses import replace

    return replace(params, max_new_tokens=value)
