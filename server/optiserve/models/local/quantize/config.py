"""Settings of the Quantize verb (``[quantize]`` in the configuration file)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QuantizeConfig:
    """Where variants go, and whether the verb is served."""

    #: Serve the Quantize RPC (False: it answers FAILED_PRECONDITION).
    enabled: bool = True
    #: Directory of the variants ("" = models/ in the data directory). Variants found
    #: there at start are served under their directory's name.
    models_dir: str = ""
