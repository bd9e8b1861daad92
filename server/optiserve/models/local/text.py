"""Turning generated token ids into clean text deltas.

:class:`IncrementalDetokenizer` emits text only once it is complete: it never splits a
multi-byte character or a sub-word merge (the decode of the last tokens is held back while
it ends in U+FFFD). :class:`StopMatcher` finds stop strings across delta boundaries and
holds back any tail that could still become a stop string, so a stop string is never sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, cast


class Decoder(Protocol):
    """The part of a Hugging Face tokenizer the detokenizer needs."""

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = ...) -> str:
        """Token ids to text."""
        ...


def fast_decoder(tokenizer: Any) -> Decoder:
    """The cheapest object that decodes exactly like ``tokenizer.decode``.

    For a transformers ``TokenizersBackend`` (fast) tokenizer that does no space clean-up
    and keeps the stock ``_decode``, that is its Rust ``tokenizers.Tokenizer`` (about 3x
    less overhead per call); otherwise the tokenizer itself.
    """
    try:
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:  # pragma: no cover - other transformers layouts
        return cast(Decoder, tokenizer)
    raw = getattr(tokenizer, "_tokenizer", None)
    if (
        isinstance(tokenizer, TokenizersBackend)
        and type(tokenizer)._decode is TokenizersBackend._decode
        and not getattr(tokenizer, "clean_up_tokenization_spaces", False)
        and callable(getattr(raw, "decode", None))
    ):
        return cast(Decoder, raw)
    return cast(Decoder, tokenizer)


class IncrementalDetokenizer:
    """Decodes a growing list of token ids into text deltas (the TGI prefix/read offsets)."""

    def __init__(self, tokenizer: Decoder, prompt_tail: Sequence[int] = ()) -> None:
        # Seeding with the last prompt tokens lets tokenizers that strip a leading space
        # decode the first generated token with its correct spacing.
        self._tokenizer = tokenizer
        self._ids: list[int] = list(prompt_tail)
        self._prefix = 0
        self._read = len(self._ids)

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes (possibly empty)."""
        self._ids.append(token_id)
        decode = self._tokenizer.decode
        prefix_text = decode(self._ids[self._prefix : self._read], skip_special_tokens=True)
        new_text = decode(self._ids[self._prefix :], skip_special_tokens=True)
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            delta = new_text[len(prefix_text) :]
            self._prefix = self._read
            self._read = len(self._ids)
            return delta
        return ""


class StopMatcher:
    """Cuts generated text at the first stop string, never emitting any part of one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._longest = max((len(s) for s in self._stops), default=0)
        self._pending = ""
        self.stopped = False

    def feed(self, delta: str) -> str:
        """Add a delta; return the text that is safe to emit now."""
        if self.stopped:
            return ""
        if not self._stops:
            return delta
        text = self._pending + delta
        cut = min((i for i in (text.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._pending = ""
            return text[:cut]
        hold = self._held_back(text)
        self._pending = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold]

    def flush(self) -> str:
        """Generation ended: release what was held back (nothing once a stop string matched)."""
        text, self._pending = self._pending, ""
        return "" if self.stopped else text

    def _held_back(self, text: str) -> int:
        """Length of the longest tail of ``text`` that is a proper prefix of a stop string."""
        for n in range(min(self._longest - 1, len(text)), 0, -1):
            tail = text[-n:]
            if any(s.startswith(tail) for s in self._stops):
                return n
        return 0
