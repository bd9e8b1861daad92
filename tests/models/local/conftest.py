"""Fixtures of the local-model tests: tiny Llama and GPT-2 models (see tiny_lm.TinyLM)."""

from __future__ import annotations

import shutil
from pathlib import Path

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


#: The tiny models' chat template, with every turn ended by the special token <|im_end|>.
CHAT_TEMPLATE_WITH_END = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="session")
def tiny_chat_dir(tiny_llama: TinyLM, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama with two more special tokens, <|im_end|> (which its chat template
    emits after every turn) and <|eot_id|> (which it does not); neither is an EOS id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dest = tmp_path_factory.mktemp("models") / "tiny-chat"
    shutil.copytree(tiny_llama.path, dest)
    tokenizer = AutoTokenizer.from_pretrained(dest)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_end|>", "<|eot_id|>"]})
    tokenizer.chat_template = CHAT_TEMPLATE_WITH_END
    tokenizer.save_pretrained(dest)
    model = AutoModelForCausalLM.from_pretrained(dest)
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(dest)
    return dest
