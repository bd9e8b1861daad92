"""Domain types of the Quantize RPC: the request, its progress and its measured report."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class QuantizeRequest:
    """Build a variant of a local model with a method (already a known method name)."""

    model: str
    method: str
    bits: int = 0
    group_size: int = 0
    sparsity: float = 0.0
    calibration_texts: tuple[str, ...] = ()
    #: Name of the variant ("" = "<model>-<method>[-<bits>]").
    variant_name: str = ""
    #: Register and serve the variant once it is built and measured.
    serve: bool = False
    #: The fidelity figures' text ("" = a built-in one).
    evaluation_text: str = ""


@dataclass(frozen=True)
class QuantizeProgress:
    """Where the job is (see ``Progress`` in the proto)."""

    stage: str
    step: int
    steps: int
    elapsed_s: float
    message: str = ""

    @property
    def fraction(self) -> float:
        """Done fraction of this stage, in [0, 1]."""
        return min(1.0, self.step / self.steps) if self.steps > 0 else 0.0


@dataclass(frozen=True)
class QuantizeReport:
    """What the variant measured against its source, in one run (see the proto)."""

    variant_name: str
    method: str
    bits: int
    kernel: str
    path: str
    size_bytes_before: int
    size_bytes_after: int
    load_s_before: float
    load_s_after: float
    tokens_per_s_before: float
    tokens_per_s_after: float
    tokens_per_s_b8_before: float
    tokens_per_s_b8_after: float
    time_to_first_token_ms_before: float
    time_to_first_token_ms_after: float
    kl_divergence: float
    token_agreement: float
    perplexity_before: float
    perplexity_after: float
    evaluation_tokens: int
    duration_s: float
    serving: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)
    #: Measured fraction of zero weights in the variant's decoder-layer linear layers.
    weight_sparsity: float = 0.0
    #: The embedder's report: mean and lowest cosine of the variant's embeddings to the
    #: fp32 ones, over ``embedding_sentences`` fixed sentences (0 for language models).
    embedding_cosine_mean: float = 0.0
    embedding_cosine_min: float = 0.0
    embedding_sentences: int = 0

    @property
    def size_ratio(self) -> float:
        """Bytes before over bytes after."""
        return self.size_bytes_before / self.size_bytes_after if self.size_bytes_after else 0.0

    @property
    def perplexity_delta_pct(self) -> float:
        """Perplexity change of the variant in percent of the source's (0 when unmeasured)."""
        if not self.perplexity_before:
            return 0.0
        return 100.0 * (self.perplexity_after / self.perplexity_before - 1.0)

    @property
    def slower_than_source(self) -> bool:
        """True when the variant generates slower at batch 1 or batch 8."""
        return (
            self.tokens_per_s_after < self.tokens_per_s_before
            or self.tokens_per_s_b8_after < self.tokens_per_s_b8_before
        )
