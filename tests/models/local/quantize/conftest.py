"""Fixtures of the quantize tests: the source models (a tiny random Llama and the trained
demo model) and their variants, built once per session by each CPU method."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from optiserve.models.demo import demo_model_dir
from optiserve.models.local.quantize.base import QuantSpec
from optiserve.models.local.quantize.measure import MeasureOptions
from optiserve.models.local.quantize.methods import method_named

torch.set_num_threads(1)

#: The methods of this build that run on a CPU with plain torch.
CPU_METHODS = ("fp16", "bf16", "int8_dynamic", "prune_magnitude", "prune_2_4")

#: Small measurements: the figures are checked for sanity, not for speed.
FAST = MeasureOptions(new_tokens=4, rounds=1, batch=8)


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    """The shipped demo model (trained, float16 on disk)."""
    return demo_model_dir()


@pytest.fixture(scope="session")
def sources(tiny_model_dir: Path, demo_dir: Path) -> dict[str, Path]:
    """Source models by name: ``tiny`` (random weights) and ``demo`` (trained)."""
    return {"tiny": tiny_model_dir, "demo": demo_dir}


VariantFactory = Callable[[str, str], Path]


@pytest.fixture(scope="session")
def variant(sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> VariantFactory:
    """``variant(source_name, method)``: the variant directory (built on first use)."""
    built: dict[tuple[str, str], Path] = {}

    def make(source: str, method: str) -> Path:
        if (source, method) not in built:
            out = tmp_path_factory.mktemp(f"{source}-{method}")
            method_named(method).apply(
                sources[source], out, QuantSpec(method), lambda _: None, threading.Event()
            )
            built[source, method] = out
        return built[source, method]

    return make
