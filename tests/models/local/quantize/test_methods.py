"""Each CPU method: checks, apply, reload through load_variant, generate, logits of the
reloaded variant equal to the in-memory one, cancellation."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import CPU_METHODS, VariantFactory
from optiserve.domain.errors import FailedPrecondition, InvalidRequest
from optiserve.models.local.quantize.base import (
    VARIANT_FILE,
    Cancelled,
    Progress,
    QuantSpec,
    VariantRecipe,
)
from optiserve.models.local.quantize.common import Steps, load_source
from optiserve.models.local.quantize.methods import METHODS, method_named
from optiserve.models.local.quantize.pruning import DENSE_KERNEL, linear_sparsity
from optiserve.models.local.quantize.variant_io import is_variant, load_variant

LLAMA = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 192,
    "num_attention_heads": 4,
}


def _kl(reference: torch.Tensor, other: torch.Tensor) -> float:
    log_p = reference.double().log_softmax(-1)
    log_q = other.double().log_softmax(-1)
    return float((log_p.exp() * (log_p - log_q)).sum(-1).mean())


def test_method_table_names_are_unique_and_unknown_names_list_the_allowed() -> None:
    names = [m.name for m in METHODS]
    assert len(set(names)) == len(names)
    assert set(CPU_METHODS) <= set(names)
    with pytest.raises(InvalidRequest, match="allowed: fp16, bf16, int8_dynamic"):
        method_named("int3_magic")
    for method in METHODS:
        if method.name in CPU_METHODS:
            assert method.unavailable() is None


@pytest.mark.parametrize(
    ("spec", "config", "error", "match"),
    [
        (QuantSpec("int8_dynamic", bits=4), LLAMA, InvalidRequest, "allowed: 8"),
        (QuantSpec("fp16", bits=8), LLAMA, InvalidRequest, "allowed: 16"),
        (QuantSpec("fp16", sparsity=0.5), LLAMA, InvalidRequest, "pruning methods only"),
        (QuantSpec("prune_magnitude", sparsity=1.0), LLAMA, InvalidRequest, r"outside \(0, 1\)"),
        (QuantSpec("prune_magnitude", sparsity=-0.1), LLAMA, InvalidRequest, "outside"),
        (QuantSpec("prune_2_4", sparsity=0.3), LLAMA, InvalidRequest, "2 of every 4"),
        (
            QuantSpec("prune_2_4"),
            {**LLAMA, "intermediate_size": 190},
            FailedPrecondition,
            "mlp.down_proj has 190",
        ),
        (QuantSpec("int8_dynamic"), {"model_type": "gpt2"}, FailedPrecondition, "Conv1D"),
    ],
)
def test_check_refuses_what_the_method_cannot_honour(
    spec: QuantSpec, config: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        method_named(spec.method).check(spec, config)


@pytest.mark.parametrize("method", CPU_METHODS)
def test_check_accepts_defaults(method: str) -> None:
    method_named(method).check(QuantSpec(method), LLAMA)


@pytest.mark.parametrize("source", ["tiny", "demo"])
@pytest.mark.parametrize("method", CPU_METHODS)
def test_variant_reloads_with_the_in_memory_logits_and_generates(
    method: str, source: str, sources: dict[str, Path], variant: VariantFactory
) -> None:
    out = variant(source, method)
    recipe = VariantRecipe.read(out)
    assert is_variant(out) and recipe.method == method and recipe.source == str(sources[source])
    assert {"config.json", "tokenizer.json", VARIANT_FILE} <= {p.name for p in out.iterdir()}
    impl: Any = method_named(method)
    in_memory = impl.transform(
        load_source(sources[source]), QuantSpec(method), Steps(lambda _: None, threading.Event())
    )
    reloaded = load_variant(out)
    ids = torch.arange(5, 69).unsqueeze(0)
    with torch.inference_mode():
        expected = in_memory(input_ids=ids).logits
        got = reloaded(input_ids=ids).logits
        generated = reloaded.generate(
            input_ids=ids[:, :8], max_new_tokens=6, min_new_tokens=6, do_sample=False
        )
    assert _kl(expected, got) <= 1e-6
    assert torch.equal(expected, got)
    assert generated.shape == (1, 14)


@pytest.mark.parametrize("method", ["prune_magnitude", "prune_2_4"])
def test_pruned_variants_reach_their_sparsity_and_say_zeros_save_nothing(
    method: str, variant: VariantFactory
) -> None:
    out = variant("demo", method)
    recipe = VariantRecipe.read(out)
    assert recipe.kernel == DENSE_KERNEL and "zeros save no time or space" in recipe.kernel
    assert abs(linear_sparsity(load_variant(out)) - 0.5) <= 0.01
    assert abs(recipe.params["sparsity"] - 0.5) <= 0.01


def test_magnitude_pruning_honours_another_target(demo_dir: Path, tmp_path: Path) -> None:
    spec = QuantSpec("prune_magnitude", sparsity=0.3)
    recipe = method_named("prune_magnitude").apply(
        demo_dir, tmp_path, spec, lambda _: None, threading.Event()
    )
    assert abs(linear_sparsity(load_variant(tmp_path)) - 0.3) <= 0.01
    assert recipe.params["target_sparsity"] == 0.3


def test_two_four_keeps_two_of_every_four(variant: VariantFactory) -> None:
    model = load_variant(variant("tiny", "prune_2_4"))
    weight = model.model.layers[0].mlp.down_proj.weight
    groups = (weight != 0).reshape(weight.shape[0], -1, 4).sum(-1)
    assert bool((groups == 2).all())


def test_int8_keeps_the_head_and_embedding_fp32(variant: VariantFactory) -> None:
    model = load_variant(variant("tiny", "int8_dynamic"))
    assert model.lm_head.weight.dtype == torch.float32
    assert model.model.embed_tokens.weight.dtype == torch.float32
    assert "Int8Linear" in type(model.model.layers[0].mlp.down_proj).__name__
    assert "per-channel" in VariantRecipe.read(variant("tiny", "int8_dynamic")).kernel


@pytest.mark.parametrize("method", CPU_METHODS)
def test_cancel_between_layers_raises_cancelled_and_the_output_can_be_removed(
    method: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    cancel = threading.Event()
    seen: list[Progress] = []

    def progress(p: Progress) -> None:
        seen.append(p)
        if p.step == 1 and p.phase not in ("loading", "saving"):
            cancel.set()

    out = tmp_path / "variant"
    out.mkdir()
    with pytest.raises(Cancelled):
        method_named(method).apply(tiny_model_dir, out, QuantSpec(method), progress, cancel)
    assert not (out / VARIANT_FILE).exists()
    shutil.rmtree(out)
    assert not out.exists()
    layer_steps = [p for p in seen if p.phase not in ("loading", "saving")]
    assert layer_steps[0].steps == 2 and layer_steps[-1].step == 1


def test_gpt2_casts_and_refuses_linear_methods(tiny_gpt2: Any, tmp_path: Path) -> None:
    fp16 = tmp_path / "fp16"
    fp16.mkdir()
    method_named("fp16").apply(
        tiny_gpt2.path, fp16, QuantSpec("fp16"), lambda _: None, threading.Event()
    )
    assert load_variant(fp16).transformer.h[0].attn.c_attn.weight.dtype == torch.float16
    for method in ("int8_dynamic", "prune_magnitude"):
        out = tmp_path / method
        out.mkdir()
        with pytest.raises(FailedPrecondition, match="Conv1D"):
            method_named(method).apply(
                tiny_gpt2.path, out, QuantSpec(method), lambda _: None, threading.Event()
            )
