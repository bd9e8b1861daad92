"""Measuring a variant against its source, in one process, on the same inputs.

Both models are loaded side by side (the source in fp32, the variant through
:func:`~optiserve.models.local.quantize.variant_io.load_variant`), then timed in
interleaved rounds (source and variant alternate, and which goes first alternates too):
greedy generation of a fixed number of new tokens (EOS suppressed) at batch 1 and
batch 8, and time to first token. Fidelity compares their next-token distributions at
every position of an evaluation text: mean KL(source || variant), greedy agreement and
both perplexities. Nothing is estimated: sizes are the bytes of the weight files.
"""

from __future__ import annotations

import json
import math
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from optiserve.domain.errors import InvalidRequest
from optiserve.domain.quantize import QuantizeReport
from optiserve.models.local.quantize.base import ProgressFn, VariantRecipe
from optiserve.models.local.quantize.common import Steps, load_source, quiet, weight_bytes
from optiserve.models.local.quantize.eval_text import DEFAULT_EVAL_TEXT, DEFAULT_PROMPTS
from optiserve.models.local.quantize.pruning import DENSE_KERNEL, linear_sparsity
from optiserve.models.local.quantize.variant_io import load_variant

#: Fewest evaluation tokens the fidelity figures are computed on.
MIN_EVAL_TOKENS = 64


@dataclass(frozen=True)
class MeasureOptions:
    """How much to measure (larger: steadier figures, longer jobs)."""

    #: New tokens per timed generation (EOS is suppressed so every run makes this many).
    new_tokens: int = 32
    #: Timed rounds of each model at each batch size; the median round is reported.
    rounds: int = 3
    #: Sequences in the batched runs.
    batch: int = 8
    #: Longest window the evaluation text is scored in (0 = the model's context, ≤ 512).
    window: int = 0


@dataclass(frozen=True)
class SideFigures:
    """What one model (source or variant) measured."""

    size_bytes: int
    load_s: float
    tokens_per_s_b1: float
    tokens_per_s_b8: float
    ttft_ms: float
    perplexity: float


