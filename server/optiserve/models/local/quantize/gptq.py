"""gptq: GPTQ 4-bit (and 8/3/2-bit) quantization through transformers' ``GPTQConfig``.

The source is loaded with ``AutoModelForCausalLM.from_pretrained(source,
quantization_config=GPTQConfig(bits, group_size, dataset=[calibration texts],
tokenizer))``: transformers hands the model to optimum's GPTQ quantizer, which calibrates
each decoder layer on the texts and packs the weights into gptqmodel's linear layers.
(Calling optimum's ``GPTQQuantizer`` directly gave ~30x worse KL on this project's models,
so this is the one route.) The variant is saved with ``save_pretrained`` (safetensors,
``storage="safetensors"``) and loaded with ``from_pretrained``.

What runs it on the CPU (gptqmodel 7.6.0 picks the kernel):

* 4 bits: ``TorchAtenLinear``, torch's ``aten._weight_int4pack_mm_for_cpu``. It casts
  activations to bf16 and needs every quantized layer's input size to be a multiple of
  the group size (:meth:`GptqMethod.check` refuses other shapes up front; the kernel
  itself would fail at the first forward, after the variant was saved).
* 8, 3 and 2 bits: ``TorchLinear``, which dequantizes the weights and runs an fp32 matmul.

The packages are optional (``pip install 'optiserve[quantize]'``: gptqmodel, optimum);
without them :meth:`GptqMethod.unavailable` says so and the RPC answers
FAILED_PRECONDITION. gptqmodel's import has side effects this module contains: it sets
``HF_HOME`` and other cache variables when unset (restored after the import), reads
``GPTQMODEL_CPU_WORKERS`` (set here to the cores this process may use, at most 12, when
unset), and its own quantization loop writes ``logs/`` into the working directory
(redirected to a temporary directory; the ``GPTQConfig`` route does not write it).
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import logging
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from optiserve.domain.errors import FailedPrecondition, InvalidRequest
from optiserve.models.local.quantize.base import ProgressFn, QuantSpec, VariantRecipe
from optiserve.models.local.quantize.common import (
    EMBEDDING_NOTE,
    Int8Embedding,
    Steps,
    check_common,
    copy_side_files,
    drop_tensors,
    load_embedding,
    quiet,
    refuse_sparsity,
    round_embedding,
    save_embedding,
)

#: The releases this method is built and tested against (the ``quantize`` extra).
REQUIREMENTS = ("gptqmodel==7.6.0", "optimum==2.3.0")
DEFAULT_BITS = 4
DEFAULT_GROUP_SIZE = 128
#: Group sizes the 4-bit CPU kernel (TorchAtenLinear) accepts.
INT4_GROUP_SIZES = (16, 32, 64, 128)
#: Group sizes the dequantizing kernel (TorchLinear) accepts for 8, 3 and 2 bits.
OTHER_GROUP_SIZES = (16, 32, 64, 128, 256, 512, 1024)

#: Calibration text when a request brings none: short, varied English sentences (not the
#: built-in evaluation text, so fidelity is not measured on the calibration data).
CALIBRATION_TEXTS: tuple[str, ...] = (
    "The train left the station a few minutes late, but it made up the time before noon.",
    "She opened the window to let in the cool morning air and the sound of the birds.",
    "A good recipe lists every ingredient and explains each step in the order it is done.",
    "The committee met on Tuesday to discuss the budget for the next three years.",
    "Water boils at a lower temperature on a mountain because the air pressure is lower.",
    "He wrote a short letter to his grandmother and posted it on the way to work.",
    "The library will be closed on Monday for repairs to the heating system.",
    "Most programs read their settings from a file when they start and keep them in memory.",
    "The children built a small boat out of wood and sailed it across the pond.",
    "If the battery is low, the device warns the user and then turns off the screen.",
    "Farmers in the valley grow wheat, barley and potatoes, and keep a few cows.",
    "The museum has a large collection of paintings from the last four hundred years.",
    "To find the area of a rectangle, multiply its length by its width.",
    "After the storm, the river rose so high that the old bridge had to be closed.",
    "The new teacher asked each student to say their name and one thing they enjoy.",
    "A database stores records in tables, and an index makes finding them much faster.",
    "The market opens early on Saturdays, and the best bread is gone by nine o'clock.",
    "Light from the sun takes about eight minutes to reach the surface of the earth.",
    "The doctor told him to rest for a week and to drink plenty of water.",
    "When two people disagree, it often helps to listen first and to speak second.",
    "The company moved its office to a larger building near the centre of the city.",
    "Each chapter of the book ends with a few questions for the reader to think about.",
    "The cat slept in the sun on the kitchen floor for most of the afternoon.",
    "Engineers tested the bridge with heavy trucks before it was opened to the public.",
)

#: Environment variables gptqmodel's import may set; restored after it when unset before.
_IMPORT_ENV = (
    "HF_HOME",
    "HF_HUB_CACHE",
    "TRANSFORMERS_CACHE",
    "HF_MODULES_CACHE",
    "PYTORCH_ALLOC_CONF",
    "PYTORCH_CUDA_ALLOC_CONF",
    "CUDA_DEVICE_ORDER",
)
_QUANTIZER_LOGGER = "optimum.gptq.quantizer"
_BLOCK = re.compile(r"(?:Start quantizing block \S+|Quantizing (\S+) in block) (\d+)/(\d+)")
#: What each of gptqmodel's CPU kernels is, by class name.
_KERNELS = {
    "TorchAtenLinear": "aten._weight_int4pack_mm_for_cpu (activations cast to bf16)",
    "TorchLinear": "dequantize to the activation dtype, then matmul",
    "TorchFusedLinear": "fused int4 CPU/XPU kernel",
    "TorchInt8Linear": "int8 CPU kernel",
}


def _cpu_workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(12, cores))


@contextmanager
def _contained_env() -> Iterator[None]:
    """Undo the cache and allocator variables an import sets when they were unset."""
    before = {name: os.environ.get(name) for name in _IMPORT_ENV}
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@functools.cache
def gptq_problem() -> str | None:
    """Why GPTQ cannot run here (a package missing, or its import failing), or None.
    The first call imports gptqmodel (a few seconds); the answer is cached."""
    install = f"{' and '.join(REQUIREMENTS)} (pip install 'optiserve[quantize]')"
    for package in ("gptqmodel", "optimum"):
        if importlib.util.find_spec(package) is None:
            return f"gptq needs {install}; {package} is not installed"
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(_cpu_workers()))
    try:
        with _contained_env(), quiet():
            import gptqmodel
            from optimum.gptq import GPTQQuantizer
            from transformers import GPTQConfig
    except Exception as exc:  # a compiled package's import can fail any way
        return f"gptq needs {install}; importing it fails: {type(exc).__name__}: {exc}"
    del GPTQQuantizer, GPTQConfig
    del gptqmodel
    _redirect_gptqmodel_logs()
    return None


def _redirect_gptqmodel_logs() -> None:
    """Point gptqmodel's ``logs/`` (its own quantization loop's per-layer logs, written
    relative to the working directory) at a temporary directory instead."""
    try:
        from gptqmodel.looper import loop_processor
    except Exception:
        return
    if hasattr(loop_processor, "_PROJECT_LOG_DIR"):
        loop_processor._PROJECT_LOG_DIR = Path(tempfile.gettempdir()) / "optiserve-gptqmodel-logs"


def _require() -> None:
    problem = gptq_problem()
    if problem is not None:
        raise FailedPrecondition(problem)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _input_sizes(config: dict[str, Any]) -> dict[str, int]:
    """The input size of each kind of linear in a decoder layer, from ``config.json``."""
    hidden = config.get("hidden_size", config.get("n_embd"))
    if not isinstance(hidden, int):
        return {}
    sizes = {"q/k/v_proj, gate/up_proj (hidden_size)": hidden}
    inner = config.get("intermediate_size", config.get("n_inner"))
    if inner is None and config.get("model_type") == "gpt2":
        inner = 4 * hidden
    if isinstance(inner, int):
        sizes["down_proj (intermediate_size)"] = inner
    heads, head_dim = config.get("num_attention_heads"), config.get("head_dim")
    if isinstance(heads, int) and isinstance(head_dim, int) and heads * head_dim != hidden:
        sizes["o_proj (num_attention_heads * head_dim)"] = heads * head_dim
    return sizes


class _LayerProgress(logging.Handler):
    """Turns optimum's "Quantizing q_proj in block 3/8" log lines into progress (and
    stops the job there when it is cancelled: the raise unwinds the quantizer)."""

    def __init__(self, steps: Steps) -> None:
        super().__init__(logging.INFO)
        self._steps = steps
        self._thread = threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if threading.get_ident() != self._thread:
            return
        message = record.getMessage()
        match = _BLOCK.search(message)
        if match:
            layer, block, blocks = match.group(1), int(match.group(2)), int(match.group(3))
            detail = f"{layer} in block {block}/{blocks}" if layer else f"block {block}/{blocks}"
            self._steps.report("quantizing", block - 1, blocks, detail)
        elif message.startswith("Packing model"):
            self._steps.report("packing", 0, 1)
        elif message.startswith("Model packed"):
            self._steps.report("packing", 1, 1)


@contextmanager
def _layer_progress(steps: Steps) -> Iterator[None]:
    logger = logging.getLogger(_QUANTIZER_LOGGER)
    handler = _LayerProgress(steps)
    level, propagate = logger.level, logger.propagate
    logger.setLevel(logging.INFO)
    logger.propagate = False  # its INFO lines would otherwise reach the server's log
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def kernel_of(model: Any) -> str:
    """What runs the quantized layers of ``model`` (gptqmodel's class, what it does)."""
    names = sorted(
        {
            type(m).__name__
            for m in model.modules()
            if type(m).__module__.startswith("gptqmodel.nn_modules.qlinear")
        }
    )
    if not names:
        return "no gptqmodel layers found"
    parts = [f"{n}: {_KERNELS[n]}" if n in _KERNELS else n for n in names]
    return f"gptqmodel {_version('gptqmodel')} {'; '.join(parts)} ({EMBEDDING_NOTE})"


class GptqMethod:
    """GPTQ through transformers' ``GPTQConfig`` (optimum + gptqmodel)."""

    name = "gptq"
    #: 4 is the default. 3 and 2 run too (gptqmodel's dequantizing CPU kernel).
    bits: tuple[int, ...] = (4, 8, 3, 2)

    def unavailable(self) -> str | None:
        """Why gptqmodel/optimum cannot run here (None: they can). Cached; the first call
        imports gptqmodel (a few seconds)."""
        return gptq_problem()

    def check(self, spec: QuantSpec, model_config: dict[str, Any]) -> None:
        """Bits 4, 8, 3 or 2; a group size the CPU kernel takes; no sparsity; every
        quantized layer's input size a multiple of the group size."""
        check_common(self.name, self.bits, spec, model_config)
        refuse_sparsity(self.name, spec)
        bits = spec.bits or DEFAULT_BITS
        group = spec.group_size or DEFAULT_GROUP_SIZE
        allowed = INT4_GROUP_SIZES if bits == 4 else OTHER_GROUP_SIZES
        if group not in allowed:
            raise InvalidRequest(
                f"gptq {bits}-bit on the CPU takes group_size "
                f"{', '.join(str(g) for g in allowed)} (0 = {DEFAULT_GROUP_SIZE}), not {group}"
            )
        kernel = (
            "the CPU int4 kernel (aten._weight_int4pack_mm_for_cpu) needs"
            if bits == 4
            else "GPTQ's groups need"
        )
        for layer, size in _input_sizes(model_config).items():
            if size % group:
                raise FailedPrecondition(
                    f"gptq {bits}-bit with group_size {group}: {kernel} every quantized "
                    f"layer's input size to be a multiple of {group}, and {layer} is {size}; "
                    "choose a group_size that divides it, or another method"
                )

    def quantize(
        self, source: Path, spec: QuantSpec, steps: Steps
    ) -> tuple[Any, Any, Int8Embedding]:
        """``(model, tokenizer, embedding)``: the source quantized in memory, in eval mode,
        and its int8 embedding (already in place, see :func:`round_embedding`)."""
        _require()
        from transformers import AutoModelForCausalLM, AutoTokenizer, GPTQConfig
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        steps.report("loading", 0, 1)
        texts = list(spec.calibration_texts) or list(CALIBRATION_TEXTS)
        with quiet():
            tokenizer = AutoTokenizer.from_pretrained(str(source))
        config = GPTQConfig(
            bits=spec.bits or DEFAULT_BITS,
            group_size=spec.group_size or DEFAULT_GROUP_SIZE,
            dataset=texts,
            tokenizer=tokenizer,
        )
        steps.report("quantizing", 0, 1, f"calibrating on {len(texts)} texts")
        with _layer_progress(steps), _contained_env(), quiet():
            model: Any = AutoModelForCausalLM.from_pretrained(
                str(source), quantization_config=config, dtype=torch.float32
            )
        steps.check()
        embedding = round_embedding(model)
        return model.eval(), tokenizer, embedding

    def apply(
        self,
        source: Path,
        out: Path,
        spec: QuantSpec,
        progress: ProgressFn,
        cancel: threading.Event,
    ) -> VariantRecipe:
        """Calibrate and quantize layer by layer, then ``save_pretrained`` (safetensors)."""
        steps = Steps(progress, cancel)
        model, _, embedding = self.quantize(source, spec, steps)
        steps.report("saving", 0, 1)
        copy_side_files(source, out)  # first: save_pretrained's config.json wins
        with quiet():
            model.save_pretrained(str(out), safe_serialization=True)
        # The embedding (and a head tied to it) lives in EMBEDDING_FILE, int8.
        for weights in out.glob("*.safetensors"):
            drop_tensors(
                weights, {embedding.key, "lm_head.weight"} if _tied(model) else {embedding.key}
            )
        save_embedding(embedding, out)
        recipe = VariantRecipe(
            method=self.name,
            bits=spec.bits or DEFAULT_BITS,
            source=str(source),
            kernel=kernel_of(model),
            storage="safetensors",
            params={
                "group_size": spec.group_size or DEFAULT_GROUP_SIZE,
                "calibration_texts": len(spec.calibration_texts or CALIBRATION_TEXTS),
                "gptqmodel": _version("gptqmodel"),
                "optimum": _version("optimum"),
            },
        )
        recipe.write(out)
        steps.report("saving", 1, 1)
        return recipe

    def load(self, variant: Path, recipe: VariantRecipe, dtype: Any, device: str) -> Any:
        """``from_pretrained`` of the variant (its config carries the GPTQ settings).
        Runs on the CPU in fp32 (``dtype`` is ignored; another device is refused)."""
        del dtype, recipe
        if device not in ("cpu", "auto"):
            raise FailedPrecondition(
                f"gptq variants are built and checked for the CPU kernels only, not {device}"
            )
        _require()
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        with _contained_env(), quiet():
            model: Any = AutoModelForCausalLM.from_pretrained(str(variant), dtype=torch.float32)
        load_embedding(model, variant)
        return model.eval()


def _name_of(model: Any, module: Any) -> str:
    return str(next(name for name, m in model.named_modules() if m is module))


def _tied(model: Any) -> bool:
    """True when the output head is the input embedding's tensor."""
    head = model.get_output_embeddings()
    return head is not None and head.weight is model.get_input_embeddings().weight


GPTQ = GptqMethod()
