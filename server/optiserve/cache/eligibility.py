"""Which questions the semantic layer may look up and index: the one rule, decided here.

A question whose embedding carries no information must not be matched by similarity: every
prompt without a letter or a digit (``" "``, ``"\\t"``, ``"\\x00"``, ``"???"``, an emoji) embeds
to nearly the same vector (cosine ~1.0), so each would be served the answer of whichever was
cached first. The same holds for a prompt whose every word the embedder does not know (all
``[UNK]``, e.g. runes or letters outside its vocabulary). Such questions use the exact layer
only: they are neither looked up by similarity nor added to the vector index.
"""

from __future__ import annotations

import unicodedata
from typing import Protocol

NO_LETTERS = "semantic layer skipped: the prompt has no letters or digits"
NO_KNOWN_WORDS = (
    "semantic layer skipped: the embedder knows none of the prompt's words (all unknown tokens)"
)


class _Tokens(Protocol):
    def informative_tokens(self, text: str) -> int: ...


def has_letters_or_digits(text: str) -> bool:
    """True when ``text`` (NFKC-normalised) has at least one letter or digit."""
    return any(ch.isalnum() for ch in unicodedata.normalize("NFKC", text))


def semantic_skip_reason(text: str, embedder: _Tokens | None = None) -> str:
    """Why the semantic layer must skip ``text`` ("" when it may embed it).

    ``embedder`` (when given) is asked how many of the text's tokens carry a known word.
    """
    if not has_letters_or_digits(text):
        return NO_LETTERS
    if embedder is not None and embedder.informative_tokens(text) == 0:
        return NO_KNOWN_WORDS
    return ""


def semantic_eligible(text: str, embedder: _Tokens | None = None) -> bool:
    """True when the semantic layer may look ``text`` up and index it."""
    return not semantic_skip_reason(text, embedder)
