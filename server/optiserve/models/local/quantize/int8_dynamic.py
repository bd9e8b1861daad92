"""int8_dynamic: torch's dynamic int8 quantization of the decoder layers' ``nn.Linear``.

Weights are int8 with one scale per output channel; activations are quantized on the fly
per batch; the x86 (fbgemm) engine runs the matmuls. torch quantizes activations to 7 bits
(safe on every x86 CPU); on a CPU with VNNI this method uses all 8 (on the demo model: KL
0.051 -> 0.015), and the recipe and the kernel string say which. The embedding (and the
often tied output head) is stored int8 per row and run in fp32 (:func:`round_embedding`).
Quantized modules cannot ``save_pretrained``, so the
variant stores the int8 weights, their scales and zero points, and every remaining fp32
tensor in one safetensors file (``storage="state_dict"``); :meth:`Int8DynamicMethod.load`
builds the fp32 model from the config, swaps in quantized layers made from the stored
tensors (the same packed weights, so the same logits) and loads the rest.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Set as AbstractSet
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

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
#: Suffixes of the stored tensors of one quantized layer.
_QWEIGHT, _SCALES, _ZEROS, _BIAS = ".qweight", ".qscales", ".qzeros", ".qbias"


@functools.cache
def _dynamic_linear() -> type[Any]:
    """torch's dynamic int8 linear, with a choice of 7-bit activations (torch's default,
    safe on every x86 CPU) or full 8-bit ones (``full_range``: exact with VNNI)."""
    with quiet():
        from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    class Int8Linear(DynamicLinear):
        full_range = False

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not self.full_range:
                return super().forward(x)  # type: ignore[no-any-return]
            packed = self._packed_params._packed_params
            y = torch.ops.quantized.linear_dynamic(x, packed, reduce_range=False)
            return y.to(x.dtype)  # type: ignore[no-any-return]

        def _get_name(self) -> str:
            return "Int8Linear" + ("(8-bit activations)" if self.full_range else "")

    return Int8Linear


def full_range_activations() -> bool:
    """True when this CPU has VNNI (``vpdpbusd`` multiplies u8 by s8 into int32 with no
    int16 saturation), so activations can use all 8 bits instead of torch's 7."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_vnni" in flags or " avx_vnni" in flags


def _engine() -> str:
    return str(torch.backends.quantized.engine)


