"""The pair verifier's network: a cross-encoder cut from the packaged all-MiniLM-L6-v2.

Both questions go through the encoder together (``[CLS] a [SEP] b [SEP]``, token types 0
and 1), so every word of one can attend to every word of the other; a linear head on the
mean-pooled output gives the logit that the two questions ask the same thing.

Only what fine-tuning changed is saved (:data:`DELTA_PREFIXES`): the first ``layers``
encoder layers, the token-type embeddings and the head. The word and position
embeddings come from the packaged base model, unchanged. Used by
:mod:`optiserve.tools.train_verifier` (an experiment; nothing serves it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

#: State-dict keys fine-tuned (and saved): the kept layers, token types, the head.
DELTA_PREFIXES = ("bert.encoder.layer.", "bert.embeddings.token_type_embeddings.", "head.")


class PairScorer(torch.nn.Module):
    """Cross-encoder: encoder (``layers`` layers of the base) + linear head -> logit."""

    def __init__(self, bert: Any) -> None:
        super().__init__()
        self.bert = bert
        self.head = torch.nn.Linear(int(bert.config.hidden_size), 1)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
    ) -> torch.Tensor:
        """Logits, one per pair (shape ``[batch]``)."""
        hidden = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        logits: torch.Tensor = self.head(pooled).squeeze(-1)
        return logits


def build_scorer(base_path: Path, layers: int) -> PairScorer:
    """A scorer with the base model's first ``layers`` layers and a fresh head (eval mode,
    eager attention so it exports to ONNX)."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(str(base_path), local_files_only=True)
    if not 1 <= layers <= int(config.num_hidden_layers):
        raise ValueError(f"layers must be in [1, {config.num_hidden_layers}], got {layers}")
    config.num_hidden_layers = layers
    bert = AutoModel.from_pretrained(
        str(base_path),
        config=config,
        local_files_only=True,
        attn_implementation="eager",
        add_pooling_layer=False,
    )
    return PairScorer(bert).eval()


def delta_state(scorer: PairScorer) -> dict[str, torch.Tensor]:
    """The fine-tuned part of ``scorer``'s weights (what is shipped)."""
    return {
        k: v.detach().clone()
        for k, v in scorer.state_dict().items()
        if k.startswith(DELTA_PREFIXES)
    }


def apply_delta(scorer: PairScorer, delta: dict[str, torch.Tensor]) -> None:
    """Load shipped weights into ``scorer``; every fine-tuned key must be present."""
    expected = set(delta_state(scorer))
    missing = sorted(expected - set(delta))
    unknown = sorted(set(delta) - expected)
    if missing or unknown:
        raise ValueError(
            f"verifier weights do not fit the model: missing {missing[:3]}, unknown {unknown[:3]}"
        )
    state = scorer.state_dict()
    for key, value in delta.items():
        if tuple(value.shape) != tuple(state[key].shape):
            raise ValueError(
                f"verifier weight {key} has shape {tuple(value.shape)}, "
                f"expected {tuple(state[key].shape)}"
            )
        state[key] = value.to(state[key].dtype)
    scorer.load_state_dict(state)


__all__ = ["DELTA_PREFIXES", "PairScorer", "apply_delta", "build_scorer", "delta_state"]
