"""Protobuf messages <-> domain dataclasses. The only place that knows both."""

from __future__ import annotations

import time

from optiserve.accounting.ledger import LedgerTotal
from optiserve.accounting.usage import ModelUsage
from optiserve.cache import CacheStats
from optiserve.domain import types as d
from optiserve.domain.errors import InvalidRequest
from optiserve.domain.quantize import QuantizeProgress, QuantizeReport, QuantizeRequest
from optiserve.domain.validation import check_name
from optiserve.service import UsageReport
from optiserve_client.v1 import optiserve_pb2 as pb

_CACHE_MODES = {
    pb.CACHE_MODE_DEFAULT: d.CacheMode.DEFAULT,
    pb.CACHE_MODE_BYPASS: d.CacheMode.BYPASS,
    pb.CACHE_MODE_REFRESH: d.CacheMode.REFRESH,
    pb.CACHE_MODE_ONLY_IF_CACHED: d.CacheMode.ONLY_IF_CACHED,
}
_FINISH = {
    d.FinishReason.EOS: pb.FINISH_REASON_EOS,
    d.FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    d.FinishReason.STOP_SEQUENCE: pb.FINISH_REASON_STOP_SEQUENCE,
    d.FinishReason.CACHED: pb.FINISH_REASON_CACHED,
}
_LAYERS = {d.CacheLayer.EXACT: pb.CACHE_LAYER_EXACT, d.CacheLayer.SEMANTIC: pb.CACHE_LAYER_SEMANTIC}
_OUTCOMES = {
    d.CacheOutcome.HIT: pb.CACHE_OUTCOME_HIT,
    d.CacheOutcome.MISS: pb.CACHE_OUTCOME_MISS,
    d.CacheOutcome.SKIPPED: pb.CACHE_OUTCOME_SKIPPED,
    d.CacheOutcome.REJECTED: pb.CACHE_OUTCOME_REJECTED,
}
_KINDS = {
    d.ModelKind.LOCAL: pb.MODEL_KIND_LOCAL,
    d.ModelKind.REMOTE: pb.MODEL_KIND_REMOTE,
    d.ModelKind.ROUTE: pb.MODEL_KIND_ROUTE,
}


_COMPRESSION = {
    pb.COMPRESSION_MODE_OFF: d.CompressionMode.OFF,
    pb.COMPRESSION_MODE_LOSSLESS: d.CompressionMode.LOSSLESS,
    pb.COMPRESSION_MODE_LOSSY: d.CompressionMode.LOSSY,
}


#: QuantMethod -> the method's name (models/local/quantize/methods.py).
QUANT_METHODS = {
    pb.QUANT_METHOD_FP16: "fp16",
    pb.QUANT_METHOD_BF16: "bf16",
    pb.QUANT_METHOD_INT8: "int8_dynamic",
    pb.QUANT_METHOD_GPTQ: "gptq",
    pb.QUANT_METHOD_INT8_WEIGHT_ONLY: "int8_weight_only",
    pb.QUANT_METHOD_PRUNE_MAGNITUDE: "prune_magnitude",
    pb.QUANT_METHOD_PRUNE_2_4: "prune_2_4",
}
_QUANT_ENUMS = {name: number for number, name in QUANT_METHODS.items()}


class UnknownEnumValue(ValueError):
    """A request carries an enum number this server does not know."""


