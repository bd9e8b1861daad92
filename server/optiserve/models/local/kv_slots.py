"""A KV cache of row slots for continuous batching (no whole-cache copy on join or leave).

Every layer keeps one preallocated buffer per keys and values, ``[row_cap, heads,
col_cap, head_dim]``. Row ``r`` of the batch lives in slot ``r`` and is *left-aligned*: its
``cached[r]`` tokens sit in columns ``0 .. cached[r] - 1``; columns to the right are holes
that the attention mask hides. Consequences:

* decode writes each row's new key/value at its own column ``cached[r]`` (one scatter per
  layer) and attends over the view ``[:rows, :, :max(cached) + 1]``;
* a leaving row is replaced by moving one of the last rows into its slot (only the moved
  rows are copied, not the cache);
* a joining batch is copied into the free slots after the running rows (only the new rows
  are copied); the running rows never move or get re-padded;
* buffers grow geometrically (rows and columns, 2x), so re-allocation is rare;
* columns no row has written yet are zeroed: a hole never holds NaN/Inf garbage from
  uninitialized memory, which a masked attention weight of 0 would still turn into NaN
  (``0 * nan``); holes otherwise hold finite keys/values of padding or departed rows.

The layers subclass transformers' ``DynamicLayer`` so models see an ordinary cache. During
prefill a layer captures the (left-padded) prompt keys/values, gathers them left-aligned
into fresh buffers and hands the forward pass the input unchanged.
"""

from __future__ import annotations

from typing import Any

import torch

#: Spare KV columns allocated past what is needed, so decode steps rarely re-allocate.
KV_HEADROOM = 64


def _grow(capacity: int, needed: int, minimum: int) -> int:
    """A new capacity of at least ``needed``: twice the old one, or ``minimum`` past needed."""
    return max(needed + minimum, 2 * capacity)


