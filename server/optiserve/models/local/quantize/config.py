"""Settings of the Quantize verb (``[quantize]`` in the configuration file)."""

from __future__ import annotations

from dataclasses import dataclass

from optiserve.domain.settings import at_least, check


@dataclass(frozen=True)
class QuantizeConfig:
    """Where variants go, how many jobs may wait, and how much each is measured."""

    #: Serve the Quantize RPC (False: it answers FAILED_PRECONDITION).
    enabled: bool = True
    #: Directory of the variants ("" = models/ in the data directory). Variants found
    #: there at start are served under their directory's name.
    models_dir: str = ""
    #: Jobs that may wait while one runs (one runs at a time); more get RESOURCE_EXHAUSTED.
    max_waiting: int = 1
    #: Bytes that must stay free on the models directory's disk besides the variant's room
    #: (twice the source's weight bytes); less free space: RESOURCE_EXHAUSTED before starting.
    min_free_bytes: int = 256 * 1024 * 1024
    #: New tokens per timed generation, and timed rounds per model and batch size, of the
    #: report's speed figures (larger: steadier figures, longer jobs).
    measure_new_tokens: int = 32
    measure_rounds: int = 3
    #: Longest the measurement of one variant (in its fresh process) may take, in seconds.
    measure_timeout_s: float = 3600.0

    def __post_init__(self) -> None:
        check(
            self,
            {
                "max_waiting": at_least(0),
                "min_free_bytes": at_least(0),
                "measure_new_tokens": at_least(1),
                "measure_rounds": at_least(1),
                "measure_timeout_s": at_least(1),
            },
        )