def request_from_proto(
    msg: pb.GenerateRequest, request_id: str, tenant: str, time_remaining: float | None
) -> d.GenerateRequest:
    """Domain request from the wire message and the call's metadata/deadline."""
    s = msg.sampling
    mode = _CACHE_MODES.get(msg.cache.mode)
    if mode is None:
        raise UnknownEnumValue(
            f"cache.mode {msg.cache.mode} is unknown; allowed: "
            + ", ".join(f"{pb.CacheMode.Name(k)} ({k})" for k in _CACHE_MODES)
        )
    compression = _COMPRESSION.get(msg.compression)
    if compression is None:
        raise UnknownEnumValue(
            f"compression {msg.compression} is unknown; allowed: "
            + ", ".join(f"{pb.CompressionMode.Name(k)} ({k})" for k in _COMPRESSION)
        )
    return d.GenerateRequest(
        request_id=request_id,
        prompt=msg.prompt,
        messages=tuple(d.ChatMessage(m.role, m.content) for m in msg.messages),
        model=msg.model,
        sampling=d.SamplingParams(
            max_new_tokens=s.max_new_tokens if s.HasField("max_new_tokens") else None,
            temperature=s.temperature if s.HasField("temperature") else 0.0,
            top_p=s.top_p if s.HasField("top_p") else 1.0,
            top_k=s.top_k if s.HasField("top_k") else 0,
            stop=tuple(s.stop),
            seed=s.seed if s.HasField("seed") else None,
            min_new_tokens=s.min_new_tokens if s.HasField("min_new_tokens") else None,
        ),
        cache=d.CachePolicy(
            mode=mode,
            semantic_threshold=(
                msg.cache.semantic_threshold if msg.cache.HasField("semantic_threshold") else None
            ),
            ttl_s=msg.cache.ttl_seconds if msg.cache.HasField("ttl_seconds") else None,
        ),
        max_cost_usd=msg.budget.max_cost_usd if msg.budget.HasField("max_cost_usd") else None,
        min_quality=msg.budget.min_quality if msg.budget.HasField("min_quality") else None,
        compression=compression,
        json_schema=msg.response_format.json_schema,
        tenant=tenant,
        deadline=None if time_remaining is None else time.monotonic() + time_remaining,
    )


def summary_to_proto(s: d.ResponseSummary) -> pb.ResponseSummary:
    """Wire summary from the domain summary."""
    return pb.ResponseSummary(
        finish_reason=_FINISH[s.finish_reason],
        usage=pb.Usage(
            prompt_tokens=s.usage.prompt_tokens,
            completion_tokens=s.usage.completion_tokens,
            cached_tokens=s.usage.cached_tokens,
            provider_cache_read_tokens=s.usage.provider_cache_read_tokens,
            provider_cache_write_tokens=s.usage.provider_cache_write_tokens,
            estimated=s.usage.estimated,
        ),
        cost_usd=s.cost_usd,
        cost_saved_usd=s.cost_saved_usd,
        model=s.model,
        provider=s.provider,
        trace=pb.DecisionTrace(
            cache=[
                pb.CacheLookup(
                    layer=_LAYERS[c.layer],
                    outcome=_OUTCOMES[c.outcome],
                    similarity=c.similarity,
                    entry_id=c.entry_id,
                    guard_verdict=c.guard_verdict,
                    detail=c.detail,
                )
                for c in s.trace.cache
            ],
            route_reason=s.trace.route_reason,
            fallbacks=list(s.trace.fallbacks),
            route=_route_trace_to_proto(s.trace.route),
            compression=pb.CompressionTrace(
                mode=s.trace.compression.mode,
                tokens_before=s.trace.compression.tokens_before,
                tokens_after=s.trace.compression.tokens_after,
                note=s.trace.compression.note,
            ),
        ),
        timings=pb.Timings(
            queued_ms=s.timings.queued_ms,
            time_to_first_token_ms=s.timings.time_to_first_token_ms,
            total_ms=s.timings.total_ms,
            decode_tokens_per_s=s.timings.decode_tokens_per_s,
        ),
    )


def _route_trace_to_proto(r: d.RouteTrace) -> pb.RouteTrace:
    return pb.RouteTrace(
        route=r.route,
        rule=r.rule,
        features=dict(r.features),
        complexity=r.complexity,
        tier=r.tier,
        budget_pressure=r.budget_pressure,
        premium_model=r.premium_model,
        premium_cost_usd=r.premium_cost_usd,
    )


