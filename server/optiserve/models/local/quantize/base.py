"""What every quantization (or pruning) method of a local model is, and what a variant on
disk looks like.

A method turns a source model directory (a ``save_pretrained`` layout, or the demo model's
package directory) into a *variant* directory that optiserve can load and serve. Every
variant directory holds :data:`VARIANT_FILE` (``optiserve_variant.json``): the method, its
bits, the source it came from and the kernel that runs it, so loading knows how to rebuild
the model (some methods, e.g. torch dynamic int8, cannot ``save_pretrained`` and are saved
as a state dict plus this recipe). :func:`load_variant` is the one loading path for serving
and for measuring.

Methods run off the event loop, report progress through a callback, and stop when their
``cancel`` event is set (raising :class:`Cancelled`; the caller removes partial output).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

#: The recipe file in every variant directory.
VARIANT_FILE = "optiserve_variant.json"


class Cancelled(Exception):
    """The job's cancel event was set; partial output must be removed by the caller."""


@dataclass(frozen=True)
class Progress:
    """Where a job is: ``phase`` (e.g. "loading", "quantizing", "saving", "measuring"),
    step ``step`` of ``steps`` within it (e.g. layer 3 of 8), seconds since the job began."""

    phase: str
    step: int
    steps: int
    elapsed_s: float
    message: str = ""

    @property
    def fraction(self) -> float:
        """Done fraction of this phase, in [0, 1]."""
        return min(1.0, self.step / self.steps) if self.steps > 0 else 0.0


ProgressFn = Callable[[Progress], None]


@dataclass(frozen=True)
class QuantSpec:
    """What a Quantize request asks of a method (already checked against the method)."""

    #: A method name from :data:`~optiserve.models.local.quantize.methods.METHODS`.
    method: str
    #: Bits per weight (methods with one width ignore it: 0 means their default).
    bits: int = 0
    #: Weights per quantization group (GPTQ; 0 = the method's default).
    group_size: int = 0
    #: Target fraction of zero weights (pruning methods; 0 = the method's default).
    sparsity: float = 0.0
    #: Calibration texts (GPTQ; empty = a built-in set).
    calibration_texts: tuple[str, ...] = ()


@dataclass(frozen=True)
class VariantRecipe:
    """The content of :data:`VARIANT_FILE`."""

    method: str
    bits: int
    #: The directory (or hub id) the variant was made from.
    source: str
    #: What actually runs it, e.g. "torch.ao dynamic int8 (fbgemm, per-channel)".
    kernel: str
    #: How its weights are stored: "safetensors" (a from_pretrained directory) or
    #: "state_dict" (rebuilt from the source's config by the method's loader).
    storage: str
    #: Method-specific settings needed to rebuild it (group size, sparsity, ...).
    params: dict[str, Any] = field(default_factory=dict)

    def write(self, directory: Path) -> None:
        """Write the recipe into ``directory``."""
        (directory / VARIANT_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, directory: Path) -> VariantRecipe:
        """The recipe of the variant in ``directory`` (ValueError when absent or bad)."""
        path = directory / VARIANT_FILE
        try:
            data = json.loads(path.read_text())
            return cls(**data)
        except (OSError, ValueError, TypeError) as exc:
            raise ValueError(f"{path} is not an optiserve variant recipe: {exc}") from exc


class Method(Protocol):
    """A quantization or pruning method."""

    #: The name requests use and reports show (e.g. "int8_dynamic", "fp16", "gptq").
    name: str
    #: Bit widths it accepts (the first is the default).
    bits: tuple[int, ...]

    def unavailable(self) -> str | None:
        """Why this method cannot run on this machine (a missing package, no GPU, ...),
        or None when it can. Cheap: called for every request and by ListModels."""
        ...

    def check(self, spec: QuantSpec, model_config: dict[str, Any]) -> None:
        """Refuse a spec this method cannot honour for a model with this ``config.json``
        content: InvalidRequest (bad bits, sparsity) or FailedPrecondition (layer shapes)."""
        ...

    def apply(
        self,
        source: Path,
        out: Path,
        spec: QuantSpec,
        progress: ProgressFn,
        cancel: threading.Event,
    ) -> VariantRecipe:
        """Build the variant of ``source`` into the empty directory ``out`` (weights,
        config, tokenizer files and :data:`VARIANT_FILE`); return its recipe."""
        ...

    def load(self, variant: Path, recipe: VariantRecipe, dtype: Any, device: str) -> Any:
        """The model of a variant this method made, ready for ``generate``/forward."""
        ...