def _slot_layer_class() -> type:
    """Build the slot layer class lazily, so importing this module skips transformers."""
    global _SLOT_LAYER
    if _SLOT_LAYER is not None:
        return _SLOT_LAYER
    from transformers.cache_utils import DynamicLayer

    class SlotLayer(DynamicLayer):
        """One layer of a slot cache (see the module docstring)."""

        kbuf: torch.Tensor | None = None
        vbuf: torch.Tensor | None = None
        #: Rows in use (slots ``0 .. rows - 1``).
        rows = 0
        #: Prefill: the ``[n, width]`` gather index that left-aligns the padded prompt.
        align: torch.Tensor | None = None
        #: Decode: ``(row index, column index)`` of each row's new key/value.
        write: tuple[torch.Tensor, torch.Tensor] | None = None
        #: Decode: columns of the view returned to attention after the write.
        width_after = 0

        def update(
            self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
        ) -> tuple[torch.Tensor, torch.Tensor]:
            if self.align is not None:
                return self._capture(key_states, value_states)
            if self.write is None or self.kbuf is None or self.vbuf is None:
                raise RuntimeError("slot cache used without CausalLMBatch preparing the step")
            if key_states.shape[-2] != 1:
                raise RuntimeError("the slot cache decodes one token per row and step")
            rows, cols = self.write
            self.kbuf[rows, :, cols] = key_states[:, :, 0]
            self.vbuf[rows, :, cols] = value_states[:, :, 0]
            self.write = None
            self.keys = self.kbuf[: self.rows, :, : self.width_after]
            self.values = self.vbuf[: self.rows, :, : self.width_after]
            return self.keys, self.values

        def _capture(
            self, key_states: torch.Tensor, value_states: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            assert self.align is not None
            n, h, w, dk = key_states.shape
            dv = value_states.shape[3]
            index = self.align[:, None, :, None]
            spare = KV_HEADROOM
            self.kbuf = key_states.new_empty((n, h, w + spare, dk))
            self.vbuf = value_states.new_empty((n, h, w + spare, dv))
            torch.gather(key_states, 2, index.expand(n, h, w, dk), out=self.kbuf[:, :, :w])
            torch.gather(value_states, 2, index.expand(n, h, w, dv), out=self.vbuf[:, :, :w])
            self.kbuf[:, :, w:].zero_()  # the gathered part is model output (finite)
            self.vbuf[:, :, w:].zero_()
            self.align = None
            self.rows = n
            self.keys = self.kbuf[:, :, :w]
            self.values = self.vbuf[:, :, :w]
            self.dtype, self.device = key_states.dtype, key_states.device
            self.is_initialized = True
            return key_states, value_states

        def view(self, width: int) -> None:
            """Expose ``[:rows, :, :width]`` as the layer's keys and values."""
            assert self.kbuf is not None and self.vbuf is not None
            self.keys = self.kbuf[: self.rows, :, :width]
            self.values = self.vbuf[: self.rows, :, :width]

        def reserve(self, rows: int, cols: int, used_cols: int) -> None:
            """Make room for ``rows`` slots and ``cols`` columns, keeping what is used."""
            assert self.kbuf is not None and self.vbuf is not None
            cap_rows, _, cap_cols, _ = self.kbuf.shape
            if rows <= cap_rows and cols <= cap_cols:
                return
            new_rows = cap_rows if rows <= cap_rows else _grow(cap_rows, rows, 4)
            new_cols = cap_cols if cols <= cap_cols else _grow(cap_cols, cols, KV_HEADROOM)
            kb, vb = self.kbuf, self.vbuf
            self.kbuf = kb.new_zeros((new_rows, kb.shape[1], new_cols, kb.shape[3]))
            self.vbuf = vb.new_zeros((new_rows, vb.shape[1], new_cols, vb.shape[3]))
            n = self.rows
            self.kbuf[:n, :, :used_cols] = kb[:n, :, :used_cols]
            self.vbuf[:n, :, :used_cols] = vb[:n, :, :used_cols]

        def move_rows(self, dst: torch.Tensor, src: torch.Tensor, cols: int) -> None:
            """Copy slots ``src`` into slots ``dst`` (first ``cols`` columns; disjoint sets)."""
            assert self.kbuf is not None and self.vbuf is not None
            self.kbuf[dst, :, :cols] = self.kbuf[src, :, :cols]
            self.vbuf[dst, :, :cols] = self.vbuf[src, :, :cols]

        def append_rows(self, other: Any, cols: int) -> None:
            """Copy ``other``'s rows (first ``cols`` columns) into the slots after ours."""
            assert self.kbuf is not None and self.vbuf is not None
            n, m = self.rows, other.rows
            self.kbuf[n : n + m, :, :cols] = other.kbuf[:m, :, :cols]
            self.vbuf[n : n + m, :, :cols] = other.vbuf[:m, :, :cols]
            self.rows = n + m

        def release(self) -> None:
            """Drop the buffers."""
            self.kbuf = self.vbuf = None
            self.keys = self.values = None
            self.rows = 0

    _SLOT_LAYER = SlotLayer
    return SlotLayer


_SLOT_LAYER: type | None = None


def new_cache(model: Any) -> Any:
    """A ``DynamicCache`` for ``model`` whose layers are slot layers.

    Raises NotImplementedError for models whose cache layers are not plain dynamic ones
    (sliding windows, linear attention, ...): they cannot be laid out row by row.
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
    layer_class = _slot_layer_class()
    cache.layers = [layer_class() for _ in cache.layers]
    return cache


def cache_layers(cache: Any) -> list[Any]:
    """The layers of a cache made by :func:`new_cache` (TypeError for any other cache)."""
    layer_class = _slot_layer_class()
    layers = list(getattr(cache, "layers", ()))
    if not layers or not all(type(layer) is layer_class for layer in layers):
        raise TypeError("batch caches must come from optiserve.models.local.kv_slots.new_cache")
    return layers


def row_capacity(cache: Any) -> int:
    """Slots allocated in ``cache`` (0 before prefill)."""
    layer = cache_layers(cache)[0]
    return 0 if layer.kbuf is None else int(layer.kbuf.shape[0])


__all__ = ["KV_HEADROOM", "cache_layers", "new_cache", "row_capacity"]
