"""fp16 and bf16: every floating-point weight cast to a 16-bit type, saved with
``save_pretrained`` (safetensors) and loaded back with ``from_pretrained``.

On a CPU these run through torch's own half/bfloat16 matmul, which is usually slower than
fp32 (the measured report shows by how much); they halve the size on disk.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import torch

from optiserve.models.local.quantize.base import ProgressFn, QuantSpec, VariantRecipe
from optiserve.models.local.quantize.common import (
    Steps,
    check_common,
    copy_side_files,
    cpu_or,
    decoder_blocks,
    load_source,
    quiet,
    refuse_sparsity,
)


class CastMethod:
    """Cast the weights to ``dtype`` (``name`` is "fp16" or "bf16")."""

    bits: tuple[int, ...] = (16,)

    def __init__(self, name: str, dtype: torch.dtype, dtype_name: str) -> None:
        self.name = name
        self.dtype = dtype
        self._dtype_name = dtype_name

    @property
    def kernel(self) -> str:
        """What runs the variant here."""
        return f"torch {self._dtype_name} matmul (CPU)"

    def unavailable(self) -> str | None:
        """Always available: plain torch."""
        return None

    def check(self, spec: QuantSpec, model_config: dict[str, Any]) -> None:
        """Only 16 bits; no sparsity."""
        check_common(self.name, self.bits, spec, model_config)
        refuse_sparsity(self.name, spec)

    def apply(
        self,
        source: Path,
        out: Path,
        spec: QuantSpec,
        progress: ProgressFn,
        cancel: threading.Event,
    ) -> VariantRecipe:
        """Load the source, cast it layer by layer, save it with ``save_pretrained``."""
        steps = Steps(progress, cancel)
        steps.report("loading", 0, 1)
        model = self.transform(load_source(source), spec, steps)
        steps.report("saving", 0, 1)
        copy_side_files(source, out)
        with quiet():
            model.save_pretrained(out)
        recipe = VariantRecipe(
            method=self.name,
            bits=16,
            source=str(source),
            kernel=self.kernel,
            storage="safetensors",
            params={"dtype": self._dtype_name},
        )
        recipe.write(out)
        return recipe

    def transform(self, model: Any, spec: QuantSpec, steps: Steps) -> Any:
        """Cast ``model`` in place, layer by layer (what :meth:`apply` saves)."""
        del spec
        blocks = decoder_blocks(model)
        for i, (name, block) in enumerate(blocks):
            steps.report("casting", i, len(blocks), name)
            _cast_parameters(block, self.dtype)
        _cast_parameters(model, self.dtype)  # embeddings, final norm, head
        steps.report("casting", len(blocks), len(blocks))
        return model

    def load(self, variant: Path, recipe: VariantRecipe, dtype: Any, device: str) -> Any:
        """The variant in its own dtype (``dtype`` is ignored: the cast is the variant)."""
        del recipe, dtype
        return load_source(variant, self.dtype).to(cpu_or(device))


def _cast_parameters(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast the parameters only: buffers such as rotary frequencies keep their dtype, as
    ``from_pretrained(dtype=...)`` leaves them, so the reloaded variant computes alike."""
    with torch.no_grad():
        for param in module.parameters():
            param.data = param.data.to(dtype)


FP16 = CastMethod("fp16", torch.float16, "float16")
BF16 = CastMethod("bf16", torch.bfloat16, "bfloat16")
