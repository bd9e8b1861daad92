"""Settings of one servable model (``[[models]]`` in the configuration file)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from optiserve.domain.pricing import Prices
from optiserve.domain.settings import at_least, between, check, require
from optiserve.domain.types import Tier
from optiserve.domain.validation import MAX_NAME_CHARS

#: ``source`` value that selects the built-in demo model.
DEMO_SOURCE = "demo"

#: The provider value of a model that runs on this host.
LOCAL_PROVIDER = "local"
#: A model's tier (``""`` = "local" for local models, "balanced" for remote ones).
TierName = Literal["", "local", "cheap", "balanced", "premium"]
#: Weight and activation dtype of a local model.
Dtype = Literal["float32", "bfloat16", "float16"]
_DEVICE = re.compile(r"(auto|cpu|mps|xpu|cuda)(:\d+)?")


@dataclass(frozen=True)
class ModelConfig:
    """One servable model."""

    name: str
    #: Local: Hugging Face hub id, local directory, or "demo" for the built-in demo model.
    #: Remote: the provider's model id (e.g. "gpt-4o-mini", "claude-haiku-4-5").
    source: str
    #: "local" (Hugging Face on this host) or the name of a [[providers]] entry.
    provider: str = LOCAL_PROVIDER
    #: US dollars per million tokens: input, output, provider prompt-cache reads and
    #: writes (5-minute and 1-hour lifetimes). A local model's cost per token (default 0).
    input_price_per_mtok: float = 0.0
    output_price_per_mtok: float = 0.0
    cache_read_price_per_mtok: float = 0.0
    cache_write_5m_price_per_mtok: float = 0.0
    cache_write_1h_price_per_mtok: float = 0.0
    #: "local", "cheap", "balanced" or "premium" ("" = local for local models, balanced
    #: for remote ones): what routes pick by.
    tier: TierName = ""
    #: Quality score in [0, 1]: a request's min_quality filters on it.
    quality: float = 0.5
    #: "float32", "bfloat16" or "float16".
    dtype: Dtype = "float32"
    #: "auto" (cuda when present), "cpu" or "cuda[:n]".
    device: str = "auto"
    #: max_new_tokens when the request leaves it unset.
    default_max_new_tokens: int = 64
    #: Largest max_new_tokens a request may ask for.
    max_new_tokens_cap: int = 1024
    #: min_new_tokens when the request leaves it unset (at most the request's
    #: max_new_tokens): end-of-sequence tokens cannot end the answer before that many.
    default_min_new_tokens: int = 0
    #: Context length (local: 0 = read from the model config; remote: required).
    context_length: int = 0
    description: str = ""
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        require(bool(self.name.strip()), "name", "must not be empty")
        require(
            len(self.name) <= MAX_NAME_CHARS,
            "name",
            f"must be at most {MAX_NAME_CHARS} characters (requests name it)",
        )
        require(bool(self.source.strip()), "source", "must not be empty")
        require(
            _DEVICE.fullmatch(self.device) is not None,
            "device",
            f"must be auto, cpu, cuda, cuda:N, mps or xpu, got {self.device!r}",
        )
        check(
            self,
            {
                "default_max_new_tokens": at_least(1),
                "max_new_tokens_cap": at_least(1),
                "default_min_new_tokens": at_least(0),
                "context_length": at_least(0),
                "input_price_per_mtok": at_least(0),
                "output_price_per_mtok": at_least(0),
                "cache_read_price_per_mtok": at_least(0),
                "cache_write_5m_price_per_mtok": at_least(0),
                "cache_write_1h_price_per_mtok": at_least(0),
                "quality": between(0, 1),
            },
        )
        require(
            self.default_max_new_tokens <= self.max_new_tokens_cap,
            "default_max_new_tokens",
            f"must be <= max_new_tokens_cap ({self.max_new_tokens_cap}), "
            f"got {self.default_max_new_tokens}",
        )

    @property
    def local(self) -> bool:
        """True when the model runs on this host."""
        return self.provider == LOCAL_PROVIDER

    @property
    def prices(self) -> Prices:
        """The prices as exact decimals (from the configured text of each number)."""
        return Prices(
            input=Decimal(str(self.input_price_per_mtok)),
            output=Decimal(str(self.output_price_per_mtok)),
            cache_read=Decimal(str(self.cache_read_price_per_mtok)),
            cache_write_5m=Decimal(str(self.cache_write_5m_price_per_mtok)),
            cache_write_1h=Decimal(str(self.cache_write_1h_price_per_mtok)),
        )

    @property
    def tier_value(self) -> Tier:
        """The tier, its default filled in."""
        if self.tier:
            return Tier(self.tier)
        return Tier.LOCAL if self.local else Tier.BALANCED
