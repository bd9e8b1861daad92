"""gptq (transformers' GPTQConfig -> optimum -> gptqmodel): checks, apply, reload from disk,
generate, logits of the reloaded variant equal to the in-memory one. The round trips are
skipped where gptqmodel/optimum are not installed (pip install 'optiserve[quantize]')."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from optiserve.domain.errors import FailedPrecondition, InvalidRequest
from optiserve.models.local.quantize.base import Cancelled, Progress, QuantSpec, VariantRecipe
from optiserve.models.local.quantize.common import Steps, load_source
from optiserve.models.local.quantize.gptq import GPTQ, gptq_problem
from optiserve.tools.tinymodels import TinySpec, build_tiny_model

#: A config whose layer sizes fit the 4-bit CPU kernel with the default group size 128.
LLAMA_128 = {
    "model_type": "llama",
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_attention_heads": 4,
    "head_dim": 32,
}
SKIP_REASON = "gptqmodel/optimum are not installed (pip install 'optiserve[quantize]')"


def _kl(reference: torch.Tensor, other: torch.Tensor) -> float:
    log_p = reference.double().log_softmax(-1)
    log_q = other.double().log_softmax(-1)
    return float((log_p.exp() * (log_p - log_q)).sum(-1).mean())


def _require_packages() -> None:
    pytest.importorskip("gptqmodel", reason=SKIP_REASON)
    pytest.importorskip("optimum", reason=SKIP_REASON)
    assert GPTQ.unavailable() is None


@pytest.fixture(scope="module")
def llama128(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama whose linears take 128 or 384 inputs (multiples of 128)."""
    return build_tiny_model(
        tmp_path_factory.mktemp("gptq-src") / "tiny-llama-128",
        TinySpec(arch="llama", hidden_size=128, layers=2, heads=4),
    )


@pytest.mark.parametrize(
    ("spec", "config", "error", "match"),
    [
        (QuantSpec("gptq", bits=5), LLAMA_128, InvalidRequest, "allowed: 4, 8, 3, 2"),
        (QuantSpec("gptq", sparsity=0.5), LLAMA_128, InvalidRequest, "pruning methods only"),
        (QuantSpec("gptq", group_size=256), LLAMA_128, InvalidRequest, "16, 32, 64, 128"),
        (QuantSpec("gptq", group_size=-1), LLAMA_128, InvalidRequest, "not -1"),
        (
            QuantSpec("gptq"),
            {**LLAMA_128, "hidden_size": 64, "intermediate_size": 192},
            FailedPrecondition,
            r"multiple of 128, and q/k/v_proj, gate/up_proj \(hidden_size\) is 64",
        ),
        (
            QuantSpec("gptq", bits=8),
            {**LLAMA_128, "intermediate_size": 192},
            FailedPrecondition,
            r"down_proj \(intermediate_size\) is 192",
        ),
    ],
)
def test_check_refuses(
    spec: QuantSpec, config: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        GPTQ.check(spec, config)


def test_check_accepts_fitting_shapes() -> None:
    GPTQ.check(QuantSpec("gptq"), LLAMA_128)
    GPTQ.check(QuantSpec("gptq", bits=8, group_size=64), LLAMA_128)
    # hidden 64 fits once the group size divides it.
    GPTQ.check(
        QuantSpec("gptq", bits=4, group_size=64),
        {**LLAMA_128, "hidden_size": 64, "intermediate_size": 192, "head_dim": 16},
    )


def test_unavailable_names_the_packages_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    gptq_problem.cache_clear()
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gptqmodel" else real(name)
    )
    try:
        reason = GPTQ.unavailable()
    finally:
        monkeypatch.undo()
        gptq_problem.cache_clear()
    assert reason is not None
    assert "gptqmodel==7.6.0" in reason
    assert "optiserve[quantize]" in reason
    assert "gptqmodel is not installed" in reason


def test_load_refuses_another_device(tmp_path: Path) -> None:
    recipe = VariantRecipe("gptq", 4, "src", "k", "safetensors")
    with pytest.raises(FailedPrecondition, match="CPU kernels only"):
        GPTQ.load(tmp_path, recipe, None, "cuda")


def _round_trip(source: Path, out: Path, spec: QuantSpec) -> tuple[VariantRecipe, float]:
    """Quantize, reload from disk, generate; the reloaded logits must match the in-memory
    variant's. Returns the recipe and the KL of the variant against the fp32 source."""
    seen: list[Progress] = []
    recipe = GPTQ.apply(source, out, spec, seen.append, threading.Event())
    assert recipe.storage == "safetensors"
    assert VariantRecipe.read(out) == recipe
    assert (out / "model.safetensors").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["bits"] == recipe.bits
    assert {p.phase for p in seen} >= {"loading", "quantizing", "packing", "saving"}
    blocks = [p for p in seen if p.phase == "quantizing" and p.steps == 2]
    assert blocks[0].step == 0 and blocks[-1].step == 1  # layer 1 and 2 of 2
    assert any("down_proj in block 2/2" in p.message for p in seen)
    assert not Path("logs").exists()  # the tests run in an empty working directory

    in_memory, _, _ = GPTQ.quantize(source, spec, Steps(lambda _: None, threading.Event()))
    reloaded = GPTQ.load(out, recipe, None, "cpu")
    ids = torch.tensor([[1, 5, 9, 42, 7, 3, 11, 100]])
    with torch.no_grad():
        a = in_memory(ids).logits
        b = reloaded(ids).logits
        fp32 = load_source(source)(ids).logits
    assert _kl(a, b) <= 1e-6
    tokens = reloaded.generate(ids, max_new_tokens=4, do_sample=False)
    assert tokens.shape == (1, ids.shape[1] + 4)
    return recipe, _kl(fp32, b)


@pytest.fixture
def in_empty_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory (gptqmodel must not write ``logs/`` into it)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


@pytest.mark.usefixtures("in_empty_dir")
def test_gptq_4bit_round_trip(llama128: Path, tmp_path: Path) -> None:
    _require_packages()
    recipe, kl = _round_trip(llama128, tmp_path, QuantSpec("gptq"))
    assert recipe.bits == 4
    assert recipe.params["group_size"] == 128
    assert "TorchAtenLinear" in recipe.kernel
    assert 0 <= kl < 0.05  # random tiny weights: sane, not a quality claim
    source_bytes = (llama128 / "model.safetensors").stat().st_size
    assert (tmp_path / "model.safetensors").stat().st_size < source_bytes


@pytest.mark.usefixtures("in_empty_dir")
def test_gptq_8bit_round_trip(llama128: Path, tmp_path: Path) -> None:
    _require_packages()
    recipe, kl = _round_trip(llama128, tmp_path, QuantSpec("gptq", bits=8, group_size=64))
    assert recipe.bits == 8
    assert "TorchLinear" in recipe.kernel
    assert 0 <= kl < 0.01


@pytest.mark.usefixtures("in_empty_dir")
def test_gptq_stops_between_layers_on_cancel(llama128: Path, tmp_path: Path) -> None:
    _require_packages()
    cancel = threading.Event()

    def progress(p: Progress) -> None:
        if p.phase == "quantizing" and p.steps == 2:  # inside optimum's layer loop
            cancel.set()

    with pytest.raises(Cancelled):
        GPTQ.apply(llama128, tmp_path, QuantSpec("gptq"), progress, cancel)
    assert not (tmp_path / "model.safetensors").exists()