def result_to_proto(r: d.GenerateResult) -> pb.GenerateResponse:
    """Wire response from a complete result."""
    return pb.GenerateResponse(
        request_id=r.request_id, text=r.text, summary=summary_to_proto(r.summary)
    )


def model_info_to_proto(m: d.ModelInfo) -> pb.ModelInfo:
    """Wire ModelInfo."""
    return pb.ModelInfo(
        name=m.name,
        kind=_KINDS[m.kind],
        provider=m.provider,
        source=m.source,
        demo=m.demo,
        description=m.description,
        context_length=m.context_length,
        input_price_per_mtok=float(m.prices.input),
        output_price_per_mtok=float(m.prices.output),
        cache_read_price_per_mtok=float(m.prices.cache_read),
        cache_write_5m_price_per_mtok=float(m.prices.cache_write_5m),
        cache_write_1h_price_per_mtok=float(m.prices.cache_write_1h),
        provider_model=m.provider_model,
        tier=m.tier.value,
        quality=m.quality,
        route_models=list(m.route_models),
        quantization=m.quantization,
        quant_bits=m.quant_bits,
        size_bytes=m.size_bytes,
        variant_of=m.variant_of,
        default=m.default,
        max_new_tokens_cap=m.max_new_tokens_cap,
        default_max_new_tokens=m.default_max_new_tokens,
        structured_output=m.structured_output,
    )


def usage_to_proto(u: ModelUsage) -> pb.ModelUsage:
    """Wire usage row."""
    return pb.ModelUsage(
        model=u.model,
        requests=u.requests,
        errors=u.errors,
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        cached_tokens=u.cached_tokens,
        cost_usd=u.cost_usd,
        cost_saved_usd=u.cost_saved_usd,
        exact_hits=u.exact_hits,
        semantic_hits=u.semantic_hits,
        cancelled=u.cancelled,
        deadline_exceeded=u.deadline_exceeded,
    )


def usage_report_to_proto(report: UsageReport) -> pb.GetUsageResponse:
    """Wire GetUsage answer."""
    msg = pb.GetUsageResponse(
        models=[usage_to_proto(r) for r in report.models],
        total=usage_to_proto(report.total),
        uptime_s=report.uptime_s,
        cache=cache_stats_to_proto(report.cache, report.dropped_stores),
    )
    msg.ledger_write_failures = report.ledger_failures
    ledger = report.ledger
    if ledger is not None:
        msg.by_day.extend(_ledger_total(t) for t in ledger.by_day)
        msg.by_model.extend(_ledger_total(t) for t in ledger.by_model)
        msg.by_tenant.extend(_ledger_total(t) for t in ledger.by_tenant)
        msg.exact_cache_saved_usd = float(ledger.saved_by_layer.get("exact", 0))
        msg.semantic_cache_saved_usd = float(ledger.saved_by_layer.get("semantic", 0))
        msg.budgets.extend(
            pb.BudgetStatus(
                limit=b.limit,
                limit_usd=float(b.limit_usd),
                spent_usd=float(b.spent_usd),
                reserved_usd=float(b.reserved_usd),
                resets_at=b.resets_at.isoformat().replace("+00:00", "Z"),
            )
            for b in ledger.budgets
        )
    return msg


def _ledger_total(t: LedgerTotal) -> pb.LedgerTotal:
    return pb.LedgerTotal(
        key=t.key,
        requests=t.requests,
        errors=t.errors,
        prompt_tokens=t.prompt_tokens,
        completion_tokens=t.completion_tokens,
        cache_read_tokens=t.cache_read_tokens,
        cache_write_tokens=t.cache_write_tokens,
        cost_usd=float(t.cost_usd),
        cost_saved_usd=float(t.cost_saved_usd),
        estimated=t.estimated,
    )


