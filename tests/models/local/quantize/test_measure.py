"""Measuring variants against their source: sizes match the files on disk, fidelity on the
trained demo model, the fresh-process round trip, bad evaluation text."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import CPU_METHODS, FAST, VariantFactory
from optiserve.domain.errors import InvalidRequest
from optiserve.models.local.quantize.base import Cancelled, Progress
from optiserve.models.local.quantize.eval_text import DEFAULT_EVAL_TEXT
from optiserve.models.local.quantize.fresh_process import measure_in_fresh_process
from optiserve.models.local.quantize.measure import MIN_EVAL_TOKENS, Measurement, measure

#: Measurements of the demo model's variants, once per session.
_DEMO: dict[str, Measurement] = {}


@pytest.fixture(scope="module")
def demo_measured(variant: VariantFactory, demo_dir: Path) -> dict[str, Measurement]:
    """Every CPU method's demo variant measured against the demo model."""
    if not _DEMO:
        for method in CPU_METHODS:
            _DEMO[method] = measure(demo_dir, variant("demo", method), options=FAST)
    return _DEMO


def _file_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("*.safetensors"))


@pytest.mark.parametrize("method", CPU_METHODS)
def test_sizes_match_the_files_on_disk(
    method: str, demo_measured: dict[str, Measurement], variant: VariantFactory, demo_dir: Path
) -> None:
    m = demo_measured[method]
    assert m.source.size_bytes == _file_bytes(demo_dir) > 0
    assert m.variant.size_bytes == _file_bytes(variant("demo", method)) > 0
    assert m.size_ratio == pytest.approx(m.source.size_bytes / m.variant.size_bytes)
    assert m.method == method and m.evaluation_tokens >= MIN_EVAL_TOKENS
    for side in (m.source, m.variant):
        assert side.load_s > 0 and side.ttft_ms > 0
        assert side.tokens_per_s_b1 > 0 and side.tokens_per_s_b8 > 0
        assert 1 < side.perplexity < 2048


def test_int8_keeps_the_trained_model_close(demo_measured: dict[str, Measurement]) -> None:
    m = demo_measured["int8_dynamic"]
    assert m.kl_divergence < 0.05
    assert m.variant.perplexity <= 1.05 * m.source.perplexity
    assert m.token_agreement > 0.8
    assert m.size_ratio > 1.0


@pytest.mark.parametrize("method", ["fp16", "bf16"])
def test_half_precision_is_sane(method: str, demo_measured: dict[str, Measurement]) -> None:
    m = demo_measured[method]
    assert m.kl_divergence < 0.01 and m.token_agreement > 0.9
    assert abs(m.ppl_delta_pct) < 2.0
    assert "matmul (CPU)" in m.kernel


@pytest.mark.parametrize("method", ["prune_magnitude", "prune_2_4"])
def test_pruning_report_says_zeros_save_nothing(
    method: str, demo_measured: dict[str, Measurement]
) -> None:
    m = demo_measured[method]
    assert abs(m.weight_sparsity - 0.5) <= 0.01
    assert any("zeros save no time or space on this CPU" in note for note in m.notes)
    assert m.size_ratio <= 1.0  # dense fp32 with zeros: no smaller than the source


def test_slower_flag_and_report(demo_measured: dict[str, Measurement]) -> None:
    m = demo_measured["int8_dynamic"]
    fast = replace(
        m.variant,
        tokens_per_s_b1=2 * m.source.tokens_per_s_b1,
        tokens_per_s_b8=2 * m.source.tokens_per_s_b8,
    )
    assert not replace(m, variant=fast).slower
    assert replace(m, variant=replace(fast, tokens_per_s_b8=0.5 * m.source.tokens_per_s_b8)).slower
    report = m.as_report("demo-int8", "/models/demo-int8")
    assert report.size_ratio == pytest.approx(m.size_ratio)
    assert report.slower_than_source == m.slower
    assert Measurement.from_dict(m.to_dict()) == m


def test_too_short_evaluation_text_is_refused(demo_dir: Path, variant: VariantFactory) -> None:
    with pytest.raises(InvalidRequest, match=r"evaluation text too short to measure: \d+ tokens"):
        measure(demo_dir, variant("demo", "fp16"), eval_text="Too short.", options=FAST)
    assert len(DEFAULT_EVAL_TEXT.split()) > 250


def test_fresh_process_measures_the_variant_reloaded_from_disk(
    tiny_model_dir: Path, variant: VariantFactory
) -> None:
    out = variant("tiny", "int8_dynamic")
    seen: list[Progress] = []
    m = measure_in_fresh_process(tiny_model_dir, out, progress=seen.append, options=FAST)
    assert m.method == "int8_dynamic"
    assert m.variant.size_bytes == _file_bytes(out)
    assert {p.phase for p in seen} >= {"loading", "measuring speed", "measuring fidelity"}
    in_process = measure(tiny_model_dir, out, options=FAST)
    # Same files, same inputs: the fidelity figures of both runs agree.
    assert m.kl_divergence == pytest.approx(in_process.kl_divergence, rel=1e-6, abs=1e-9)
    assert m.variant.perplexity == pytest.approx(in_process.variant.perplexity, rel=1e-6)


def test_fresh_process_is_killed_on_cancel(tiny_model_dir: Path, variant: VariantFactory) -> None:
    cancel = threading.Event()

    def progress(p: Progress) -> None:
        cancel.set()

    with pytest.raises(Cancelled):
        measure_in_fresh_process(
            tiny_model_dir, variant("tiny", "fp16"), progress=progress, cancel=cancel
        )


def test_fresh_process_reraises_a_refusal(tiny_model_dir: Path, variant: VariantFactory) -> None:
    with pytest.raises(InvalidRequest, match="too short"):
        measure_in_fresh_process(tiny_model_dir, variant("tiny", "fp16"), eval_text="short")


def test_measure_stops_when_cancelled(tiny_model_dir: Path, variant: VariantFactory) -> None:
    cancel = threading.Event()

    def progress(p: Progress) -> None:
        if p.phase == "measuring speed":
            cancel.set()

    with pytest.raises(Cancelled):
        measure(tiny_model_dir, variant("tiny", "bf16"), progress=progress, cancel=cancel)