@dataclass(frozen=True)
class Measurement:
    """A variant measured against its source in one run."""

    method: str
    bits: int
    kernel: str
    source: SideFigures
    variant: SideFigures
    #: Mean KL(source || variant) of the next-token distributions over the eval text.
    kl_divergence: float
    #: Fraction of eval positions where both models' most likely next token agree.
    token_agreement: float
    evaluation_tokens: int
    #: Measured fraction of zero weights in the variant's decoder-layer nn.Linear.
    weight_sparsity: float
    duration_s: float
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def size_ratio(self) -> float:
        """Source bytes over variant bytes."""
        return self.source.size_bytes / self.variant.size_bytes if self.variant.size_bytes else 0.0

    @property
    def tps_ratio_b1(self) -> float:
        """Variant over source tokens/s at batch 1."""
        return _ratio(self.variant.tokens_per_s_b1, self.source.tokens_per_s_b1)

    @property
    def tps_ratio_b8(self) -> float:
        """Variant over source tokens/s at batch 8."""
        return _ratio(self.variant.tokens_per_s_b8, self.source.tokens_per_s_b8)

    @property
    def ppl_delta_pct(self) -> float:
        """Perplexity change of the variant, in percent of the source's."""
        return 100.0 * (_ratio(self.variant.perplexity, self.source.perplexity) - 1.0)

    @property
    def slower(self) -> bool:
        """True when the variant generates slower than its source at batch 1 or 8."""
        return self.tps_ratio_b1 < 1.0 or self.tps_ratio_b8 < 1.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form (see :meth:`from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        """The inverse of :meth:`to_dict`."""
        data = dict(data)
        data["source"] = SideFigures(**data["source"])
        data["variant"] = SideFigures(**data["variant"])
        data["notes"] = tuple(data.get("notes", ()))
        return cls(**data)

    def as_report(self, variant_name: str, path: str, *, serving: bool = False) -> QuantizeReport:
        """The domain report of the Quantize RPC."""
        s, v = self.source, self.variant
        return QuantizeReport(
            variant_name=variant_name,
            method=self.method,
            bits=self.bits,
            kernel=self.kernel,
            path=path,
            size_bytes_before=s.size_bytes,
            size_bytes_after=v.size_bytes,
            load_s_before=s.load_s,
            load_s_after=v.load_s,
            tokens_per_s_before=s.tokens_per_s_b1,
            tokens_per_s_after=v.tokens_per_s_b1,
            tokens_per_s_b8_before=s.tokens_per_s_b8,
            tokens_per_s_b8_after=v.tokens_per_s_b8,
            time_to_first_token_ms_before=s.ttft_ms,
            time_to_first_token_ms_after=v.ttft_ms,
            kl_divergence=self.kl_divergence,
            token_agreement=self.token_agreement,
            perplexity_before=s.perplexity,
            perplexity_after=v.perplexity,
            evaluation_tokens=self.evaluation_tokens,
            duration_s=self.duration_s,
            serving=serving,
            notes=self.notes,
            weight_sparsity=self.weight_sparsity,
        )


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def eval_token_ids(tokenizer: Any, text: str) -> list[int]:
    """The evaluation text's token ids; InvalidRequest when too short to measure."""
    ids: list[int] = list(tokenizer(text or DEFAULT_EVAL_TEXT)["input_ids"])
    if len(ids) < MIN_EVAL_TOKENS:
        raise InvalidRequest(
            f"evaluation text too short to measure: {len(ids)} tokens, need at least "
            f"{MIN_EVAL_TOKENS}; send a longer text or none for the built-in one"
        )
    return ids


class _Timed:
    """One model under measurement and its collected timings."""

    def __init__(self, model: Any, load_s: float, size_bytes: int) -> None:
        self.model = model
        self.load_s = load_s
        self.size_bytes = size_bytes
        self.tps_b1: list[float] = []
        self.tps_b8: list[float] = []
        self.ttft_ms: list[float] = []


def _generate(model: Any, batch: dict[str, torch.Tensor], new_tokens: int, pad: int) -> float:
    """Seconds one greedy generation of exactly ``new_tokens`` tokens takes."""
    started = time.perf_counter()
    with torch.inference_mode():
        model.generate(
            **batch,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=pad,
        )
    return time.perf_counter() - started


def _fidelity(
    source: Any, variant: Any, ids: list[int], window: int, steps: Steps
) -> tuple[float, float, float, float]:
    """(mean KL, agreement, source perplexity, variant perplexity) over ``ids``."""
    kl_sum = agree = nll_s = nll_v = 0.0
    count = 0
    starts = list(range(0, len(ids) - 1, window))
    for i, start in enumerate(starts):
        steps.report("measuring fidelity", i, len(starts))
        chunk = torch.tensor([ids[start : start + window + 1]])
        inputs, targets = chunk[:, :-1], chunk[0, 1:]
        with torch.inference_mode():
            log_s = source(input_ids=inputs).logits[0].double().log_softmax(-1)
            log_v = variant(input_ids=inputs).logits[0].double().log_softmax(-1)
        kl_sum += float((log_s.exp() * (log_s - log_v)).sum(-1).clamp_min(0).sum())
        agree += float((log_s.argmax(-1) == log_v.argmax(-1)).sum())
        rows = torch.arange(len(targets))
        nll_s -= float(log_s[rows, targets].sum())
        nll_v -= float(log_v[rows, targets].sum())
        count += len(targets)
    return kl_sum / count, agree / count, math.exp(nll_s / count), math.exp(nll_v / count)


def measure(
    source_dir: Path | str,
    variant_dir: Path | str,
    eval_text: str = "",
    prompts: tuple[str, ...] = (),
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    options: MeasureOptions = MeasureOptions(),
) -> Measurement:
    """Measure the variant in ``variant_dir`` against ``source_dir`` (see the module)."""
    from transformers import AutoTokenizer

    steps = Steps(progress or (lambda _: None), cancel or threading.Event())
    source_path, variant_path = Path(source_dir), Path(variant_dir)
    recipe = VariantRecipe.read(variant_path)
    tokenizer = AutoTokenizer.from_pretrained(str(variant_path))
    ids = eval_token_ids(tokenizer, eval_text)
    _import_model_code(source_path)  # so the first timed load pays no import
    steps.report("loading", 0, 2, "source")
    started = time.perf_counter()
    source_model = load_source(source_path)
    src = _Timed(source_model, time.perf_counter() - started, weight_bytes(source_path))
    steps.report("loading", 1, 2, "variant")
    started = time.perf_counter()
    variant_model = load_variant(variant_path)
    var = _Timed(variant_model, time.perf_counter() - started, weight_bytes(variant_path))

    prompts = prompts or DEFAULT_PROMPTS
    batch_prompts = [prompts[i % len(prompts)] for i in range(options.batch)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token_id = pad
    batched = dict(tokenizer(batch_prompts, return_tensors="pt", padding=True))
    n = options.new_tokens
    for side in (src, var):  # warm-up: first calls pay one-time costs
        _generate(side.model, dict(tokenizer(prompts[0], return_tensors="pt")), 2, pad)
    for r in range(options.rounds):
        steps.report("measuring speed", r, options.rounds)
        single = dict(tokenizer(prompts[r % len(prompts)], return_tensors="pt"))
        for side in (src, var) if r % 2 == 0 else (var, src):
            side.ttft_ms.append(1000.0 * _generate(side.model, single, 1, pad))
            side.tps_b1.append(n / _generate(side.model, single, n, pad))
            side.tps_b8.append(n * options.batch / _generate(side.model, batched, n, pad))

    window = options.window or min(
        512, int(getattr(source_model.config, "max_position_embeddings", 512) or 512)
    )
    kl, agreement, ppl_s, ppl_v = _fidelity(source_model, variant_model, ids, window, steps)
    sparsity = linear_sparsity(variant_model)
    figures = [
        SideFigures(
            size_bytes=side.size_bytes,
            load_s=side.load_s,
            tokens_per_s_b1=statistics.median(side.tps_b1),
            tokens_per_s_b8=statistics.median(side.tps_b8),
            ttft_ms=statistics.median(side.ttft_ms),
            perplexity=ppl,
        )
        for side, ppl in ((src, ppl_s), (var, ppl_v))
    ]
    steps.report("measuring fidelity", 1, 1)
    result = Measurement(
        method=recipe.method,
        bits=recipe.bits,
        kernel=recipe.kernel,
        source=figures[0],
        variant=figures[1],
        kl_divergence=kl,
        token_agreement=agreement,
        evaluation_tokens=len(ids),
        weight_sparsity=sparsity,
        duration_s=steps.elapsed(),
    )
    return _with_notes(result, recipe, source_path)


def _import_model_code(source: Path) -> None:
    """Import the source's modeling code by building it on the meta device (no memory)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with quiet(), torch.device("meta"):
        AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(source)))


def _with_notes(m: Measurement, recipe: VariantRecipe, source: Path) -> Measurement:
    notes: list[str] = []
    if m.slower:
        notes.append(
            f"SLOWER than its source: tokens/s x{m.tps_ratio_b1:.2f} at batch 1, "
            f"x{m.tps_ratio_b8:.2f} at batch 8 ({m.kernel})"
        )
    # Pruned variants, and any other whose weights came out notably sparse (rounding to
    # int8 zeroes a few small weights: that is not sparsity worth a note).
    if recipe.kernel == DENSE_KERNEL or m.weight_sparsity > 0.05:
        notes.append(
            f"measured sparsity {100 * m.weight_sparsity:.1f}% of linear weights; "
            f"{DENSE_KERNEL} (weights on disk {_ratio(1.0, m.size_ratio):.2f}x the "
            f"source's bytes, tokens/s x{m.tps_ratio_b1:.2f} at batch 1, "
            f"x{m.tps_ratio_b8:.2f} at batch 8)"
        )
    stored = _stored_dtype(source)
    if stored and stored != "float32":
        notes.append(f"the source was measured in fp32; its weights on disk are {stored}")
    return replace(m, notes=tuple(notes))


def _stored_dtype(source: Path) -> str:
    """The dtype the source's config.json records ("" when none)."""
    try:
        config = json.loads((source / "config.json").read_text())
    except (OSError, ValueError):
        return ""
    return str(config.get("dtype") or config.get("torch_dtype") or "")
