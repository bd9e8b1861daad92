"""Pruning: zero the smallest weights of the decoder layers' ``nn.Linear``.

``prune_magnitude`` zeroes the ``sparsity`` fraction of each layer's weights with the
smallest magnitude (unstructured); ``prune_2_4`` keeps the 2 largest of every 4
consecutive input weights (2:4 semi-structured, 50 %). Both save dense fp32 weights with
``save_pretrained``: on this CPU a dense matmul runs them, so the zeros save no time and
no space, and the report says so.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import torch

from optiserve.domain.errors import FailedPrecondition, InvalidRequest
from optiserve.models.local.quantize.base import ProgressFn, QuantSpec, VariantRecipe
from optiserve.models.local.quantize.common import (
    CONV1D_MODEL_TYPES,
    Steps,
    block_linears,
    check_common,
    copy_side_files,
    cpu_or,
    decoder_blocks,
    load_source,
    quiet,
    require_linears,
)

#: What runs a pruned variant on this machine.
DENSE_KERNEL = "dense fp32 matmul: zeros save no time or space on this CPU"


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """True for the weights kept: all but the ``sparsity`` fraction smallest in |w|."""
    flat = weight.detach().abs().flatten().float()
    drop = round(sparsity * flat.numel())
    if drop <= 0:
        return torch.ones_like(weight, dtype=torch.bool)
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[torch.topk(flat, drop, largest=False).indices] = False
    return keep.view_as(weight)


def two_four_mask(weight: torch.Tensor) -> torch.Tensor:
    """True for the 2 largest |w| in every group of 4 consecutive input weights."""
    out_features, in_features = weight.shape
    groups = weight.detach().abs().float().reshape(out_features, in_features // 4, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(2, torch.topk(groups, 2, dim=2).indices, True)
    return keep.reshape(out_features, in_features)


def linear_sparsity(model: torch.nn.Module) -> float:
    """Fraction of zero weights in the decoder layers' ``nn.Linear`` (0 when none)."""
    zeros = total = 0
    for _, block in decoder_blocks(model):
        for _, linear in block_linears(block):
            # torchao's Int8Tensor has no ==: count on its stored int8 values.
            weight = getattr(linear.weight, "qdata", linear.weight)
            zeros += int((weight == 0).sum())
            total += weight.numel()
    return zeros / total if total else 0.0


class PruneMethod:
    """Magnitude pruning (``two_four=False``) or 2:4 semi-structured pruning."""

    bits: tuple[int, ...] = (32,)
    kernel = DENSE_KERNEL

    def __init__(self, name: str, *, two_four: bool, default_sparsity: float) -> None:
        self.name = name
        self.two_four = two_four
        self.default_sparsity = default_sparsity

    def unavailable(self) -> str | None:
        """Always available: plain torch."""
        return None

    def sparsity(self, spec: QuantSpec) -> float:
        """The target fraction of zero weights for ``spec``."""
        return spec.sparsity or self.default_sparsity

    def check(self, spec: QuantSpec, model_config: dict[str, Any]) -> None:
        """Bits 32 only; sparsity in (0, 1) (2:4: exactly 0.5); 2:4 needs every linear's
        input width divisible by 4."""
        check_common(self.name, self.bits, spec, model_config)
        if not 0.0 <= spec.sparsity < 1.0:
            raise InvalidRequest(
                f"sparsity {spec.sparsity} is outside (0, 1); give the fraction of weights "
                f"to zero, e.g. 0.5 (0 = the default, {self.default_sparsity})"
            )
        if self.two_four and spec.sparsity not in (0.0, 0.5):
            raise InvalidRequest(
                f"prune_2_4 always zeroes 2 of every 4 weights (sparsity 0.5), not "
                f"{spec.sparsity}; leave sparsity 0 or use prune_magnitude"
            )
        model_type = model_config.get("model_type")
        if model_type in CONV1D_MODEL_TYPES:
            raise FailedPrecondition(
                f"{self.name} prunes nn.Linear layers and {model_type} uses Conv1D "
                "projections; choose fp16 or bf16 for this model"
            )
        if self.two_four:
            for layer, width in _input_widths(model_config).items():
                if width % 4:
                    raise FailedPrecondition(
                        f"prune_2_4 needs every linear layer's input width divisible by 4; "
                        f"{layer} has {width}; use prune_magnitude for this model"
                    )

    def apply(
        self,
        source: Path,
        out: Path,
        spec: QuantSpec,
        progress: ProgressFn,
        cancel: threading.Event,
    ) -> VariantRecipe:
        """Prune the source's linears layer by layer; save dense fp32 weights."""
        steps = Steps(progress, cancel)
        steps.report("loading", 0, 1)
        model = self.transform(load_source(source), spec, steps)
        target = self.sparsity(spec)
        measured = linear_sparsity(model)
        steps.report("saving", 0, 1, f"sparsity {measured:.3f}")
        copy_side_files(source, out)
        with quiet():
            model.save_pretrained(out)
        recipe = VariantRecipe(
            method=self.name,
            bits=32,
            source=str(source),
            kernel=self.kernel,
            storage="safetensors",
            params={"target_sparsity": target, "sparsity": round(measured, 6)},
        )
        recipe.write(out)
        return recipe

    def transform(self, model: Any, spec: QuantSpec, steps: Steps) -> Any:
        """Prune ``model`` in place, layer by layer (what :meth:`apply` saves)."""
        require_linears(model, self.name)
        target = self.sparsity(spec)
        blocks = decoder_blocks(model)
        with torch.no_grad():
            for i, (prefix, block) in enumerate(blocks):
                steps.report("pruning", i, len(blocks), prefix)
                for rel, linear in block_linears(block):
                    if self.two_four and linear.in_features % 4:
                        raise FailedPrecondition(
                            f"prune_2_4 needs input widths divisible by 4; {prefix}.{rel} "
                            f"has {linear.in_features}; use prune_magnitude for this model"
                        )
                    mask = (
                        two_four_mask(linear.weight)
                        if self.two_four
                        else magnitude_mask(linear.weight, target)
                    )
                    linear.weight.mul_(mask)
        return model

    def load(self, variant: Path, recipe: VariantRecipe, dtype: Any, device: str) -> Any:
        """The pruned model with ``from_pretrained`` (``dtype`` None: fp32)."""
        del recipe
        return load_source(variant, dtype or torch.float32).to(cpu_or(device))


def _input_widths(config: dict[str, Any]) -> dict[str, int]:
    """Input widths of a Llama-style model's linears, by layer, from its config."""
    widths: dict[str, int] = {}
    hidden = config.get("hidden_size")
    if isinstance(hidden, int):
        widths["self_attn.q_proj/k_proj/v_proj and mlp.gate_proj/up_proj"] = hidden
        heads = config.get("num_attention_heads")
        head_dim = config.get("head_dim") or (hidden // heads if heads else None)
        if isinstance(heads, int) and isinstance(head_dim, int):
            widths["self_attn.o_proj"] = heads * head_dim
    intermediate = config.get("intermediate_size")
    if isinstance(intermediate, int):
        widths["mlp.down_proj"] = intermediate
    return widths


PRUNE_MAGNITUDE = PruneMethod("prune_magnitude", two_four=False, default_sparsity=0.5)
PRUNE_2_4 = PruneMethod("prune_2_4", two_four=True, default_sparsity=0.5)
