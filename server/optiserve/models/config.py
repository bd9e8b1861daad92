"""Settings of one servable model (``[[models]]`` in the configuration file)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from optiserve.domain.settings import at_least, check, require

#: ``source`` value that selects the built-in demo model.
DEMO_SOURCE = "demo"

#: Where a model runs: "local" (Hugging Face on this host).
Provider = Literal["local"]
#: Weight and activation dtype of a local model.
Dtype = Literal["float32", "bfloat16", "float16"]
_DEVICE = re.compile(r"(auto|cpu|mps|xpu|cuda)(:\d+)?")


@dataclass(frozen=True)
class ModelConfig:
    """One servable model."""

    name: str
    #: Hugging Face hub id, local directory, or "demo" for the built-in demo model.
    source: str
    #: "local" (Hugging Face on this host).
    provider: Provider = "local"
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
    #: Context length override (0 = read from the model config).
    context_length: int = 0
    description: str = ""
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        require(bool(self.name.strip()), "name", "must not be empty")
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
            },
        )
        require(
            self.default_max_new_tokens <= self.max_new_tokens_cap,
            "default_max_new_tokens",
            f"must be <= max_new_tokens_cap ({self.max_new_tokens_cap}), "
            f"got {self.default_max_new_tokens}",
        )
