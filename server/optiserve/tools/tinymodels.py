"""Small causal LMs built on this machine, with no model hub.

The test fixtures and the benchmarks build their models here, and
:mod:`optiserve.tools.build_demo_model` builds the shipped demo model from these parts: a
byte-level BPE tokenizer trained on local text (the docstrings of Python's standard
library), a tiny Llama or GPT-2 from a config, optionally trained for a few hundred steps so
its output is not noise. Everything is written with ``save_pretrained`` and loaded back
through the same ``from_pretrained`` code that loads real models.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import random
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

log = logging.getLogger(__name__)

#: A chat template in the Hugging Face (Jinja) format, so chat requests work on tiny models.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]


@dataclass(frozen=True)
class TinySpec:
    """Shape of a tiny model."""

    arch: str = "llama"  # "llama" or "gpt2"
    vocab_size: int = 2048
    hidden_size: int = 128
    layers: int = 2
    heads: int = 4
    context_length: int = 512
    seed: int = 0


#: Standard-library modules whose import does something (opens a browser, prints, needs a
#: display) and so are never imported for their docstrings.
_SIDE_EFFECT_MODULES = frozenset(
    {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "ensurepip", "venv"}
)


def stdlib_modules(skip: frozenset[str] = _SIDE_EFFECT_MODULES) -> Iterator[ModuleType]:
    """The importable top-level standard-library modules, by name, except ``skip`` and
    private or test modules (a module that fails to import here is skipped)."""
    names = sorted(
        m.name
        for m in pkgutil.iter_modules()
        if m.name in sys.stdlib_module_names
        and m.name not in skip
        and not m.name.startswith(("_", "test"))
    )
    for name in names:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
        except Exception:
            continue
        yield module


def local_corpus(max_chars: int = 2_000_000) -> list[str]:
    """English text available offline: docstrings of the Python standard library."""
    texts: list[str] = []
    total = 0
    for module in stdlib_modules():
        for obj in [module, *vars(module).values()]:
            doc = getattr(obj, "__doc__", None)
            if isinstance(doc, str) and len(doc) > 80:
                texts.append(" ".join(doc.split()))
                total += len(texts[-1])
        if total >= max_chars:
            break
    return sorted(set(texts))


def build_tokenizer(
    corpus: list[str],
    vocab_size: int,
    path: Path,
    *,
    role_tokens: tuple[str, ...] = (),
    chat_template: str = CHAT_TEMPLATE,
) -> None:
    """Train a byte-level BPE tokenizer on ``corpus`` and save it to ``path``.

    ``role_tokens`` become single special tokens (kept whole, left out of decoded text),
    for a ``chat_template`` that marks turns with them.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[*SPECIAL_TOKENS, *role_tokens],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    fast.chat_template = chat_template
    fast.model_max_length = 1 << 30
    fast.save_pretrained(path)


def build_model(spec: TinySpec, tokenizer_path: Path) -> Any:
    """A randomly initialised causal LM of the given spec, matched to the tokenizer."""
    from transformers import (
        AutoTokenizer,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    tok = AutoTokenizer.from_pretrained(tokenizer_path)
    torch.manual_seed(spec.seed)
    ids = {
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    if spec.arch == "llama":
        return LlamaForCausalLM(
            LlamaConfig(
                vocab_size=len(tok),
                hidden_size=spec.hidden_size,
                intermediate_size=spec.hidden_size * 3,
                num_hidden_layers=spec.layers,
                num_attention_heads=spec.heads,
                num_key_value_heads=spec.heads,
                max_position_embeddings=spec.context_length,
                tie_word_embeddings=True,
                **ids,
            )
        )
    if spec.arch == "gpt2":
        return GPT2LMHeadModel(
            GPT2Config(
                vocab_size=len(tok),
                n_embd=spec.hidden_size,
                n_layer=spec.layers,
                n_head=spec.heads,
                n_positions=spec.context_length,
                **ids,
            )
        )
    raise ValueError(f"unknown arch {spec.arch!r}; allowed: llama, gpt2")


def token_stream(tokenizer_path: Path, texts: list[str]) -> torch.Tensor:
    """The texts tokenized with the tokenizer saved at ``tokenizer_path``, each followed by
    its end-of-sequence id, as one long tensor of training tokens."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_path)
    ids: list[int] = []
    for text in texts:
        ids.extend(tok(text)["input_ids"])
        ids.append(tok.eos_token_id)
    return torch.tensor(ids, dtype=torch.long)


def train_briefly(
    model: torch.nn.Module,
    tokenizer_path: Path,
    corpus: list[str],
    steps: int,
    seq_len: int = 128,
    batch_size: int = 16,
    lr: float = 3e-3,
    seed: int = 0,
) -> float:
    """Train ``model`` on ``corpus`` for ``steps`` steps; return the last loss."""
    data = token_stream(tokenizer_path, corpus)
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    model.train()
    loss_value = float("nan")
    for _ in range(steps):
        starts = [rng.randrange(0, len(data) - seq_len - 1) for _ in range(batch_size)]
        batch = torch.stack([data[s : s + seq_len] for s in starts])
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        loss_value = float(loss.item())
    model.eval()
    return loss_value


def build_tiny_model(path: Path, spec: TinySpec = TinySpec(), train_steps: int = 0) -> Path:
    """Build (tokenizer + model) into ``path``; return it. Idempotent once complete."""
    path = Path(path)
    done = path / ".complete"
    if done.exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    corpus = local_corpus()
    build_tokenizer(corpus, spec.vocab_size, path)
    model = build_model(spec, path)
    if train_steps:
        loss = train_briefly(model, path, corpus, train_steps, seed=spec.seed)
        log.info("trained tiny model", extra={"steps": train_steps, "loss": round(loss, 3)})
    model.save_pretrained(path)
    done.write_text("ok\n")
    return path
