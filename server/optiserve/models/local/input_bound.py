"""A cheap refusal of input that cannot fit: characters a tokenizer puts in one token.

If no token of a tokenizer ever covers more than ``k`` characters of the input, a prompt
of ``n`` characters has at least ``n / k`` tokens, so a prompt longer than ``k`` times the
prompt tokens a model takes can be refused from ``len(prompt)`` alone, before the
tokenizer (seconds, for megabytes) sees it. :func:`char_bound` derives ``k`` once, at
load, from the tokenizer's definition (its ``tokenizer.json``), and only when ``k`` is a
true bound; otherwise it returns None and only the token count decides.

What makes it a true bound, component by component:

* the vocabulary: the longest token string. Byte-level BPE tokens are spelled one
  character per byte and a character has at least one byte; SentencePiece pieces spell
  a space as one "▁"; byte-fallback tokens ("<0x41>") are longer than the byte they
  stand for. Added tokens count with their content;
* nothing may be dropped unseen: a character missing from the vocabulary must still
  become a token. Sound: byte-level BPE whose vocabulary holds all 256 byte symbols,
  byte fallback with all 256 byte tokens, or BPE with an unknown token that is not fused
  (one per character). Unigram without byte fallback, WordPiece and WordLevel map a whole
  run of unknown text to one token: no bound;
* the normalizer may shorten the text: canonical composition (NFC, NFKC) merges at most
  4 code points into one (Unicode's stability policy keeps new composites out), a
  string ``Replace`` at most ``len(pattern) / len(content)``; one that can delete text
  (Strip, StripAccents, Bert, Precompiled, Nmt, regex or empty replacements): no bound;
* whitespace may be swallowed whole: by pre-tokenizers that split on it (Whitespace,
  WhitespaceSplit, Bert) and added tokens with ``lstrip``/``rstrip``. Then only the other
  characters are counted (:attr:`CharBound.skips_whitespace`). A pre-tokenizer that
  removes anything else: no bound.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

#: Code points merged into one at most by canonical composition (e.g. U+1F82).
_COMPOSITION = 4
#: Every character ``str.isspace`` accepts: a superset of Unicode White_Space, which is
#: what tokenizers split on (counting fewer characters keeps the bound a lower bound).
_WHITESPACE = tuple(chr(c) for c in range(0x110000) if chr(c).isspace())
_BYTE_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))


@dataclass(frozen=True)
class CharBound:
    """At most ``chars_per_token`` characters of input end up in one token; with
    ``skips_whitespace`` that holds for the characters other than whitespace."""

    chars_per_token: int
    skips_whitespace: bool = False

    def count(self, texts: Iterable[str]) -> int:
        """The characters of ``texts`` that the bound counts (cheap: ``len``, plus one
        ``str.count`` pass per whitespace character when whitespace is skipped)."""
        texts = list(texts)
        total = sum(len(t) for t in texts)
        if self.skips_whitespace:
            total -= sum(t.count(ws) for t in texts for ws in _WHITESPACE)
        return total


def char_bound(tokenizer: Any) -> CharBound | None:
    """The bound of a Hugging Face fast tokenizer, or None when none is sound (a slow
    tokenizer, or components that can drop or merge unbounded text; see the module)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    try:
        spec = json.loads(backend.to_str())
    except Exception:  # an unusual backend: no bound rather than a wrong one
        log.warning("cannot read the tokenizer's definition; no character bound")
        return None
    return bound_from_spec(spec)


def bound_from_spec(spec: dict[str, Any]) -> CharBound | None:
    """:func:`char_bound` for a parsed ``tokenizer.json``."""
    pre = _pre_tokenizer(spec.get("pre_tokenizer"))
    factor = _normalizer_factor(spec.get("normalizer"))
    if pre is None or factor is None:
        return None
    byte_level, skips = pre
    longest = _longest_token(spec.get("model") or {}, byte_level)
    if longest is None:
        return None
    for added in spec.get("added_tokens") or ():
        longest = max(longest, len(str(added.get("content", ""))))
        skips = skips or bool(added.get("lstrip")) or bool(added.get("rstrip"))
    if skips and _normalizer_makes_whitespace(spec.get("normalizer")):
        return None  # it could turn text into whitespace that is then swallowed
    return CharBound(max(1, math.ceil(longest * factor)), skips)