def cache_stats_to_proto(stats: CacheStats | None, dropped_writes: int = 0) -> pb.CacheStats:
    """Wire cache statistics (``enabled=False`` when there is no cache)."""
    if stats is None:
        return pb.CacheStats(enabled=False)
    return pb.CacheStats(
        exact_hits=stats.exact_hits,
        semantic_hits=stats.semantic_hits,
        misses=stats.misses,
        guard_rejections=stats.guard_rejections,
        skipped=stats.skipped,
        stores=stats.stores,
        evictions=stats.evictions,
        expirations=stats.expirations,
        entries=stats.entries,
        bytes=stats.bytes,
        cost_saved_usd=stats.cost_saved_usd,
        tokens_saved=stats.tokens_saved,
        exact_backend=stats.exact_backend,
        index_device=stats.index_device,
        enabled=True,
        dropped_writes=dropped_writes,
    )


def quantize_request_from_proto(msg: pb.QuantizeRequest) -> QuantizeRequest:
    """Domain Quantize request; InvalidRequest for an unknown or missing method."""
    method = QUANT_METHODS.get(msg.method)
    if method is None:
        allowed = ", ".join(f"{pb.QuantMethod.Name(k)} ({k})" for k in QUANT_METHODS)
        raise InvalidRequest(
            f"method {msg.method} is not a quantization method; allowed: {allowed}"
        )
    if not msg.model:
        raise InvalidRequest("model is required: the name of a local model from ListModels")
    check_name("model", msg.model)
    return QuantizeRequest(
        model=msg.model,
        method=method,
        bits=msg.bits,
        group_size=msg.group_size,
        sparsity=msg.sparsity,
        calibration_texts=tuple(msg.calibration_texts),
        variant_name=msg.variant_name,
        serve=msg.serve,
        evaluation_text=msg.evaluation_text,
    )


def quantize_event_to_proto(event: QuantizeProgress | QuantizeReport) -> pb.QuantizeEvent:
    """Wire Quantize event: progress, or the report."""
    if isinstance(event, QuantizeProgress):
        return pb.QuantizeEvent(
            progress=pb.Progress(
                stage=event.stage,
                fraction=event.fraction,
                message=event.message,
                step=event.step,
                steps=event.steps,
                elapsed_s=event.elapsed_s,
            )
        )
    r = event
    return pb.QuantizeEvent(
        report=pb.QuantizeReport(
            variant_name=r.variant_name,
            method=_QUANT_ENUMS.get(r.method, pb.QUANT_METHOD_UNSPECIFIED),
            path=r.path,
            size_bytes_before=r.size_bytes_before,
            size_bytes_after=r.size_bytes_after,
            tokens_per_s_before=r.tokens_per_s_before,
            tokens_per_s_after=r.tokens_per_s_after,
            time_to_first_token_ms_before=r.time_to_first_token_ms_before,
            time_to_first_token_ms_after=r.time_to_first_token_ms_after,
            perplexity_before=r.perplexity_before,
            perplexity_after=r.perplexity_after,
            token_agreement=r.token_agreement,
            duration_s=r.duration_s,
            serving=r.serving,
            bits=r.bits,
            kernel=r.kernel,
            size_ratio=r.size_ratio,
            load_s_before=r.load_s_before,
            load_s_after=r.load_s_after,
            tokens_per_s_b8_before=r.tokens_per_s_b8_before,
            tokens_per_s_b8_after=r.tokens_per_s_b8_after,
            kl_divergence=r.kl_divergence,
            evaluation_tokens=r.evaluation_tokens,
            slower_than_source=r.slower_than_source,
            notes=list(r.notes),
            weight_sparsity=r.weight_sparsity,
            perplexity_delta_pct=r.perplexity_delta_pct,
            embedding_cosine_mean=r.embedding_cosine_mean,
            embedding_cosine_min=r.embedding_cosine_min,
            embedding_sentences=r.embedding_sentences,
        )
    )
