"""Fixtures of the local-model tests: tiny Llama and GPT-2 models (see tiny_lm.TinyLM)."""

from __future__ import annotations

import pytest
import torch
from tiny_lm import TinyLM

from optiserve.tools.tinymodels import TinySpec, build_tiny_model

torch.set_num_threads(1)


def _build(factory: pytest.TempPathFactory, arch: str) -> TinyLM:
    spec = TinySpec(arch=arch, hidden_size=64, layers=2, heads=4, context_length=512)
    return TinyLM(build_tiny_model(factory.mktemp("models") / f"tiny-{arch}", spec))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> TinyLM:
    """A tiny Llama (random weights, local BPE tokenizer)."""
    return _build(tmp_path_factory, "llama")


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> TinyLM:
    """A tiny GPT-2 (random weights, local BPE tokenizer)."""
    return _build(tmp_path_factory, "gpt2")


@pytest.fixture(scope="session", params=["llama", "gpt2"])
def tiny_lm(request: pytest.FixtureRequest) -> TinyLM:
    """Each tiny architecture in turn."""
    lm: TinyLM = request.getfixturevalue(f"tiny_{request.param}")
    return lm
