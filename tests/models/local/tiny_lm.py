"""A loaded tiny model and the greedy reference loop the engine tests compare against."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


class TinyLM:
    """A loaded tiny model and its tokenizer."""

    def __init__(self, path: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.path = path
        self.model: Any = AutoModelForCausalLM.from_pretrained(path).eval()
        self.tokenizer: Any = AutoTokenizer.from_pretrained(path)
        self.eos = {int(self.tokenizer.eos_token_id)}

    @torch.inference_mode()
    def reference(self, prompt: Sequence[int], max_new_tokens: int) -> list[int]:
        """Greedy tokens of ``prompt`` generated alone: prefill + KV-cache decode, argmax."""
        from transformers import DynamicCache

        out = self.model(
            input_ids=torch.tensor([list(prompt)]),
            past_key_values=DynamicCache(config=self.model.config),
            use_cache=True,
        )
        tokens: list[int] = []
        while True:
            token = int(out.logits[0, -1].argmax())
            tokens.append(token)
            if token in self.eos or len(tokens) >= max_new_tokens:
                return tokens
            out = self.model(
                input_ids=torch.tensor([[token]]),
                past_key_values=out.past_key_values,
                use_cache=True,
            )
