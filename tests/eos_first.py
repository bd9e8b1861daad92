"""A copy of the tiny test model whose end-of-sequence ids include the greedy first token
of :data:`PROMPT`, so its answer to that prompt is empty (EOS after 0 tokens) unless
min_new_tokens holds the end back: a deterministic early EOS for end-to-end tests."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch

from optiserve.app import ServerThread
from optiserve.config import Config

PROMPT = "Return the number of items in a container"


def build_eos_first_model(source: Path, dest: Path, prompt: str = PROMPT) -> Path:
    """Copy the model in ``source`` to ``dest`` with the greedy first token of ``prompt``
    (encoded as the server encodes a prompt) added to its generation config's EOS ids."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (dest / ".eos-first").exists():
        return dest
    shutil.copytree(source, dest, dirs_exist_ok=True)
    tok = AutoTokenizer.from_pretrained(dest)
    model = AutoModelForCausalLM.from_pretrained(dest).eval()
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([tok(prompt)["input_ids"]])).logits
    first = int(logits[0, -1].argmax())
    config = model.generation_config
    config.eos_token_id = sorted({int(tok.eos_token_id), first})
    config.save_pretrained(dest)
    (dest / ".eos-first").write_text(f"{first}\n")
    return dest


@contextmanager
def serving(config: Config, model_dir: Path) -> Iterator[ServerThread]:
    """A real server for ``config`` with its (only) model loaded from ``model_dir``."""
    model = replace(config.models[0], source=str(model_dir))
    thread = ServerThread(replace(config, models=(model,)))
    thread.start()
    try:
        yield thread
    finally:
        thread.stop()
