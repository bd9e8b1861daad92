"""Quantize for the semantic cache's embedder (model name :data:`EMBEDDER_MODEL`): the
int8 ONNX graph measured against fp32 on the fixed sentence set, as a Quantize report.

The cache switches it on with ``cache.embedder_quantize = "int8"`` (the default); the
report says whether it keeps the mean cosine the cache requires
(:data:`~optiserve.cache.embedder_fidelity.MIN_EMBEDDER_COSINE`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from optiserve.cache.embedder_fidelity import MIN_EMBEDDER_COSINE, measure_embedder_quantization
from optiserve.domain.errors import InvalidRequest
from optiserve.domain.quantize import QuantizeReport, QuantizeRequest

#: The model name a Quantize request uses for the cache's embedder.
EMBEDDER_MODEL = "embedder"
#: The one method the embedder offers (ONNX Runtime dynamic int8).
EMBEDDER_METHOD = "int8_dynamic"


@dataclass(frozen=True)
class EmbedderSettings:
    """The embedder as the cache builds it."""

    model_path: str
    onnx_dir: Path
    max_tokens: int


def check_embedder_request(request: QuantizeRequest) -> None:
    """InvalidRequest for what the embedder does not offer."""
    if request.method != EMBEDDER_METHOD:
        raise InvalidRequest(
            f"the embedder is quantized with {EMBEDDER_METHOD} only (ONNX Runtime dynamic "
            f"int8), not {request.method}"
        )
    if request.bits not in (0, 8) or request.sparsity or request.group_size:
        raise InvalidRequest(
            f"the embedder's {EMBEDDER_METHOD} takes no bits (8 only), group_size or sparsity"
        )
    if request.serve:
        raise InvalidRequest(
            "the embedder is not a servable model; switch its int8 graph on with "
            'cache.embedder_quantize = "int8" in the configuration'
        )


def embedder_report(settings: EmbedderSettings) -> QuantizeReport:
    """Measure the int8 embedder against fp32 (blocking: minutes at most, on one thread)."""
    started = time.perf_counter()
    f = measure_embedder_quantization(
        settings.model_path or None,
        "int8",
        settings.onnx_dir,
        threads=1,
        max_tokens=settings.max_tokens,
    )
    verdict = (
        f"offered: mean cosine {f.mean_cosine:.4f} >= {MIN_EMBEDDER_COSINE}; the cache runs it "
        'with cache.embedder_quantize = "int8" (the default)'
        if f.offered
        else f"NOT offered: mean cosine {f.mean_cosine:.4f} < {MIN_EMBEDDER_COSINE}; keep "
        'cache.embedder_quantize = "none"'
    )
    return QuantizeReport(
        variant_name=f"{EMBEDDER_MODEL}-int8",
        method=EMBEDDER_METHOD,
        bits=8,
        kernel=f.kernel,
        path=str(settings.onnx_dir),
        size_bytes_before=f.size_bytes_fp32,
        size_bytes_after=f.size_bytes_int8,
        load_s_before=0.0,
        load_s_after=0.0,
        tokens_per_s_before=0.0,
        tokens_per_s_after=0.0,
        tokens_per_s_b8_before=0.0,
        tokens_per_s_b8_after=0.0,
        time_to_first_token_ms_before=0.0,
        time_to_first_token_ms_after=0.0,
        kl_divergence=0.0,
        token_agreement=0.0,
        perplexity_before=0.0,
        perplexity_after=0.0,
        evaluation_tokens=0,
        duration_s=time.perf_counter() - started,
        notes=(
            verdict,
            f"one embed() p50: fp32 {f.p50_ms_fp32:.2f} ms, int8 {f.p50_ms_int8:.2f} ms "
            f"({f.rounds} interleaved rounds, {f.threads} thread)",
        ),
        embedding_cosine_mean=f.mean_cosine,
        embedding_cosine_min=f.min_cosine,
        embedding_sentences=f.sentences,
    )