def _longest_token(model: dict[str, Any], byte_level: bool) -> int | None:
    """The longest token string, when the model never drops or fuses unknown text."""
    kind = model.get("type")
    vocab = model.get("vocab")
    if kind == "BPE" and isinstance(vocab, dict):
        tokens: set[str] = set(vocab)
        complete = (byte_level and set(_byte_level_alphabet()) <= tokens) or (
            bool(model.get("byte_fallback")) and set(_BYTE_TOKENS) <= tokens
        )
        unk = model.get("unk_token")
        if not complete and not (unk in tokens and not model.get("fuse_unk")):
            return None
    elif kind == "Unigram" and isinstance(vocab, list):
        tokens = {str(piece[0]) for piece in vocab}
        if not (model.get("byte_fallback") and set(_BYTE_TOKENS) <= tokens):
            return None
    else:
        return None
    return max((len(t) for t in tokens), default=0) or None


def _byte_level_alphabet() -> list[str]:
    from tokenizers import pre_tokenizers

    return list(pre_tokenizers.ByteLevel.alphabet())


def _pre_tokenizer(spec: dict[str, Any] | None) -> tuple[bool, bool] | None:
    """``(byte_level, skips_whitespace)``, or None when it may remove other text."""
    if spec is None:
        return False, False
    kind = spec.get("type")
    if kind == "Sequence":
        byte_level = skips = False
        for part in spec.get("pretokenizers") or ():
            found = _pre_tokenizer(part)
            if found is None:
                return None
            byte_level, skips = byte_level or found[0], skips or found[1]
        return byte_level, skips
    if kind == "ByteLevel":
        return True, False
    if kind in ("Metaspace", "Digits", "UnicodeScripts", "FixedLength"):
        return False, False
    if kind in ("Split", "Punctuation"):
        return None if spec.get("behavior") == "Removed" else (False, False)
    if kind in ("Whitespace", "WhitespaceSplit", "BertPreTokenizer"):
        return False, True
    if kind == "CharDelimiterSplit" and str(spec.get("delimiter", "x")).isspace():
        return False, True
    return None


def _normalizer_factor(spec: dict[str, Any] | None) -> float | None:
    """How many input characters may become one at most, or None when unbounded."""
    if spec is None:
        return 1.0
    kind = spec.get("type")
    if kind == "Sequence":
        factor = 1.0
        for part in spec.get("normalizers") or ():
            found = _normalizer_factor(part)
            if found is None:
                return None
            factor *= found
        return factor
    if kind in ("NFD", "NFKD", "Lowercase", "Prepend", "ByteLevel"):
        return 1.0  # decomposition, lower-casing and prefixes never shorten the text
    if kind in ("NFC", "NFKC"):
        return float(_COMPOSITION)
    if kind == "Replace":
        pattern = (spec.get("pattern") or {}).get("String")
        content = spec.get("content")
        if not isinstance(pattern, str) or not pattern or not content:
            return None
        return max(1.0, len(pattern) / len(content))
    return None


def _normalizer_makes_whitespace(spec: dict[str, Any] | None) -> bool:
    if spec is None:
        return False
    if spec.get("type") == "Sequence":
        return any(_normalizer_makes_whitespace(p) for p in spec.get("normalizers") or ())
    content = spec.get("content")
    return (
        spec.get("type") == "Replace"
        and isinstance(content, str)
        and any(c.isspace() for c in content)
    )


__all__ = ["CharBound", "bound_from_spec", "char_bound"]
