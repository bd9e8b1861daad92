"""The batch contract for local causal LMs, in the shape of TGI's ``CausalLMBatch``.

A :class:`CausalLMBatch` holds the sequences that decode together and their KV cache. Prompts
are prefilled left-padded (so every row's last prompt token shares the last column); the
prefill stores each row's keys/values *left-aligned* in its own slot of a preallocated slot
cache (:mod:`optiserve.models.local.kv_slots`). Decode then writes every row's new token at its
own column and attends over the columns up to the longest row, the attention mask hiding
each shorter row's holes; every row keeps its own positions and sampling parameters.

Life of a batch (the scheduler drives it)::

    new = CausalLMBatch.from_requests(requests, pad_id)   # collate: ids, mask, positions
    gens = new.prefill(model)                             # first token of every row
    running = CausalLMBatch.concatenate([running, new])   # copy new rows into free slots
    gens = running.decode(model)                          # one more token per row
    running = running.filter(keep_ids)                    # refill leaving rows' slots

Neither ``filter`` nor ``concatenate`` copies or re-pads the running rows' cache: only
rows that move or join are copied. Token bookkeeping (collation, alignment and compaction
plans, finish and stop-id checks) is done by ``optiserve.batching`` (Cython, with a
pure-Python twin). A row below its ``min_new_tokens`` gets its end ids' logits (end of
sequence, single-token stops) set to -inf before argmax or sampling, in one scatter for
the batch.

Failures are kept apart: a row whose token cannot be chosen (its sampling raises, or its
scores are NaN or all ``-inf``) gets a :class:`Generation` carrying the error, and the
other rows go on; a failed forward pass raises :class:`ForwardError`, leaving the batch
as it was before the step (so the step can be retried). Models whose cache uses other
layer kinds than plain ``DynamicLayer`` (sliding windows, linear attention) are refused
with a clear error.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from optiserve import batching
from optiserve.domain.types import FinishReason, SamplingParams
from optiserve.models.local.kv_slots import cache_layers, new_cache, row_capacity
from optiserve.models.local.sampling import SamplingError, is_greedy, select_token

_NO_STOPS = np.zeros(0, dtype=np.int64)


@dataclass
class SequenceRequest:
    """One sequence entering a batch.

    ``params.max_new_tokens`` must be resolved to an int >= 1 and ``params.min_new_tokens``
    (None counts as 0) must not exceed it (the backend's ``resolve_sampling`` sees to both; a
    ValueError here is a bug, not a bad request). ``stop_token_ids`` are token-level stop
    sequences (text-level stop strings are the scheduler's job); below ``min_new_tokens``
    the single-token ones are masked like end-of-sequence ids. ``generator`` is this
    sequence's random stream (:func:`~optiserve.models.local.sampling.make_generator`);
    None is fine for greedy requests (a sampled one then draws from fresh entropy).
    """

    seq_id: int
    prompt_ids: Sequence[int]
    params: SamplingParams
    generator: np.random.Generator | None = None
    stop_token_ids: tuple[tuple[int, ...], ...] = ()

    def __post_init__(self) -> None:
        limit = self.params.max_new_tokens
        if limit is None or limit < 1:
            raise ValueError(
                f"sequence {self.seq_id}: params.max_new_tokens must be resolved to an int >= 1 "
                f"before batching (resolve_sampling does it), got {limit}"
            )
        if not 0 <= self.min_new_tokens <= limit:
            raise ValueError(
                f"sequence {self.seq_id}: params.min_new_tokens must be in [0, {limit}] "
                f"(resolve_sampling checks it), got {self.min_new_tokens}"
            )

    @property
    def max_new_tokens(self) -> int:
        """The resolved generation limit."""
        limit = self.params.max_new_tokens
        assert limit is not None  # checked in __post_init__
        return limit

    @property
    def min_new_tokens(self) -> int:
        """Tokens generated before an end-of-sequence token may be chosen."""
        return self.params.min_new_tokens or 0


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
    filtered out of the batch. ``error`` is set when no token could be chosen for this
    sequence (``token_id`` is then meaningless): the sequence has failed, alone, and must
    be filtered out too.
    """

    seq_id: int
    token_id: int
    finish: FinishReason | None
    error: Exception | None = None


class ForwardError(RuntimeError):
    """The model's forward pass raised (the original exception is ``__cause__``).

    Raised before the batch changed: its cache, positions and per-row state are as they
    were before the step, so the same step may be run again.
    """

    def __init__(self, step: str, cause: Exception) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.step = step
        self.__cause__ = cause


class CausalLMBatch:
    """Sequences that decode together: tokens, positions, KV slots, per-row state.

    Before :meth:`prefill` the batch holds the collated, left-padded prompts. From prefill
    on, its KV cache is a slot cache (:mod:`optiserve.models.local.kv_slots`): row ``r`` holds
    ``cached[r]`` tokens left-aligned in slot ``r`` and its next input token waits in
    ``input_ids[r]``. :meth:`filter` and :meth:`concatenate` move only the rows that leave
    or join; row order is therefore not preserved (use :attr:`seq_ids`).
    """

    def __init__(
        self,
        rows: list[_Row],
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        lengths: np.ndarray[Any, np.dtype[np.int64]],
        eos_ids: Sequence[int],
    ) -> None:
        self.rows = rows
        #: The next forward's input: the padded prompts before prefill, then ``[B, 1]``.
        self.input_ids = input_ids
        self._prompt_mask: torch.Tensor | None = attention_mask
        self._prompt_positions: torch.Tensor | None = position_ids
        #: Tokens of each row in the KV cache (before prefill: its prompt length).
        self.cached = lengths
        self.eos_ids = np.array(sorted(set(eos_ids)), dtype=np.int64)
        self.cache: Any = None
        #: How the model takes the KV cache (set at prefill, see :func:`cache_argument`).
        self._cache_arg = "past_key_values"
        self._width = int(lengths.max()) if len(lengths) else 0
        self._generated: np.ndarray[Any, np.dtype[np.int64]] = np.zeros(len(rows), dtype=np.int64)
        self._limits: np.ndarray[Any, np.dtype[np.int64]] = np.array(
            [r.request.max_new_tokens for r in rows], dtype=np.int64
        )
        self._mins = np.array([r.request.min_new_tokens for r in rows], dtype=np.int64)
        self._sampled: list[int] = []
        self._stop_plan: tuple[np.ndarray[Any, Any], ...] | None = None
        self._stop_width = 0
        self._end_plan: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]] | None = None
        self._rows_changed()

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
        lengths = np.array([len(r.prompt_ids) for r in requests], dtype=np.int64)
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
        """KV columns the rows span (before prefill: the padded prompt width)."""
        return self._width

    @property
    def attention_mask(self) -> torch.Tensor:
        """``[B, width]``: 1 where a row has a token (left-padded before prefill)."""
        if self._prompt_mask is not None:
            return self._prompt_mask
        cols = torch.arange(self._width, device=self.input_ids.device)
        return (cols[None, :] < torch.from_numpy(self.cached)[:, None]).long()

    # ----------------------------------------------------------------- steps

    @torch.inference_mode()
    def prefill(self, model: Any) -> list[Generation]:
        """Run the prompts through ``model``, filling a fresh KV cache; one token per row."""
        if self._prompt_mask is None:
            raise RuntimeError("prefill called twice")
        cache = new_cache(model)
        self._cache_arg = cache_argument(model)
        align = torch.from_numpy(batching.align_index(self.cached, self._width))
        for layer in cache_layers(cache):
            layer.align = align.to(self.input_ids.device)
        try:
            out = model(
                input_ids=self.input_ids,
                attention_mask=self._prompt_mask,
                position_ids=self._prompt_positions,
                **{self._cache_arg: cache},
                use_cache=True,
                logits_to_keep=1,
            )
        except Exception as exc:
            raise ForwardError("prefill", exc) from exc
        self.cache = cache
        self._prompt_mask = self._prompt_positions = None
        self._sdpa = getattr(model.config, "_attn_implementation", None) == "sdpa"
        return self._advance(out.logits[:, -1, :])

    @torch.inference_mode()
    def decode(self, model: Any) -> list[Generation]:
        """One decoding step for every row, reusing the KV cache; one token per row."""
        if self.cache is None:
            raise RuntimeError("decode before prefill")
        n, width = len(self.rows), self._width
        device = self.input_ids.device
        layers = cache_layers(self.cache)
        layers[0].reserve(n, width + 1, width)  # same shapes in every layer
        for layer in layers[1:]:
            layer.reserve(n, width + 1, width)
        cached = torch.from_numpy(self.cached).to(device)
        write = (torch.arange(n, device=device), cached)
        for layer in layers:
            layer.view(width)
            layer.write = write
            layer.width_after = width + 1
        cols = torch.arange(width + 1, device=device)
        mask = cols[None, :] <= cached[:, None]
        try:
            out = model(
                input_ids=self.input_ids,
                # A ready 4D mask skips transformers' mask building; other kernels get 2D.
                attention_mask=mask[:, None, None, :] if self._sdpa else mask.long(),
                position_ids=cached[:, None],
                **{self._cache_arg: self.cache},
                use_cache=True,
            )
        except Exception as exc:  # the cache's writes so far are redone by a retry
            raise ForwardError("decode", exc) from exc
        self.cached = self.cached + 1
        self._width = width + 1
        return self._advance(out.logits[:, -1, :])

    def _advance(self, logits: torch.Tensor) -> list[Generation]:
        """Sample, record the new tokens and prepare the next decode's inputs.

        A row whose token cannot be chosen gets its error in its Generation; the other
        rows are not affected.
        """
        if self._end_plan is not None:
            self._mask_ends(logits)
        chosen = torch.argmax(logits, dim=-1)
        errors = self._greedy_errors(logits, chosen)
        for i in self._sampled:
            req = self.rows[i].request
            try:
                chosen[i] = select_token(logits[i], req.params, req.generator)
            except Exception as exc:  # this row's failure, not the batch's
                errors[i] = exc
        tokens: list[int] = chosen.tolist()
        for row, token in zip(self.rows, tokens, strict=True):
            row.generated.append(token)
        self._generated += 1
        new = chosen.cpu().numpy() if chosen.device.type != "cpu" else chosen.numpy()
        codes = batching.finish_codes(new, self._generated, self._limits, self.eos_ids)
        stops = self._match_stops()
        self.input_ids = chosen.unsqueeze(1)
        gens = []
        for i, (row, token) in enumerate(zip(self.rows, tokens, strict=True)):
            finish: FinishReason | None = None
            code = codes[i]
            if code == 1:
                finish = FinishReason.EOS
            elif stops is not None and stops[i] >= 0:
                finish = FinishReason.STOP_SEQUENCE
            elif code == 2:
                finish = FinishReason.LENGTH
            gens.append(Generation(row.request.seq_id, token, finish, errors.get(i)))
        return gens

    def _greedy_errors(self, logits: torch.Tensor, chosen: torch.Tensor) -> dict[int, Exception]:
        """Rows whose argmax is no token: NaN scores (argmax picks a NaN) or all ``-inf``.

        One gather of the chosen scores and one check for the batch; sampled rows are
        checked by :func:`select_token`.
        """
        best = logits.gather(1, chosen[:, None])
        bad = torch.isnan(best) | torch.isneginf(best)
        if not bool(bad.any()):
            return {}
        errors: dict[int, Exception] = {}
        for i in bad.squeeze(1).nonzero().flatten().tolist():
            errors[i] = SamplingError(
                "the model's scores for this sequence are NaN"
                if bool(torch.isnan(best[i]))
                else "every token's score is -inf: no token can be chosen"
            )
        return errors

    # ----------------------------------------------------------------- min_new_tokens

    def _build_end_plan(self) -> None:
        """Which ids each row may not choose while below its minimum (None: no row has one).

        The ids are the end-of-sequence ids (every row) and each row's single-token stops;
        ``ban[r, k]`` says whether row ``r`` bans ``ids[k]``.
        """
        if not len(self._mins) or int(self._mins.max()) == 0:
            self._end_plan = None
            return
        eos = [int(e) for e in self.eos_ids]
        singles = [
            {seq[0] for seq in row.request.stop_token_ids if len(seq) == 1} for row in self.rows
        ]
        extra = sorted(set().union(*singles).difference(eos))
        ids = np.array(eos + extra, dtype=np.int64)
        if not len(ids):
            self._end_plan = None
            return
        ban = np.zeros((len(self.rows), len(ids)), dtype=bool)
        ban[:, : len(eos)] = True
        column = {t: len(eos) + k for k, t in enumerate(extra)}
        for r, tokens in enumerate(singles):
            for t in tokens:
                if t in column:
                    ban[r, column[t]] = True
        self._end_plan = (ids, ban)

    def _mask_ends(self, logits: torch.Tensor) -> None:
        """Set the banned ids' logits to -inf in the rows still below their minimum, so
        greedy argmax and sampling pick the best other token (one scatter for the batch)."""
        assert self._end_plan is not None
        below = self._generated < self._mins
        if not below.any():
            return
        ids, ban = self._end_plan
        rows, cols = np.nonzero(ban & below[:, None])
        where = torch.from_numpy(np.stack([rows, ids[cols]])).to(logits.device)
        logits[where[0], where[1]] = float("-inf")

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

    @torch.inference_mode()
    def reserve(self, rows: int, cols: int = 0) -> None:
        """Allocate KV room for ``rows`` rows and ``cols`` columns now (no re-allocation
        until a join or a decode step needs more)."""
        if self.cache is None:
            raise RuntimeError("reserve before prefill")
        for layer in cache_layers(self.cache):
            layer.reserve(rows, max(cols, self._width + 1), self._width)

    # ----------------------------------------------------------------- filter / concatenate

    @torch.inference_mode()
    def filter(self, keep_ids: Sequence[int]) -> CausalLMBatch | None:
        """Keep only the rows whose sequence id is in ``keep_ids`` (None when none is left).

        Must be called after a step (prefill or decode), when the cache exists. Leaving
        rows' slots are refilled with the last rows (only those rows' KV is copied), so row
        order is not preserved.
        """
        row_ids = np.array(self.seq_ids, dtype=np.int64)
        keep = batching.filter_indices(row_ids, np.asarray(keep_ids, dtype=np.int64))
        if len(keep) == len(self.rows):
            return self
        if self.cache is None:
            raise RuntimeError("filter before prefill")
        layers = cache_layers(self.cache)
        if len(keep) == 0:
            for layer in layers:
                layer.release()
            self.cache = None
            return None
        order, dst, src = batching.compact_plan(keep, len(self.rows))
        if len(dst):
            device = self.input_ids.device
            dst_t = torch.from_numpy(dst).to(device)
            src_t = torch.from_numpy(src).to(device)
            cols = int(self.cached[src].max())
            for layer in layers:
                layer.move_rows(dst_t, src_t, cols)
        self._take(order)
        self._width = int(self.cached.max())
        for layer in layers:
            layer.rows = len(keep)
            layer.view(self._width)
        return self

    def _take(self, order: np.ndarray[Any, np.dtype[np.int64]]) -> None:
        """Keep the per-row state of rows ``order`` (old positions), in that order."""
        self.rows = [self.rows[int(i)] for i in order]
        self.cached = self.cached[order]
        self._generated = self._generated[order]
        self._limits = self._limits[order]
        self._mins = self._mins[order]
        self.input_ids = self.input_ids[torch.from_numpy(order).to(self.input_ids.device)]
        self._rows_changed()

    def _rows_changed(self) -> None:
        self._sampled = [i for i, r in enumerate(self.rows) if not is_greedy(r.request.params)]
        self._build_stop_plan()
        self._build_end_plan()

    @classmethod
    @torch.inference_mode()
    def concatenate(cls, batches: Sequence[CausalLMBatch]) -> CausalLMBatch:
        """Merge prefilled batches into one (the one with the most slots absorbs the rest).

        Only the absorbed batches' rows are copied, into the free slots after the running
        rows; nothing is re-padded. Returns the absorbing batch; the others are emptied.
        """
        batches = [b for b in batches if len(b)]
        if not batches:
            raise ValueError("concatenate needs at least one non-empty batch")
        if len(batches) == 1:
            return batches[0]
        if any(b.cache is None for b in batches):
            raise ValueError("concatenate needs prefilled batches")
        base = max(batches, key=lambda b: row_capacity(b.cache))
        others = [b for b in batches if b is not base]
        ordered = [base, *others]
        widths = np.array([b.width for b in ordered], dtype=np.int64)
        sizes = np.array([len(b) for b in ordered], dtype=np.int64)
        starts, width = batching.concat_layout(widths, sizes)
        layers = cache_layers(base.cache)
        for layer in layers:
            layer.reserve(int(starts[-1]), width + 1, base.width)
        for i, b in enumerate(others, start=1):
            theirs = cache_layers(b.cache)
            if len(theirs) != len(layers):
                raise ValueError("cannot concatenate batches whose caches differ in layers")
            for layer, other in zip(layers, theirs, strict=True):
                assert layer.rows == int(starts[i])
                layer.append_rows(other, b.width)
                other.release()
            b.cache = None
        base.rows = [row for b in ordered for row in b.rows]
        base.cached = np.concatenate([b.cached for b in ordered])
        base._generated = np.concatenate([b._generated for b in ordered])
        base._limits = np.concatenate([b._limits for b in ordered])
        base._mins = np.concatenate([b._mins for b in ordered])
        base.input_ids = torch.cat([b.input_ids for b in ordered], dim=0)
        base._width = width
        base._rows_changed()
        for layer in layers:
            layer.view(width)
        for b in others:
            b.rows = []
        return base


def cache_argument(model: Any) -> str:
    """The name under which ``model`` takes the KV cache: ``cache`` in recent transformers
    (where ``past_key_values`` is deprecated and warns), else ``past_key_values`` (older
    releases, remote-code models, wrappers whose ``forward`` is not inspectable)."""
    forward = getattr(model, "forward", None)
    if forward is None:
        return "past_key_values"
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


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
    "ForwardError",
    "Generation",
    "SequenceRequest",
    "eos_token_ids",
]
