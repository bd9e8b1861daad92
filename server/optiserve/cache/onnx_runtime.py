"""ONNX export, int8 quantization and sessions: one place for the cache's two networks
(the embedder and the pair verifier).

Exported graphs are cached on disk under a key of their weights, written through a
temporary file and renamed, so a crash never leaves a half-written graph behind.
"""

from __future__ import annotations

import importlib
import logging
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def available() -> bool:
    """True when ONNX Runtime and the ONNX exporter's ``onnx`` package are importable."""
    try:
        importlib.import_module("onnx")
        importlib.import_module("onnxruntime")
    except ImportError:
        return False
    return True


def export(
    module: Any,
    sample: tuple[Any, ...],
    file: Path,
    *,
    inputs: Sequence[str],
    output: str,
) -> None:
    """Export ``module`` to ``file`` with dynamic batch and token axes on every input."""
    import torch

    tmp = file.with_suffix(f".{threading.get_ident()}.tmp")
    axes = {name: {0: "batch", 1: "tokens"} for name in inputs}
    with warnings.catch_warnings(), torch.inference_mode(False):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            sample,
            str(tmp),
            input_names=list(inputs),
            output_names=[output],
            dynamic_axes={**axes, output: {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    tmp.replace(file)
    logger.info("exported %s to ONNX", file.name)


def quantized(file: Path) -> Path:
    """The int8 twin of ``file`` (dynamic, per-channel MatMul weights), made once."""
    target = file.with_name(file.stem + "-int8.onnx")
    if not target.exists():
        quantization: Any = importlib.import_module("onnxruntime.quantization")
        tmp = target.with_suffix(f".{threading.get_ident()}.tmp")
        quantization.quantize_dynamic(
            str(file), str(tmp), weight_type=quantization.QuantType.QInt8, per_channel=True
        )
        tmp.replace(target)
        logger.info("quantized %s to int8", file.name)
    return target


def session(file: Path, threads: int) -> Any:
    """A CPU inference session for ``file`` with ``threads`` intra-op threads."""
    ort: Any = importlib.import_module("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])


def cache_folder(folder: Path | None) -> Path:
    """Where exported graphs are kept (created)."""
    path = folder or (Path.home() / ".cache" / "optiserve" / "onnx")
    path.mkdir(parents=True, exist_ok=True)
    return path
