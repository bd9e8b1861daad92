"""Settings of one servable model (``[[models]]`` in the configuration file)."""

from __future__ import annotations

from dataclasses import dataclass

#: ``source`` value that selects the built-in demo model.
DEMO_SOURCE = "demo"


@dataclass(frozen=True)
class ModelConfig:
    """One servable model."""

    name: str
    #: Hugging Face hub id, local directory, or "demo" for the built-in demo model.
    source: str
    #: "local" (Hugging Face on this host).
    provider: str = "local"
    #: "float32", "bfloat16" or "float16".
    dtype: str = "float32"
    #: "auto" (cuda when present), "cpu" or "cuda[:n]".
    device: str = "auto"
    #: max_new_tokens when the request leaves it unset.
    default_max_new_tokens: int = 64
    #: Largest max_new_tokens a request may ask for.
    max_new_tokens_cap: int = 1024
    #: Context length override (0 = read from the model config).
    context_length: int = 0
    description: str = ""
    trust_remote_code: bool = False
