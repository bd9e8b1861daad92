"""Helpers every method shares: loading the source, walking its decoder layers, checking
a spec's bits and sparsity, copying the config and tokenizer files, reporting progress."""

from __future__ import annotations

import shutil
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from optiserve.domain.errors import FailedPrecondition, InvalidRequest
from optiserve.models.local.quantize.base import Cancelled, Progress, ProgressFn, QuantSpec

#: Files of a model directory that are not weights: copied beside a variant's weights.
SIDE_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)

#: Model types whose projections are GPT-2 ``Conv1D`` modules, not ``nn.Linear``.
CONV1D_MODEL_TYPES = frozenset({"gpt2"})


@contextmanager
def quiet() -> Iterator[None]:
    """Silence torch.ao's deprecation warnings and transformers' load chatter."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def load_source(source: Path | str, dtype: torch.dtype = torch.float32) -> Any:
    """The source model in ``dtype`` on the CPU, in eval mode."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    with quiet():
        model: Any = AutoModelForCausalLM.from_pretrained(str(source), dtype=dtype)
    return model.eval()


def cpu_or(device: str) -> str:
    """``device``, with "auto" meaning cuda when a GPU is present, else cpu."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def copy_side_files(source: Path, out: Path) -> None:
    """Copy the source's config, generation config and tokenizer files into ``out``."""
    for name in SIDE_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)


def decoder_blocks(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The model's repeated blocks (the longest ``ModuleList``: Llama's ``model.layers``,
    GPT-2's ``transformer.h``), by qualified name."""
    best: tuple[str, torch.nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and (best is None or len(module) > len(best[1])):
            best = (name, module)
    if best is None:
        raise FailedPrecondition(
            f"{type(model).__name__} has no list of decoder layers; this method needs one"
        )
    prefix, blocks = best
    return [(f"{prefix}.{i}", block) for i, block in enumerate(blocks)]


def block_linears(block: torch.nn.Module) -> list[tuple[str, torch.nn.Linear]]:
    """The ``nn.Linear`` layers inside one block, by name relative to it."""
    return [(n, m) for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)]


def require_linears(model: torch.nn.Module, method: str) -> None:
    """FailedPrecondition when the decoder layers hold no ``nn.Linear`` (GPT-2's Conv1D)."""
    if not any(block_linears(b) for _, b in decoder_blocks(model)):
        raise FailedPrecondition(
            f"{method} works on nn.Linear layers and {type(model).__name__}'s decoder layers "
            "have none (GPT-2 style Conv1D projections); choose fp16 or bf16 for this model"
        )


def check_common(
    name: str, allowed_bits: tuple[int, ...], spec: QuantSpec, config: dict[str, Any]
) -> None:
    """Bits must be 0 (the default) or one of ``allowed_bits``."""
    if spec.bits and spec.bits not in allowed_bits:
        allowed = ", ".join(str(b) for b in allowed_bits)
        raise InvalidRequest(
            f"{name} does not support {spec.bits} bits; allowed: {allowed} (or 0 for "
            f"the default, {allowed_bits[0]})"
        )
    del config


def refuse_sparsity(name: str, spec: QuantSpec) -> None:
    """InvalidRequest when a non-pruning method is asked for sparsity."""
    if spec.sparsity:
        raise InvalidRequest(
            f"sparsity applies to the pruning methods only, not {name}; leave it 0"
        )


class Steps:
    """Reports progress of one job and checks its cancel event between steps."""

    def __init__(self, progress: ProgressFn, cancel: threading.Event) -> None:
        self._progress = progress
        self._cancel = cancel
        self._started = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds since the job began."""
        return time.perf_counter() - self._started

    def check(self) -> None:
        """Raise :class:`Cancelled` when the job's cancel event is set."""
        if self._cancel.is_set():
            raise Cancelled("the quantize job was cancelled")

    def report(self, phase: str, step: int, steps: int, message: str = "") -> None:
        """Check for cancellation, then report where the job is."""
        self.check()
        self._progress(Progress(phase, step, steps, self.elapsed(), message))


def weight_bytes(directory: Path) -> int:
    """Bytes of the weight files in ``directory`` (safetensors, bin, pt, gguf)."""
    suffixes = {".safetensors", ".bin", ".pt", ".pth", ".gguf"}
    return sum(
        p.stat().st_size for p in directory.iterdir() if p.is_file() and p.suffix in suffixes
    )
