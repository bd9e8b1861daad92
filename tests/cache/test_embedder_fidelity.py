"""The embedder's int8 fidelity report: measured on the fixed set, sizes read from disk."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from optiserve.cache import onnx_runtime
from optiserve.cache.embedder import Embedder
from optiserve.cache.embedder_fidelity import (
    INT8_KERNEL,
    MIN_EMBEDDER_COSINE,
    SENTENCES,
    EmbedderFidelity,
    measure_embedder_quantization,
    quantization_offered,
)


@pytest.fixture(scope="module")
def fidelity(embedder: Embedder) -> EmbedderFidelity:
    """Measured once, reusing the session embedder's exported graphs (one timing round)."""
    assert embedder.onnx_file is not None
    return measure_embedder_quantization(onnx_dir=embedder.onnx_file.parent, rounds=1)


def test_fixed_set_is_varied() -> None:
    assert len(SENTENCES) >= 60
    assert len(set(SENTENCES)) == len(SENTENCES)
    assert any(not s.isascii() for s in SENTENCES)  # other languages
    assert any(s.startswith(("def ", "SELECT ", "git ")) for s in SENTENCES)  # code
    assert min(len(s) for s in SENTENCES) < 10 < 200 < max(len(s) for s in SENTENCES)


def test_int8_keeps_the_cosine(fidelity: EmbedderFidelity) -> None:
    assert fidelity.quantize == "int8"
    assert fidelity.kernel == INT8_KERNEL
    assert fidelity.sentences == len(SENTENCES)
    assert fidelity.mean_cosine >= MIN_EMBEDDER_COSINE
    assert fidelity.offered
    # Every sentence stays close, and the mean is a mean of real cosines.
    assert 0.95 <= fidelity.min_cosine <= fidelity.mean_cosine <= 1.0 + 1e-5


def test_sizes_are_the_graphs_on_disk(embedder: Embedder, fidelity: EmbedderFidelity) -> None:
    assert embedder.onnx_file is not None and embedder.quantize == "int8"
    int8_file = embedder.onnx_file
    fp32_file = int8_file.with_name(int8_file.name.removesuffix("-int8.onnx") + ".onnx")
    assert fidelity.size_bytes_int8 == int8_file.stat().st_size
    assert fidelity.size_bytes_fp32 == fp32_file.stat().st_size
    assert fidelity.size_bytes_int8 < fidelity.size_bytes_fp32
    assert fidelity.size_ratio == fidelity.size_bytes_fp32 / fidelity.size_bytes_int8
    assert fidelity.size_ratio > 3  # int8 weights are a quarter of fp32 ones


def test_latency_is_measured(fidelity: EmbedderFidelity) -> None:
    assert fidelity.rounds == 1 and fidelity.threads == 1
    for p50 in (fidelity.p50_ms_fp32, fidelity.p50_ms_int8):
        assert math.isfinite(p50) and p50 > 0


def test_offered_at_the_threshold() -> None:
    assert quantization_offered(MIN_EMBEDDER_COSINE)
    assert quantization_offered(0.995)
    assert not quantization_offered(MIN_EMBEDDER_COSINE - 1e-6)


def test_fp32_is_not_a_quantization(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fp32 reference"):
        measure_embedder_quantization(onnx_dir=tmp_path, quantize="none")
    with pytest.raises(ValueError, match="quantize must be one of"):
        measure_embedder_quantization(onnx_dir=tmp_path, quantize="int4")


def test_no_onnx_runtime_is_refused(embedder: Embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    """When ONNX Runtime cannot run the graphs the embedder falls back to torch fp32: there
    is nothing quantized, and the measurement says so instead of comparing fp32 to fp32."""

    def broken(file: Path, threads: int) -> None:
        raise RuntimeError("no session")

    monkeypatch.setattr(onnx_runtime, "session", broken)
    assert embedder.onnx_file is not None
    with pytest.raises(RuntimeError, match="ONNX graphs could not be built or run"):
        measure_embedder_quantization(onnx_dir=embedder.onnx_file.parent, texts=SENTENCES[:2])
