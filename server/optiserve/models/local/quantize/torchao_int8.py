"""int8_weight_only: torchao's int8 weight-only quantization of the decoder layers' linears.

Each ``nn.Linear`` weight of the decoder layers becomes a torchao ``Int8Tensor`` (int8
values, one fp32 scale per output row, symmetric); activations stay fp32. In eager mode on
the CPU torchao widens the int8 weight to the activation dtype on every call and runs a
plain matmul, then scales the rows: the weights take a quarter of the space, but the work
per token is the same as fp32 plus the widening (the report measures what it costs). The
embedding (and the often tied output head) is stored int8 per row and run in fp32, as in
``int8_dynamic``.

Saving: torchao's tensor subclasses do not ``save_pretrained`` to safetensors on the CPU
(pytorch/ao#3800), and pickling them ties the file to torchao's class layout. The variant
therefore stores plain tensors in one safetensors file (``storage="state_dict"``): for
each quantized layer ``<layer>.weight.qdata`` (int8), ``<layer>.weight.scale`` (fp32) and
``<layer>.weight.zero_point`` (int8, all zero), and every other tensor of the state dict
once (a tied head is rebuilt by tying). :meth:`Int8WeightOnlyMethod.load` builds the fp32
model from the config, loads the plain tensors and puts an ``Int8Tensor`` made from the
stored ones in place of each quantized weight: the same values, so the same logits.

torchao is optional (``pip install 'optiserve[quantize]'``); without it the method says so
in :meth:`Int8WeightOnlyMethod.unavailable` and the RPC answers FAILED_PRECONDITION.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import threading
import types
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from optiserve.domain.errors import FailedPrecondition
from optiserve.models.local.quantize.base import ProgressFn, QuantSpec, VariantRecipe
from optiserve.models.local.quantize.common import (
    CONV1D_MODEL_TYPES,
    EMBEDDING_FILE,
    EMBEDDING_NOTE,
    Steps,
    block_linears,
    check_common,
    copy_side_files,
    decoder_blocks,
    embedding_key,
    load_embedding,
    load_source,
    quiet,
    refuse_sparsity,
    require_linears,
    round_embedding,
    save_embedding,
)

#: The torchao release this method is built and tested against.
TORCHAO_REQUIREMENT = "torchao==0.18.0"
WEIGHTS_FILE = "model.safetensors"
#: Suffixes of the stored tensors of one quantized weight.
_QDATA, _SCALE, _ZERO = ".weight.qdata", ".weight.scale", ".weight.zero_point"
#: Loggers that chatter when torchao is imported (its optional CUDA extensions, pytree).
_NOISY_LOGGERS = ("torchao", "torch.utils._pytree")


@contextmanager
def _quiet_import() -> Iterator[None]:
    """Hide torchao's import chatter ("Failed to load ..._C_cutlass_90a.abi3.so" on a CPU
    build, pytree deprecation warnings)."""
    saved = [(name, logging.getLogger(name).level) for name in _NOISY_LOGGERS]
    for name, _ in saved:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with quiet():
            yield
    finally:
        for name, level in saved:
            logging.getLogger(name).setLevel(level)


@functools.cache
def torchao_problem() -> str | None:
    """Why torchao cannot be used here (not installed, or its import fails), or None."""
    if importlib.util.find_spec("torchao") is None:
        return (
            f"int8_weight_only needs {TORCHAO_REQUIREMENT} "
            "(pip install 'optiserve[quantize]'); torchao is not installed"
        )
    try:
        with _quiet_import():
            from torchao.quantization import Int8Tensor, Int8WeightOnlyConfig, quantize_
    except Exception as exc:  # an import of a compiled package can fail any way
        return (
            f"int8_weight_only needs {TORCHAO_REQUIREMENT}; torchao is installed but its "
            f"import fails: {type(exc).__name__}: {exc}"
        )
    del Int8Tensor, Int8WeightOnlyConfig, quantize_
    return None


def _torchao() -> tuple[Any, Any, Any]:
    """``(quantize_, Int8WeightOnlyConfig, Int8Tensor)``; FailedPrecondition without torchao."""
    problem = torchao_problem()
    if problem is not None:
        raise FailedPrecondition(problem)
    with _quiet_import():
        from torchao.quantization import Int8Tensor, Int8WeightOnlyConfig, quantize_
    return quantize_, Int8WeightOnlyConfig, Int8Tensor


def _torchao_version() -> str:
    try:
        import torchao

        return str(getattr(torchao, "__version__", "?"))
    except Exception:
        return "?"


def _set_int8_weight(linear: torch.nn.Linear, weight: Any) -> None:
    """Put the ``Int8Tensor`` ``weight`` in ``linear`` as torchao's ``quantize_`` does."""
    linear.weight = torch.nn.Parameter(weight, requires_grad=False)
    original = linear.extra_repr

    def extra_repr(self: torch.nn.Module) -> str:
        del self
        return f"{original()}, weight=Int8Tensor(int8 per-row)"

    linear.extra_repr = types.MethodType(extra_repr, linear)  # type: ignore[method-assign]


