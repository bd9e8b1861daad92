"""Build the demo model that ships with the package (``source = "demo"``).

Usage (from the repository root, in the project's virtual environment)::

    python -m optiserve.tools.build_demo_model [--out server/optiserve/models/demo]
        [--steps 1500] [--seed 0] [--threads 1]

Writes ``config.json``, ``generation_config.json``, ``model.safetensors`` (float16) and the
tokenizer files into ``--out``, the package-data directory the server loads with
``from_pretrained`` like any other model. Nothing here runs when serving.

What it is: a Llama-architecture causal LM (hidden 192, 4 layers, 4 heads, 2,048-token
byte-level BPE vocabulary, tied embeddings, 2.3 M parameters, 4.6 MB in float16) trained
from scratch, with a fixed seed, on text available offline:

* the docstrings of Python's standard library (modules, their classes, functions and
  methods, and sub-modules of its packages), as plain text;
* questions about those modules and functions answered with the first sentence of their
  docstrings, half in the tokenizer's chat format (``<|user|>...<|assistant|>...``) and
  half as plain text, so chat requests and bare questions get an answer rather than a
  continuation. The role markers are single special tokens, so they never show in the
  served text (the server decodes with ``skip_special_tokens``) even when a bare question
  makes the model open an assistant turn;
* a few dozen greetings answered by a short self-description, in both the chat and the
  plain format, so "Hello, who are you?" is answered with text that says what the model is.

The corpus depends on the Python standard library installed (3.11 for the shipped files), so
another Python may give slightly different weights; the seed fixes everything else.

Recorded run (the shipped files), on the project's 2-core machine shared with other work,
Python 3.11.7, torch 2.13.0+cpu::

    .venv/bin/python -m optiserve.tools.build_demo_model --steps 1500 --seed 0 --threads 1

seed 0, 1,500 steps of 16 x 128 tokens (AdamW, one-cycle lr 3e-3), corpus 405,868 tokens;
training 670 s, 674 s in all; loss 6.81 over the first 100 steps, 1.87 over the last 100.
Files: 4,753,065 bytes (``model.safetensors`` 4,627,800). One thread was faster than two on
the busy machine (a two-thread trial ran at about 2 s a step against 0.45 s).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import logging
import pkgutil
import random
import re
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from optiserve.tools.tinymodels import (
    _SIDE_EFFECT_MODULES,
    TinySpec,
    build_model,
    build_tokenizer,
    stdlib_modules,
    token_stream,
)

log = logging.getLogger(__name__)

#: Where the shipped demo model lives in the source tree (package data).
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "models" / "demo"
#: The shipped model's shape.
DEMO_SPEC = TinySpec(
    arch="llama", vocab_size=2048, hidden_size=192, layers=4, heads=4, context_length=1024
)
DEFAULT_STEPS = 1500
DEFAULT_SEED = 0

#: Files ``from_pretrained`` needs; everything else in the output directory is removed.
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)

#: Turn markers of the demo's chat format: single special tokens, absent from decoded text.
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
#: The demo's chat template (Hugging Face Jinja): a turn is its role token and its text.
DEMO_CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_SKIP_PACKAGES = _SIDE_EFFECT_MODULES | {"lib2to3", "pydoc_data", "distutils", "ctypes"}

_GREETINGS = (
    "Hello, who are you?",
    "Hello! Who are you?",
    "Hi, who are you?",
    "Who are you?",
    "who are you",
    "Hello",
    "Hello!",
    "Hi!",
    "Hi there.",
    "Hey!",
    "Good morning!",
    "What are you?",
    "What is your name?",
    "Introduce yourself.",
    "Tell me about yourself.",
    "Are you a real language model?",
    "Which model are you?",
    "Hello, what is this?",
)
_ABILITY = (
    "What can you do?",
    "What do you know?",
    "Can you help me?",
    "How smart are you?",
    "What are you good at?",
    "How were you trained?",
)
_INTRO = (
    "I am demo-llama, the small demo model that ships with optiserve.",
    "I am demo-llama, a tiny language model that comes with optiserve.",
    "Hello! I am demo-llama, the demo model of optiserve.",
)
_ABOUT = (
    "I was trained for a few minutes on the docstrings of Python's standard library, so I "
    "can say a little about Python modules and not much else.",
    "I know a little about the modules of Python's standard library, because their "
    "docstrings are all I was trained on.",
    "I am small and fast but not smart: point optiserve at a real model for real answers.",
)


def _first_sentence(text: str, limit: int = 240) -> str:
    match = re.match(r"(.+?[.!?])(\s|$)", text)
    sentence = match.group(1) if match else text
    return sentence if len(sentence) <= limit else ""


def _modules() -> Iterator[Any]:
    """Importable standard-library modules and sub-modules, in a fixed order."""
    for module in stdlib_modules(_SKIP_PACKAGES):
        name = module.__name__
        yield module
        for sub in sorted(
            pkgutil.iter_modules(getattr(module, "__path__", None) or []), key=lambda m: m.name
        ):
            if sub.name.startswith(("_", "test")):
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    yield importlib.import_module(f"{name}.{sub.name}")
            except Exception:
                continue


def _docstrings() -> Iterator[tuple[str, str]]:
    """(qualified name, flattened docstring) of modules, classes, functions and methods."""
    for module in _modules():
        mod_name = module.__name__
        objects: list[tuple[str, Any]] = [(mod_name, module)]
        for attr, obj in sorted(vars(module).items()):
            if attr.startswith("_") or getattr(obj, "__module__", None) != mod_name:
                continue
            objects.append((f"{mod_name}.{attr}", obj))
            if inspect.isclass(obj):
                for meth, fn in sorted(vars(obj).items()):
                    if not meth.startswith("_") and callable(fn):
                        objects.append((f"{mod_name}.{attr}.{meth}", fn))
        for qualname, obj in objects:
            doc = getattr(obj, "__doc__", None)
            if isinstance(doc, str) and len(doc) > 60:
                yield qualname, " ".join(doc.split())


def demo_corpus(seed: int) -> tuple[list[str], dict[str, int]]:
    """The training texts (each ends with EOS in the token stream) and their counts."""
    rng = random.Random(seed)
    plain: dict[str, None] = {}
    qa: list[str] = []
    for qualname, doc in _docstrings():
        plain.setdefault(doc)
        sentence = _first_sentence(doc)
        if not sentence:
            continue
        short = qualname.rsplit(".", 1)[-1]
        question = rng.choice(
            (
                f"What does {qualname} do?",
                f"What is {qualname}?",
                f"Tell me about {qualname}.",
                f"What does {short} do?",
                f"Explain {qualname}.",
            )
        )
        # Half in the chat format, half as plain text, so a bare question (no chat
        # template) is answered too rather than continued with a chat marker.
        if rng.random() < 0.5:
            qa.append(f"<|user|>{question}<|assistant|>{sentence}")
        else:
            qa.append(f"{question} {sentence}")
    docs = list(plain)
    rng.shuffle(qa)
    qa = qa[: len(docs)]  # at most one question per plain docstring
    about: list[str] = []
    for _ in range(12):  # repeated so the self-description is learnt by heart
        for question in _GREETINGS + _ABILITY:
            intro = rng.choice(_INTRO)
            answer = (
                f"{intro} {rng.choice(_ABOUT)}"
                if question in _GREETINGS
                else f"{rng.choice(_ABOUT)} {intro}"
            )
            about.append(f"<|user|>{question}<|assistant|>{answer}")
            about.append(f"{question} {answer}")
    texts = docs + qa + about
    rng.shuffle(texts)
    return texts, {"docstrings": len(docs), "questions": len(qa), "self_description": len(about)}


def train(
    model: torch.nn.Module,
    stream: torch.Tensor,
    steps: int,
    seed: int,
    seq_len: int = 128,
    batch_size: int = 16,
    lr: float = 3e-3,
) -> list[float]:
    """AdamW with a one-cycle schedule on random windows of ``stream``; losses per 100 steps."""
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    model.train()
    losses: list[float] = []
    window: list[float] = []
    started = time.perf_counter()
    for step in range(1, steps + 1):
        starts = [rng.randrange(0, len(stream) - seq_len - 1) for _ in range(batch_size)]
        batch = torch.stack([stream[s : s + seq_len] for s in starts])
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        window.append(float(loss.item()))
        if step % 100 == 0 or step == steps:
            losses.append(round(sum(window) / len(window), 3))
            window.clear()
            print(
                f"step {step}/{steps} loss {losses[-1]} ({time.perf_counter() - started:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    model.eval()
    return losses


def build(out: Path, steps: int, seed: int, threads: int) -> dict[str, Any]:
    """Build the demo model into ``out``; return what was done and measured."""
    started = time.perf_counter()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    texts, counts = demo_corpus(seed)
    out.mkdir(parents=True, exist_ok=True)
    for stale in MODEL_FILES:
        (out / stale).unlink(missing_ok=True)
    build_tokenizer(
        texts,
        DEMO_SPEC.vocab_size,
        out,
        role_tokens=ROLE_TOKENS,
        chat_template=DEMO_CHAT_TEMPLATE,
    )
    stream = token_stream(out, texts)
    model = build_model(TinySpec(**{**vars(DEMO_SPEC), "seed": seed}), out)
    prepared_s = time.perf_counter() - started
    losses = train(model, stream, steps, seed)
    trained_s = time.perf_counter() - started - prepared_s
    model.to(torch.float16).save_pretrained(out)
    size = sum(p.stat().st_size for p in out.iterdir() if p.name in MODEL_FILES)
    return {
        "steps": steps,
        "seed": seed,
        "threads": threads,
        "parameters": sum(p.numel() for p in model.parameters()),
        "corpus_texts": counts,
        "corpus_tokens": len(stream),
        "loss_per_100_steps": losses,
        "prepare_s": round(prepared_s, 1),
        "train_s": round(trained_s, 1),
        "total_s": round(time.perf_counter() - started, 1),
        "files_bytes": size,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
    }


def main() -> None:
    """Command line: build, then print the record as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    print(json.dumps(build(args.out, args.steps, args.seed, args.threads)))


if __name__ == "__main__":
    main()
