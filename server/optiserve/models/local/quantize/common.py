"""Helpers every method shares: loading the source, walking its decoder layers, checking
a spec's bits and sparsity, copying the config and tokenizer files, reporting progress."""

from __future__ import annotations

import shutil
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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


#: What kernel descriptions say of the embedding of int8 and GPTQ variants.
EMBEDDING_NOTE = "embedding (and a tied lm_head) stored int8 per row, run in fp32"
#: A quantized variant's input embedding, stored int8 per row (the weights file lacks it).
EMBEDDING_FILE = "embedding_int8.safetensors"
_EMBED_Q = ".int8"
_EMBED_SCALE = ".scale"


@dataclass(frozen=True)
class Int8Embedding:
    """An input embedding as int8 rows and their fp32 scales (``weight ≈ q * scale``)."""

    key: str
    q: torch.Tensor
    scale: torch.Tensor

    def weight(self) -> torch.Tensor:
        """The fp32 weight both the variant in memory and the reloaded one use."""
        return self.q.float() * self.scale[:, None]


def embedding_key(model: Any) -> str:
    """The state-dict key of ``model``'s input embedding weight."""
    embedding = model.get_input_embeddings()
    for name, module in model.named_modules():
        if module is embedding:
            return f"{name}.weight"
    raise ValueError(f"{type(model).__name__} has no input embedding")


def round_embedding(model: Any) -> Int8Embedding:
    """Quantize ``model``'s input embedding to int8 per row (symmetric, absmax scales) and
    put its round trip in place: what a reload computes, so the variant in memory and on
    disk agree exactly. A tied output head follows (it is the same tensor)."""
    weight = model.get_input_embeddings().weight
    with torch.no_grad():
        w = weight.detach().float()
        scale = (w.abs().amax(dim=1) / 127.0).clamp(min=torch.finfo(torch.float32).tiny)
        q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        stored = Int8Embedding(embedding_key(model), q.contiguous(), scale.contiguous())
        weight.copy_(stored.weight().to(weight.dtype))
    return stored


def save_embedding(embedding: Int8Embedding, out: Path) -> None:
    """Write :data:`EMBEDDING_FILE` into the variant directory ``out``."""
    from safetensors.torch import save_file

    tensors = {embedding.key + _EMBED_Q: embedding.q, embedding.key + _EMBED_SCALE: embedding.scale}
    save_file(tensors, str(out / EMBEDDING_FILE), metadata={"format": "pt"})


def drop_tensors(weights_file: Path, keys: set[str]) -> None:
    """Rewrite a safetensors file without ``keys`` (its metadata kept)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(weights_file), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys() if k not in keys}  # noqa: SIM118
    save_file(tensors, str(weights_file), metadata=metadata)


def load_embedding(model: Any, variant: Path) -> bool:
    """Put the stored int8 embedding of ``variant`` into ``model`` (and re-tie its head);
    False when the variant stores none (older variants keep it in the weights file)."""
    from safetensors.torch import load_file

    path = variant / EMBEDDING_FILE
    if not path.is_file():
        return False
    key = embedding_key(model)
    tensors = load_file(str(path))
    stored = Int8Embedding(key, tensors[key + _EMBED_Q], tensors[key + _EMBED_SCALE])
    weight = model.get_input_embeddings().weight
    if tuple(weight.shape) != tuple(stored.q.shape):
        raise ValueError(f"{path}: embedding {tuple(stored.q.shape)} does not match the model")
    with torch.no_grad():
        weight.copy_(stored.weight().to(weight.dtype))
    model.tie_weights()
    return True
