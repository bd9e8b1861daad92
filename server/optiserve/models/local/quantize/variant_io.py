"""Loading a variant directory: the one path serving and measuring both take."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from optiserve.models.local.quantize.base import VARIANT_FILE, VariantRecipe


def is_variant(directory: Path | str) -> bool:
    """True when ``directory`` holds an optiserve variant recipe."""
    return (Path(directory) / VARIANT_FILE).is_file()


def load_variant(directory: Path | str, dtype: Any = None, device: str = "cpu") -> Any:
    """The model of the variant in ``directory``, in eval mode: reads its recipe and
    dispatches to its method's ``load``. ``dtype`` None means the variant's own (cast
    variants always load in their dtype, int8 ones in fp32 on the CPU)."""
    from optiserve.models.local.quantize.methods import method_named

    path = Path(directory)
    recipe = VariantRecipe.read(path)
    model = method_named(recipe.method).load(path, recipe, dtype, device)
    return model.eval()
