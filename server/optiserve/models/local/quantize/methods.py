"""The table of quantization and pruning methods. Adding a method is one import and one
entry in :data:`METHODS`."""

from __future__ import annotations

from optiserve.domain.errors import InvalidRequest
from optiserve.models.local.quantize.base import Method
from optiserve.models.local.quantize.casting import BF16, FP16
from optiserve.models.local.quantize.gptq import GPTQ
from optiserve.models.local.quantize.int8_dynamic import INT8_DYNAMIC
from optiserve.models.local.quantize.pruning import PRUNE_2_4, PRUNE_MAGNITUDE
from optiserve.models.local.quantize.torchao_int8 import INT8_WEIGHT_ONLY

#: Every method this build offers, in the order ListModels and errors show them.
METHODS: tuple[Method, ...] = (
    FP16,
    BF16,
    INT8_DYNAMIC,
    INT8_WEIGHT_ONLY,
    GPTQ,
    PRUNE_MAGNITUDE,
    PRUNE_2_4,
)


def method_named(name: str) -> Method:
    """The method called ``name`` (InvalidRequest listing the allowed names otherwise)."""
    for method in METHODS:
        if method.name == name:
            return method
    allowed = ", ".join(m.name for m in METHODS)
    raise InvalidRequest(f"unknown quantization method {name!r}; allowed: {allowed}")