def _set_submodule(root: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def _quantize_linear(linear: torch.nn.Linear, *, full_range: bool) -> Any:
    """A dynamic int8 layer with per-output-channel symmetric weights of ``linear``."""
    from torch.ao.quantization import per_channel_dynamic_qconfig

    with quiet():
        observer = per_channel_dynamic_qconfig.weight()
        weight = linear.weight.detach().float()
        observer(weight)
        scales, zeros = observer.calculate_qparams()
        qweight = torch.quantize_per_channel(
            weight, scales.double(), zeros.long(), int(observer.ch_axis), torch.qint8
        )
        return _from_qweight(linear, qweight, full_range=full_range)


def _from_qweight(
    linear: torch.nn.Linear | None, qweight: Any, bias: Any = None, *, full_range: bool
) -> Any:
    cls = _dynamic_linear()
    out_features, in_features = qweight.shape
    if linear is not None:
        bias = None if linear.bias is None else linear.bias.detach().float()
    with quiet():
        layer = cls(in_features, out_features, bias_=bias is not None, dtype=torch.qint8)
        layer.set_weight_bias(qweight, bias)
    layer.full_range = full_range
    return layer


class Int8DynamicMethod:
    """Dynamic int8 (weights int8 per channel, activations quantized at run time)."""

    name = "int8_dynamic"
    bits: tuple[int, ...] = (8,)

    @staticmethod
    def kernel_for(full_range: bool) -> str:
        """What runs the variant here."""
        bits = "8-bit (VNNI)" if full_range else "7-bit"
        return (
            f"torch.ao dynamic int8 ({_engine()}/fbgemm, per-channel weights, {bits} "
            f"activations quantized per batch; {EMBEDDING_NOTE})"
        )

    @property
    def kernel(self) -> str:
        """What runs a variant made on this machine."""
        return self.kernel_for(full_range_activations())

    def unavailable(self) -> str | None:
        """Why torch's quantized CPU kernels cannot run here (None: they can)."""
        engines = torch.backends.quantized.supported_engines
        if not {"x86", "fbgemm"} & set(engines):
            return f"this torch build has no x86/fbgemm quantized engine (has {engines})"
        return None

    def check(self, spec: QuantSpec, model_config: dict[str, Any]) -> None:
        """8 bits only; no sparsity; not GPT-2 style Conv1D models."""
        check_common(self.name, self.bits, spec, model_config)
        refuse_sparsity(self.name, spec)
        if model_config.get("model_type") in CONV1D_MODEL_TYPES:
            raise FailedPrecondition(
                f"int8_dynamic quantizes nn.Linear layers and {model_config['model_type']} "
                "uses Conv1D projections; choose fp16 or bf16 for this model"
            )

    def quantize(self, model: torch.nn.Module, steps: Steps, *, full_range: bool) -> list[str]:
        """Quantize ``model``'s decoder-layer linears in place; their qualified names."""
        require_linears(model, self.name)
        names: list[str] = []
        blocks = decoder_blocks(model)
        for i, (prefix, block) in enumerate(blocks):
            steps.report("quantizing", i, len(blocks), prefix)
            for rel, linear in block_linears(block):
                _set_submodule(block, rel, _quantize_linear(linear, full_range=full_range))
                names.append(f"{prefix}.{rel}")
        steps.report("quantizing", len(blocks), len(blocks))
        return names

    def transform(self, model: Any, spec: QuantSpec, steps: Steps) -> Any:
        """Quantize ``model`` in place as :meth:`apply` does, for this CPU."""
        del spec
        self.quantize(model, steps, full_range=full_range_activations())
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
        """Quantize the source's linears layer by layer and save the tensors."""
        steps = Steps(progress, cancel)
        steps.report("loading", 0, 1)
        model = load_source(source)
        full_range = full_range_activations()
        names = self.quantize(model, steps, full_range=full_range)
        embedding = round_embedding(model)
        steps.report("saving", 0, 1)
        copy_side_files(source, out)
        self.save(model, names, out, stored_apart={embedding.key})
        save_embedding(embedding, out)
        recipe = VariantRecipe(
            method=self.name,
            bits=8,
            source=str(source),
            kernel=self.kernel_for(full_range),
            storage="state_dict",
            params={
                "quantized_layers": len(names),
                "weights_file": WEIGHTS_FILE,
                "full_range_activations": full_range,
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
        """One safetensors file: each quantized layer's int8 weight, scales, zero points
        and bias, then every other tensor of the state dict once (tied ones are rebuilt),
        except ``stored_apart`` (and what is tied to it)."""
        from safetensors.torch import save_file

        tensors: dict[str, torch.Tensor] = {}
        for name in names:
            layer: Any = model.get_submodule(name)
            qweight, bias = layer._packed_params._weight_bias()
            tensors[name + _QWEIGHT] = qweight.int_repr().contiguous()
            tensors[name + _SCALES] = qweight.q_per_channel_scales().contiguous()
            tensors[name + _ZEROS] = qweight.q_per_channel_zero_points().contiguous()
            if bias is not None:
                tensors[name + _BIAS] = bias.detach().contiguous()
        seen: set[int] = set()
        prefixes = tuple(n + "." for n in names)
        for key, value in model.state_dict().items():
            if key.startswith(prefixes) or not isinstance(value, torch.Tensor):
                continue
            if key in stored_apart:
                seen.add(value.data_ptr())
                continue
            if value.data_ptr() in seen:  # tied (lm_head = embed_tokens): rebuilt by tying
                continue
            seen.add(value.data_ptr())
            tensors[key] = value.detach().contiguous()
        save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt"})

    def load(self, variant: Path, recipe: VariantRecipe, dtype: Any, device: str) -> Any:
        """Rebuild from the config, swap in the stored int8 layers, load the fp32 rest.
        Runs in fp32 on the CPU only (``dtype`` is ignored; another device is refused)."""
        from safetensors.torch import load_file
        from transformers import AutoConfig, AutoModelForCausalLM

        del dtype
        if device not in ("cpu", "auto"):
            raise FailedPrecondition(f"int8_dynamic variants run on the CPU only, not {device}")
        weights_file = str(recipe.params.get("weights_file", WEIGHTS_FILE))
        # 8-bit activations only where this CPU computes them exactly.
        full_range = bool(recipe.params.get("full_range_activations"))
        if full_range and not full_range_activations():
            log.warning(
                "int8 variant %s was made for 8-bit activations (a VNNI CPU); this CPU has "
                "no VNNI, so it runs with 7-bit activations and its logits differ slightly "
                "from the measured ones",
                variant,
            )
            full_range = False
        tensors = load_file(str(variant / weights_file))
        with quiet():
            config = AutoConfig.from_pretrained(str(variant))
            model: Any = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        layer_names = [k[: -len(_QWEIGHT)] for k in tensors if k.endswith(_QWEIGHT)]
        layers = {
            name: (
                tensors.pop(name + _QWEIGHT),
                tensors.pop(name + _SCALES),
                tensors.pop(name + _ZEROS),
                tensors.pop(name + _BIAS, None),
            )
            for name in layer_names
        }
        # The fp32 rest first: quantized modules insist on their own state-dict keys.
        missing, unexpected = model.load_state_dict(tensors, strict=False)
        prefixes = tuple(n + "." for n in layer_names)
        apart = {embedding_key(model)} if (variant / EMBEDDING_FILE).is_file() else set()
        missing = [k for k in missing if not k.startswith(prefixes) and k not in apart]
        if unexpected or any(not _is_tied(model, k) for k in missing):
            raise ValueError(
                f"{variant} does not match its config: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
        for name, (int8, scales, zeros, bias) in layers.items():
            with quiet():
                qweight = torch._make_per_channel_quantized_tensor(int8, scales, zeros, 0)
            layer = _from_qweight(None, qweight, bias, full_range=full_range)
            _set_submodule(model, name, layer)
        load_embedding(model, variant)
        model.tie_weights()
        return model.eval()


def _is_tied(model: Any, key: str) -> bool:
    """True when ``key`` is the output head that the config ties to the embedding."""
    head = model.get_output_embeddings()
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    return tied and head is not None and key.startswith(_module_name(model, head))


def _module_name(model: Any, module: Any) -> str:
    for name, candidate in model.named_modules():
        if candidate is module:
            return str(name)
    return "\0"


INT8_DYNAMIC = Int8DynamicMethod()
