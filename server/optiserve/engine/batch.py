"""The batch contract for local causal LMs, in the shape of TGI's ``CausalLMBatch``.

A :class:`CausalLMBatch` holds the sequences that decode together and their KV cache. Rows
are right-aligned: every row's last token sits in the same column, the left is padding
(attention mask 0). That layout lets one forward pass decode one token for every row, with
each row keeping its own positions (``position_ids``) and sampling parameters.

Life of a batch (the scheduler drives it)::

    new = CausalLMBatch.from_requests(requests, pad_id)   # collate: ids, mask, positions
    gens = new.prefill(model)                             # first token of every row
    running = CausalLMBatch.concatenate([running, new])   # re-pad KV caches, merge rows
    gens = running.decode(model)                          # one more token per row
    running = running.filter(keep_ids)                    # drop finished/cancelled rows

Token bookkeeping (collation, gather/scatter plans, finish and stop-id checks) is done by
``optiserve.batching`` (Cython, with a pure-Python twin). The KV cache is transformers'
``DynamicCache`` with plain ``DynamicLayer`` layers (``[batch, heads, seq, head_dim]``
tensors); models whose cache uses other layer kinds (sliding windows, linear attention)
are refused with a clear error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from optiserve import batching
from optiserve.engine.sampling import select_token
from optiserve.engine.types import FinishReason, SamplingParams

_NO_STOPS = np.zeros(0, dtype=np.int64)


@dataclass
class SequenceRequest:
    """One sequence entering a batch.

    ``params.max_new_tokens`` must be resolved (an int). ``stop_token_ids`` are token-level
    stop sequences (text-level stop strings are the scheduler's job). ``generator`` seeds
    sampling for this sequence; None is fine for greedy requests.
    """

    seq_id: int
    prompt_ids: Sequence[int]
    params: SamplingParams
    generator: torch.Generator | None = None
    stop_token_ids: tuple[tuple[int, ...], ...] = ()

    @property
    def max_new_tokens(self) -> int:
        """The resolved generation limit."""
        if self.params.max_new_tokens is None:
            raise ValueError("SequenceRequest needs params.max_new_tokens resolved to an int")
        return self.params.max_new_tokens


@dataclass
class _Row:
    """Per-sequence state that travels with its row."""

    request: SequenceRequest
    generated: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Generation:
    """A token produced for one sequence in one step.

    ``finish`` is set when the token ends the sequence at token level (an end-of-sequence
    id, the length limit, or a token-level stop sequence); the sequence must then be
    filtered out of the batch.
    """

    seq_id: int
    token_id: int
    finish: FinishReason | None


def sample_rows(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
) -> list[int]:
    """One token per row of ``logits`` ``[B, vocab]``, each row with its own parameters.

    Greedy rows are decided together with one argmax; sampled rows use
    :func:`optiserve.engine.sampling.select_token` with their own generator.
    """
    chosen = torch.argmax(logits, dim=-1).tolist()
    for row, p in enumerate(params):
        if not p.greedy:
            chosen[row] = select_token(logits[row], p, generators[row])
    return [int(t) for t in chosen]


#: Spare KV columns allocated past the current length, so decode steps write in place.
KV_HEADROOM = 64


def _append_layer_class() -> type:
    """A ``DynamicLayer`` that appends into a preallocated buffer instead of ``torch.cat``.

    transformers' ``DynamicLayer.update`` concatenates, copying the whole layer cache every
    decode step; this layer keeps ``KV_HEADROOM`` spare columns and writes new keys and
    values in place, exposing ``keys``/``values`` as views of the buffer. Built lazily so
    importing this module does not import transformers.
    """
    global _APPEND_LAYER
    if _APPEND_LAYER is not None:
        return _APPEND_LAYER
    from transformers.cache_utils import DynamicLayer

    class AppendLayer(DynamicLayer):
        """Dynamic KV layer with in-place appends (see :func:`_append_layer_class`)."""

        _kbuf: torch.Tensor | None = None
        _vbuf: torch.Tensor | None = None

        def replace(self, keys: torch.Tensor, values: torch.Tensor, spare: int) -> None:
            """Store ``keys``/``values`` (``[B, H, L, D]``) with ``spare`` free columns."""
            b, h, n, d = keys.shape
            self._kbuf = keys.new_empty((b, h, n + spare, d))
            self._vbuf = values.new_empty((b, h, n + spare, values.shape[3]))
            self._kbuf[:, :, :n] = keys
            self._vbuf[:, :, :n] = values
            self.keys = self._kbuf[:, :, :n]
            self.values = self._vbuf[:, :, :n]
            if not self.is_initialized:
                self.dtype, self.device = keys.dtype, keys.device
                self.is_initialized = True

        def adopt(self, kbuf: torch.Tensor, vbuf: torch.Tensor, used: int) -> None:
            """Take buffers whose first ``used`` columns hold the cache."""
            self._kbuf, self._vbuf = kbuf, vbuf
            self.keys = kbuf[:, :, :used]
            self.values = vbuf[:, :, :used]

        def _owns_current(self) -> bool:
            return (
                self._kbuf is not None
                and self.keys is not None
                and self.keys.data_ptr() == self._kbuf.data_ptr()
                and self.keys.shape[0] == self._kbuf.shape[0]
            )

        def update(
            self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
        ) -> tuple[torch.Tensor, torch.Tensor]:
            new = key_states.shape[-2]
            keys, values = self.keys, self.values
            if not self.is_initialized or keys is None or values is None or keys.numel() == 0:
                self.replace(key_states, value_states, KV_HEADROOM)
                return key_states, value_states
            used = keys.shape[-2]
            if self._kbuf is None or not self._owns_current() or used + new > self._kbuf.shape[-2]:
                self.replace(keys, values, max(KV_HEADROOM, new))
            kbuf, vbuf = self._kbuf, self._vbuf
            assert kbuf is not None and vbuf is not None
            kbuf[:, :, used : used + new] = key_states
            vbuf[:, :, used : used + new] = value_states
            self.keys = kbuf[:, :, : used + new]
            self.values = vbuf[:, :, : used + new]
            return self.keys, self.values

    _APPEND_LAYER = AppendLayer
    return AppendLayer


_APPEND_LAYER: type | None = None


def new_cache(model: Any) -> Any:
    """A ``DynamicCache`` for ``model`` whose layers append in place.

    Raises NotImplementedError for models whose cache layers are not plain dynamic ones
    (sliding windows, linear attention, ...): they cannot be re-padded row by row.
    """
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=model.config)
    for layer in cache.layers:
        if type(layer) is not DynamicLayer:
            raise NotImplementedError(
                f"continuous batching supports models with a plain DynamicLayer KV cache; "
                f"this model uses {type(layer).__name__}. Serve it with max_batch_size=1."
            )
    layer_class = _append_layer_class()
    cache.layers = [layer_class() for _ in cache.layers]
    return cache


def _cache_layers(cache: Any) -> list[Any]:
    """The layers of a cache made by :func:`new_cache`."""
    layer_class = _append_layer_class()
    layers = list(getattr(cache, "layers", ()))
    if not all(type(layer) is layer_class for layer in layers):
        raise TypeError("batch caches must come from optiserve.engine.batch.new_cache")
    return layers


class CausalLMBatch:
    """Sequences that decode together: tokens, mask, positions, KV cache, per-row state."""

    def __init__(
        self,
        rows: list[_Row],
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        lengths: np.ndarray[Any, np.dtype[np.int64]],
        eos_ids: Sequence[int],
        cache: Any = None,
    ) -> None:
        self.rows = rows
        #: The next forward's input: the padded prompts before prefill, then ``[B, 1]``.
        self.input_ids = input_ids
        #: ``[B, width]`` before prefill; afterwards the mask of what the KV cache holds.
        self.attention_mask = attention_mask
        self.position_ids = position_ids
        #: Real (non-padding) tokens of each row that the cache holds or the input carries.
        self.lengths = lengths
        self.eos_ids = np.array(sorted(set(eos_ids)), dtype=np.int64)
        self.cache = cache
        self._stop_plan: tuple[np.ndarray[Any, Any], ...] | None = None
        self._stop_width = 0
        self._build_stop_plan()

    # ----------------------------------------------------------------- construction

    @classmethod
    def from_requests(
        cls,
        requests: Sequence[SequenceRequest],
        pad_id: int,
        eos_ids: Sequence[int] = (),
        device: torch.device | str = "cpu",
    ) -> CausalLMBatch:
        """Collate prompts (left padding) into a batch ready for :meth:`prefill`."""
        if not requests:
            raise ValueError("from_requests needs at least one request")
        for r in requests:
            if len(r.prompt_ids) == 0:
                raise ValueError(f"sequence {r.seq_id} has an empty prompt")
        ids, mask, pos = batching.collate([r.prompt_ids for r in requests], pad_id)
        lengths = mask.sum(axis=1).astype(np.int64)
        return cls(
            [_Row(r) for r in requests],
            torch.from_numpy(ids).to(device),
            torch.from_numpy(mask).to(device),
            torch.from_numpy(pos).to(device),
            lengths,
            eos_ids,
        )

    # ----------------------------------------------------------------- properties

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def seq_ids(self) -> list[int]:
        """Sequence ids in row order."""
        return [row.request.seq_id for row in self.rows]

    @property
    def width(self) -> int:
        """Columns of the attention mask (the KV cache length once prefilled)."""
        return int(self.attention_mask.shape[1])

    @property
    def reserved_tokens(self) -> int:
        """Tokens this batch may still need: prompt plus max_new_tokens of every row."""
        return sum(len(r.request.prompt_ids) + r.request.max_new_tokens for r in self.rows)

    # ----------------------------------------------------------------- steps

    @torch.inference_mode()
    def prefill(self, model: Any) -> list[Generation]:
        """Run the prompts through ``model``, filling a fresh KV cache; one token per row."""
        cache = new_cache(model)
        out = model(
            input_ids=self.input_ids,
            attention_mask=self.attention_mask,
            position_ids=self.position_ids,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.cache = out.past_key_values
        _cache_layers(self.cache)
        return self._advance(out.logits[:, -1, :])

    @torch.inference_mode()
    def decode(self, model: Any) -> list[Generation]:
        """One decoding step for every row, reusing the KV cache; one token per row."""
        if self.cache is None:
            raise RuntimeError("decode before prefill")
        ones = self.attention_mask.new_ones((len(self.rows), 1))
        mask = torch.cat([self.attention_mask, ones], dim=1)
        out = model(
            input_ids=self.input_ids,
            attention_mask=mask,
            position_ids=self.position_ids,
            past_key_values=self.cache,
            use_cache=True,
        )
        self.cache = out.past_key_values
        self.attention_mask = mask
        return self._advance(out.logits[:, -1, :])

    def _advance(self, logits: torch.Tensor) -> list[Generation]:
        """Sample, record the new tokens and prepare the next decode's inputs."""
        reqs = [row.request for row in self.rows]
        tokens = sample_rows(logits, [r.params for r in reqs], [r.generator for r in reqs])
        for row, token in zip(self.rows, tokens, strict=True):
            row.generated.append(token)
        new = np.array(tokens, dtype=np.int64)
        counts = np.array([len(row.generated) for row in self.rows], dtype=np.int64)
        limits = np.array([r.max_new_tokens for r in reqs], dtype=np.int64)
        codes = batching.finish_codes(new, counts, limits, self.eos_ids)
        stops = self._match_stops()
        device = self.input_ids.device
        self.input_ids = torch.from_numpy(new).to(device).unsqueeze(1)
        self.position_ids = torch.from_numpy(self.lengths.copy()).to(device).unsqueeze(1)
        self.lengths = self.lengths + 1
        gens = []
        for i, (req, token) in enumerate(zip(reqs, tokens, strict=True)):
            finish: FinishReason | None = None
            if codes[i] == 1:
                finish = FinishReason.EOS
            elif stops is not None and stops[i] >= 0:
                finish = FinishReason.STOP_SEQUENCE
            elif codes[i] == 2:
                finish = FinishReason.LENGTH
            gens.append(Generation(req.seq_id, token, finish))
        return gens

    # ----------------------------------------------------------------- token-level stops

    def _build_stop_plan(self) -> None:
        """Flatten every row's token-level stop sequences for ``match_stop_ids``."""
        tokens: list[int] = []
        offsets = [0]
        owners: list[int] = []
        for i, row in enumerate(self.rows):
            for seq in row.request.stop_token_ids:
                tokens.extend(seq)
                offsets.append(len(tokens))
                owners.append(i)
        if not owners:
            self._stop_plan = None
            self._stop_width = 0
            return
        self._stop_width = max(offsets[k + 1] - offsets[k] for k in range(len(owners)))
        self._stop_plan = (
            np.array(tokens, dtype=np.int64),
            np.array(offsets, dtype=np.int64),
            np.array(owners, dtype=np.int64),
        )

    def _match_stops(self) -> np.ndarray[Any, np.dtype[np.int64]] | None:
        if self._stop_plan is None:
            return None
        width = self._stop_width
        tails = np.zeros((len(self.rows), width), dtype=np.int64)
        tail_lens = np.zeros(len(self.rows), dtype=np.int64)
        for i, row in enumerate(self.rows):
            if row.request.stop_token_ids:
                tail = row.generated[-width:]
                tails[i, width - len(tail) :] = tail
                tail_lens[i] = len(tail)
        tokens, offsets, owners = self._stop_plan
        result: np.ndarray[Any, np.dtype[np.int64]] = batching.match_stop_ids(
            tails, tail_lens, tokens, offsets, owners
        )
        return result

    # ----------------------------------------------------------------- filter / concatenate

    def filter(self, keep_ids: Sequence[int]) -> CausalLMBatch | None:
        """Keep only the rows whose sequence id is in ``keep_ids`` (None when none is left).

        Drops the other rows' KV entries and trims left padding no remaining row needs.
        Must be called after a step (prefill or decode), when the cache exists.
        """
        row_ids = np.array(self.seq_ids, dtype=np.int64)
        keep = batching.filter_indices(row_ids, np.asarray(keep_ids, dtype=np.int64))
        if len(keep) == 0:
            return None
        if len(keep) == len(self.rows):
            return self
        device = self.input_ids.device
        lengths = self.lengths[keep]
        # The KV cache and mask hold ``lengths - 1`` tokens per row (the newest token is
        # still the pending input); columns left of the longest of them are all padding.
        cut = self.width - int(lengths.max()) + 1
        index = torch.from_numpy(keep).to(device)
        for layer in _cache_layers(self.cache):
            layer.replace(
                layer.keys[index, :, cut:, :], layer.values[index, :, cut:, :], KV_HEADROOM
            )
        self.attention_mask = self.attention_mask[index, cut:]
        self.input_ids = self.input_ids[index]
        self.position_ids = self.position_ids[index]
        self.lengths = lengths
        self.rows = [self.rows[i] for i in keep.tolist()]
        self._build_stop_plan()
        return self

    @classmethod
    def concatenate(cls, batches: Sequence[CausalLMBatch]) -> CausalLMBatch:
        """Merge prefilled batches into one, re-padding masks and KV caches on the left."""
        batches = [b for b in batches if len(b)]
        if not batches:
            raise ValueError("concatenate needs at least one non-empty batch")
        if len(batches) == 1:
            return batches[0]
        widths = np.array([b.width for b in batches], dtype=np.int64)
        sizes = np.array([len(b) for b in batches], dtype=np.int64)
        starts, offsets, width = batching.concat_layout(widths, sizes)
        total = int(starts[-1])
        first = batches[0]
        mask = first.attention_mask.new_zeros((total, width))
        per_batch_layers = [_cache_layers(b.cache) for b in batches]
        n_layers = len(per_batch_layers[0])
        if any(len(layers) != n_layers for layers in per_batch_layers):
            raise ValueError("cannot concatenate batches whose caches differ in layers")
        merged: list[tuple[torch.Tensor, torch.Tensor]] = []
        for li in range(n_layers):
            ref = per_batch_layers[0][li].keys
            shape = (total, ref.shape[1], width + KV_HEADROOM, ref.shape[3])
            keys = ref.new_zeros(shape)
            values = per_batch_layers[0][li].values.new_zeros(shape)
            for bi, layers in enumerate(per_batch_layers):
                r0, r1, c0 = int(starts[bi]), int(starts[bi + 1]), int(offsets[bi])
                keys[r0:r1, :, c0:width, :] = layers[li].keys
                values[r0:r1, :, c0:width, :] = layers[li].values
            merged.append((keys, values))
        for bi, b in enumerate(batches):
            mask[int(starts[bi]) : int(starts[bi + 1]), int(offsets[bi]) :] = b.attention_mask
        for layer, (keys, values) in zip(per_batch_layers[0], merged, strict=True):
            layer.adopt(keys, values, width)
        merged_batch = cls(
            [row for b in batches for row in b.rows],
            torch.cat([b.input_ids for b in batches], dim=0),
            mask,
            torch.cat([b.position_ids for b in batches], dim=0),
            np.concatenate([b.lengths for b in batches]),
            first.eos_ids.tolist(),
            first.cache,
        )
        for b in batches[1:]:
            b.cache = None
        return merged_batch


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every end-of-sequence id: the tokenizer's and the generation config's."""
    ids: set[int] = set()
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_config = getattr(model, "generation_config", None)
    configured = getattr(gen_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif isinstance(configured, list | tuple):
        ids.update(int(i) for i in configured)
    return sorted(ids)


__all__ = [
    "CausalLMBatch",
    "Generation",
    "SequenceRequest",
    "eos_token_ids",
    "sample_rows",
]
