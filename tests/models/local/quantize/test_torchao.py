"""int8_weight_only (torchao): checks, apply, reload from disk, generate, logits of the
reloaded variant equal to the in-memory one; skipped where torchao is not installed."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch

from optiserve.domain.errors import FailedPrecondition, InvalidRequest
from optiserve.models.local.quantize.base import Cancelled, Progress, QuantSpec, VariantRecipe
from optiserve.models.local.quantize.common import Steps, load_source
from optiserve.models.local.quantize.torchao_int8 import (
    INT8_WEIGHT_ONLY,
    WEIGHTS_FILE,
    torchao_problem,
)

LLAMA = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 192}


def _kl(reference: torch.Tensor, other: torch.Tensor) -> float:
    log_p = reference.double().log_softmax(-1)
    log_q = other.double().log_softmax(-1)
    return float((log_p.exp() * (log_p - log_q)).sum(-1).mean())


def test_checks_refuse_bits_sparsity_and_conv1d() -> None:
    INT8_WEIGHT_ONLY.check(QuantSpec("int8_weight_only"), LLAMA)
    INT8_WEIGHT_ONLY.check(QuantSpec("int8_weight_only", bits=8), LLAMA)
    with pytest.raises(InvalidRequest, match="allowed: 8"):
        INT8_WEIGHT_ONLY.check(QuantSpec("int8_weight_only", bits=4), LLAMA)
    with pytest.raises(InvalidRequest, match="pruning methods only"):
        INT8_WEIGHT_ONLY.check(QuantSpec("int8_weight_only", sparsity=0.5), LLAMA)
    with pytest.raises(FailedPrecondition, match="Conv1D"):
        INT8_WEIGHT_ONLY.check(QuantSpec("int8_weight_only"), {"model_type": "gpt2"})


def test_unavailable_names_the_package_when_torchao_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    torchao_problem.cache_clear()
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torchao" else real(name)
    )
    try:
        reason = INT8_WEIGHT_ONLY.unavailable()
    finally:
        monkeypatch.undo()
        torchao_problem.cache_clear()
    assert reason is not None
    assert "torchao==0.18.0" in reason
    assert "optiserve[quantize]" in reason


def test_int8_weight_only_round_trip(tiny_model_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip(
        "torchao", reason="torchao is not installed (pip install 'optiserve[quantize]')"
    )
    assert INT8_WEIGHT_ONLY.unavailable() is None
    seen: list[Progress] = []
    out = tmp_path / "variant"
    out.mkdir()
    spec = QuantSpec("int8_weight_only")
    recipe = INT8_WEIGHT_ONLY.apply(tiny_model_dir, out, spec, seen.append, threading.Event())

    assert recipe.storage == "state_dict"
    assert "torchao" in recipe.kernel
    assert VariantRecipe.read(out) == recipe
    assert (out / WEIGHTS_FILE).is_file()
    assert (out / "config.json").is_file()
    assert {p.phase for p in seen} >= {"loading", "quantizing", "saving"}
    quantizing = [p for p in seen if p.phase == "quantizing"]
    assert quantizing[-1].step == quantizing[-1].steps == 2  # the tiny model's 2 layers

    # The variant's weights take less space than the fp32 source's.
    source_bytes = sum(p.stat().st_size for p in tiny_model_dir.glob("*.safetensors"))
    assert (out / WEIGHTS_FILE).stat().st_size < source_bytes
    assert recipe.params["quantized_layers"] == 14  # 7 linears in each of 2 layers

    in_memory = INT8_WEIGHT_ONLY.transform(load_source(tiny_model_dir), spec, _silent_steps())
    reloaded = INT8_WEIGHT_ONLY.load(out, recipe, None, "cpu")
    weight = reloaded.get_submodule("model.layers.0.mlp.down_proj").weight
    assert type(weight).__name__ == "Int8Tensor"
    ids = torch.tensor([[1, 5, 9, 42, 7, 3, 11, 100]])
    with torch.no_grad():
        a = in_memory(ids).logits
        b = reloaded(ids).logits
        fp32 = load_source(tiny_model_dir)(ids).logits
    assert _kl(a, b) <= 1e-6
    assert _kl(fp32, b) < 0.05
    tokens = reloaded.generate(ids, max_new_tokens=4, do_sample=False)
    assert tokens.shape == (1, ids.shape[1] + 4)


def test_load_refuses_another_device(tmp_path: Path) -> None:
    recipe = VariantRecipe("int8_weight_only", 8, "src", "k", "state_dict")
    (tmp_path / "config.json").write_text(json.dumps(LLAMA))
    with pytest.raises(FailedPrecondition, match="CPU only"):
        INT8_WEIGHT_ONLY.load(tmp_path, recipe, None, "cuda")


def _silent_steps() -> Steps:
    return Steps(lambda _: None, threading.Event())


def test_int8_weight_only_stops_on_cancel(tiny_model_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip(
        "torchao", reason="torchao is not installed (pip install 'optiserve[quantize]')"
    )
    cancel = threading.Event()

    def progress(p: Progress) -> None:
        if p.phase == "quantizing":
            cancel.set()

    with pytest.raises(Cancelled):
        INT8_WEIGHT_ONLY.apply(
            tiny_model_dir, tmp_path, QuantSpec("int8_weight_only"), progress, cancel
        )
    assert not (tmp_path / WEIGHTS_FILE).exists()