class Int8WeightOnlyMethod:
    """int8 weights (torchao ``Int8Tensor``, per-row scales), fp32 activations."""

    name = "int8_weight_only"
    bits: tuple[int, ...] = (8,)

    @property
    def kernel(self) -> str:
        """What runs a variant of this method."""
        return (
            f"torchao {_torchao_version()} Int8Tensor weight-only (int8 weights, per-row "
            "fp32 scales; eager CPU path widens the weight to fp32 per call, then matmul; "
            f"{EMBEDDING_NOTE})"
        )

    def unavailable(self) -> str | None:
        """Why torchao cannot run here (None: it can). Cached after the first call."""
        return torchao_problem()

    def check(self, spec: QuantSpec, model_config: dict[str, Any]) -> None:
        """8 bits only; no sparsity; not GPT-2 style Conv1D models."""
        check_common(self.name, self.bits, spec, model_config)
        refuse_sparsity(self.name, spec)
        if model_config.get("model_type") in CONV1D_MODEL_TYPES:
            raise FailedPrecondition(
                f"int8_weight_only quantizes nn.Linear layers and {model_config['model_type']} "
                "uses Conv1D projections; choose fp16 or bf16 for this model"
            )

    def quantize(self, model: torch.nn.Module, steps: Steps) -> list[str]:
        """Quantize ``model``'s decoder-layer linears in place, one layer (block) at a
        time; their qualified names."""
        quantize_, config_cls, _ = _torchao()
        require_linears(model, self.name)
        # set_inductor_config=False: torchao would otherwise change torch._inductor's
        # global settings for the whole server process.
        config = config_cls(set_inductor_config=False)
        names: list[str] = []
        blocks = decoder_blocks(model)
        for i, (prefix, block) in enumerate(blocks):
            steps.report("quantizing", i, len(blocks), prefix)
            linears = block_linears(block)
            with _quiet_import():
                quantize_(block, config, filter_fn=lambda m, _fqn: isinstance(m, torch.nn.Linear))
            names.extend(f"{prefix}.{rel}" for rel, _ in linears)
        steps.report("quantizing", len(blocks), len(blocks))
        return names

    def transform(self, model: Any, spec: QuantSpec, steps: Steps) -> Any:
        """Quantize ``model`` in place as :meth:`apply` does."""
        del spec
        self.quantize(model, steps)
        round_embedding(model)
        return model

    def apply(
        self,
        source: Path,
        out: Path,
        spec: QuantSpec,
        progress: ProgressFn,
        cancel: threading.Event,
    ) -> VariantRecipe:
        """Quantize the source's decoder linears block by block and save plain tensors."""
        steps = Steps(progress, cancel)
        _torchao()
        steps.report("loading", 0, 1)
        model = load_source(source)
        names = self.quantize(model, steps)
        embedding = round_embedding(model)
        steps.report("saving", 0, 1)
        copy_side_files(source, out)
        self.save(model, names, out, stored_apart={embedding.key})
        save_embedding(embedding, out)
        recipe = VariantRecipe(
            method=self.name,
            bits=8,
            source=str(source),
            kernel=self.kernel,
            storage="state_dict",
            params={
                "quantized_layers": len(names),
                "weights_file": WEIGHTS_FILE,
                "granularity": "per_row",
                "torchao": _torchao_version(),
            },
        )
        recipe.write(out)
        return recipe

    @staticmethod
    def save(
        model: torch.nn.Module,
        names: list[str],
        out: Path,
        stored_apart: AbstractSet[str] = frozenset(),
    ) -> None:
        """One safetensors file of plain tensors: each quantized weight's int8 values,
        scales and zero points, then every other tensor of the state dict once, except
        ``stored_apart`` (and what is tied to it)."""
        from safetensors.torch import save_file

        _, _, int8_tensor = _torchao()
        tensors: dict[str, torch.Tensor] = {}
        quantized = {f"{n}.weight" for n in names}
        seen: set[int] = set()
        for key, value in model.state_dict().items():
            if key in quantized:
                if not isinstance(value, int8_tensor) or value.act_quant_kwargs is not None:
                    raise ValueError(
                        f"{key} is {type(value).__name__}, not a weight-only Int8Tensor"
                    )
                if list(value.block_size) != [1, value.qdata.shape[-1]]:
                    raise ValueError(f"{key} is not quantized per row: {value.block_size}")
                layer = key[: -len(".weight")]
                tensors[layer + _QDATA] = value.qdata.contiguous()
                tensors[layer + _SCALE] = value.scale.contiguous()
                if value.zero_point is not None:
                    tensors[layer + _ZERO] = value.zero_point.contiguous()
                continue
            if type(value) is not torch.Tensor:
                raise ValueError(f"{key} is a {type(value).__name__}; expected a plain tensor")
            if key in stored_apart:
                seen.add(value.data_ptr())
                continue
            if value.data_ptr() in seen:  # tied (lm_head = embed_tokens): rebuilt by tying
                continue
            seen.add(value.data_ptr())
            tensors[key] = value.detach().contiguous()
        save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt"})

    def load(self, variant: Path, recipe: VariantRecipe, dtype: Any, device: str) -> Any:
        """Rebuild from the config, load the fp32 tensors, put an ``Int8Tensor`` made from
        the stored int8 values in place of each quantized weight. Runs in fp32 on the CPU
        (``dtype`` is ignored; another device is refused)."""
        from safetensors.torch import load_file
        from transformers import AutoConfig, AutoModelForCausalLM

        del dtype
        if device not in ("cpu", "auto"):
            raise FailedPrecondition(
                f"int8_weight_only variants are built and checked for the CPU only, not {device}"
            )
        _, _, int8_tensor = _torchao()
        weights_file = str(recipe.params.get("weights_file", WEIGHTS_FILE))
        tensors = load_file(str(variant / weights_file))
        with quiet():
            config = AutoConfig.from_pretrained(str(variant))
            model: Any = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        layer_names = [k[: -len(_QDATA)] for k in tensors if k.endswith(_QDATA)]
        layers = {
            name: (
                tensors.pop(name + _QDATA),
                tensors.pop(name + _SCALE),
                tensors.pop(name + _ZERO, None),
            )
            for name in layer_names
        }
        missing, unexpected = model.load_state_dict(tensors, strict=False)
        quantized = {f"{n}.weight" for n in layer_names}
        if (variant / EMBEDDING_FILE).is_file():
            quantized.add(embedding_key(model))
        missing = [k for k in missing if k not in quantized]
        if unexpected or any(not _is_tied(model, k) for k in missing):
            raise ValueError(
                f"{variant} does not match its config: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
        for name, (qdata, scale, zero_point) in layers.items():
            linear = model.get_submodule(name)
            if not isinstance(linear, torch.nn.Linear) or tuple(linear.weight.shape) != tuple(
                qdata.shape
            ):
                raise ValueError(f"{variant}: {name} does not match the config's layer")
            with _quiet_import():
                weight = int8_tensor(
                    qdata,
                    scale,
                    [1, qdata.shape[-1]],
                    torch.float32,
                    zero_point=zero_point,
                )
            _set_int8_weight(linear, weight)
        load_embedding(model, variant)
        model.tie_weights()
        return model.eval()


def _is_tied(model: Any, key: str) -> bool:
    """True when ``key`` is the output head that the config ties to the embedding."""
    head = model.get_output_embeddings()
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    if not tied or head is None:
        return False
    for name, module in model.named_modules():
        if module is head:
            return key.startswith(str(name))
    return False


INT8_WEIGHT_ONLY = Int8WeightOnlyMethod()
