"""Prompt compression: protected spans kept byte for byte, repeats and boilerplate gone,
lossless keeps every other character, lossy saves more, short text skipped."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from routinghelpers import read_jsonl

from optiserve.domain.pricing import prompt_token_estimate
from optiserve.domain.types import ChatMessage, CompressionMode
from optiserve.routing.compression import (
    SKIP_BELOW_CHARS,
    compress,
    compress_messages,
)

LOSSLESS, LOSSY = CompressionMode.LOSSLESS, CompressionMode.LOSSY

FENCE = (
    "```python\ndef f(x):\n    return  x  *  2   # the very  same\n\n\n\nprint(f(1))\n"
    "print(f(1))\n```"
)
TILDE_FENCE = "~~~\nthe   basically   fenced\n~~~"
JSON = '{"a":  1,\n  "b": [1,   2, {"c": "the } very ] end"}],\n  "d": null}'
DOUBLE = '"the   very  basic  quote"'
SINGLE = "'just   a   single quote'"
CURLY = "“the   really   curly one”"
INLINE = "`the  just  code`"
URL = "https://example.com/the/very/path?q=a%20b"
INDENTED = "    for x in  the_list:\n        print( x )\n\n    done  =  True"
PROTECTED = (FENCE, TILDE_FENCE, JSON, DOUBLE, SINGLE, CURLY, INLINE, URL, INDENTED)

MIXED = f"""Basically,   the   thing is   that we   really need a   fix.

Here is the code:
{FENCE}
And   the other one:
{TILDE_FENCE}
The payload was {JSON} and it is just   very   wrong.
She said {DOUBLE} and then {SINGLE} and {CURLY}.
Run {INLINE} as   described at {URL} for the details.

{INDENTED}

Basically,   the   thing is   that we   really need a   fix.
"""


def no_whitespace(text: str) -> str:
    return re.sub(r"\s+", "", text)


@pytest.mark.parametrize("mode", [LOSSLESS, LOSSY])
def test_protected_spans_are_untouched_byte_for_byte(mode: CompressionMode) -> None:
    result = compress(MIXED, mode)
    for span in PROTECTED:
        assert span in result.text, span
    assert result.tokens_after < result.tokens_before


def test_lossless_collapses_whitespace_and_drops_the_repeat() -> None:
    text = compress(MIXED, LOSSLESS).text
    assert text.startswith("Basically, the thing is that we really need a fix.\n\nHere is")
    assert text.count("we really need a fix") == 1
    assert "\n\n\n" not in text.replace(FENCE, "")
    assert text.endswith(INDENTED)


def test_lossy_drops_low_information_words_outside_protected_text() -> None:
    text = compress(MIXED, LOSSY).text
    assert text.startswith("thing is that we need fix.\n\nHere is code:")
    assert "payload was {" in text
    assert "it is wrong." in text
    assert "as described at https://" in text


def test_repeated_lines_are_removed_first_kept() -> None:
    lines = [f"Line number {i} says something different from the others." for i in range(6)]
    text = "\n".join(
        [
            *lines[:3],
            lines[1],
            "  Line number 1   says something different from the others.",
            *lines[3:],
            lines[0],
        ]
    )
    result = compress(text, LOSSLESS)
    assert result.text == "\n".join(lines)
    # Lines without a letter or digit are structure: kept even when repeated.
    table = "| a | b |\n|---|---|\n| 1 | 2 |\n\n" * 2 + "x" * SKIP_BELOW_CHARS
    assert compress(table, LOSSLESS).text.count("|---|---|") == 2


def test_boilerplate_lines_and_openings_are_removed() -> None:
    text = (
        "I hope this email finds you well. Please note that the invoice is attached.\n"
        "As an AI language model, I cannot open attachments.\n"
        "The total is 420 EUR and it is due on the 3rd of March, as agreed last month.\n"
        "--\n"
        "Sent from my iPhone\n"
        "Get Outlook for iOS\n"
    )
    assert compress(text, LOSSLESS).text == (
        "the invoice is attached.\n"
        "I cannot open attachments.\n"
        "The total is 420 EUR and it is due on the 3rd of March, as agreed last month."
    )


#: Prose lines: no protected characters, no indentation that makes them code, no
#: boilerplate, not structure only.
PROSE_LINE = st.text(alphabet=st.sampled_from("ab cd.\t,!?"), max_size=30).filter(
    lambda line: re.search(r"[a-z]", line) is not None and not line.startswith(("\t", "    "))
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(PROSE_LINE, st.just(""), st.just("   ")), min_size=1, max_size=40))
def test_lossless_keeps_every_character_of_the_lines_it_keeps(lines: list[str]) -> None:
    text = "\n".join(lines) + "\n" + "z" * SKIP_BELOW_CHARS
    out = compress(text, LOSSLESS).text
    expected, seen = [], set()
    for line in [*lines, "z" * SKIP_BELOW_CHARS]:
        key = " ".join(line.split())
        if key and key not in seen:
            seen.add(key)
            expected.append(key)
    assert [" ".join(line.split()) for line in out.split("\n") if line.strip()] == expected
    assert no_whitespace(out) == no_whitespace("".join(expected))
    # Idempotent: a second pass finds nothing to remove.
    assert compress(out, LOSSLESS).text == out


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab \"'`{}[]()\n\t.,xyz:/"), max_size=400))
def test_lossless_never_invents_characters(text: str) -> None:
    """Whatever the brackets and quotes, the output's characters (whitespace aside) are the
    input's in the same order, some left out."""
    out = compress(text + " " * SKIP_BELOW_CHARS + "end", LOSSLESS).text
    remaining = iter(no_whitespace(text + "end"))
    assert all(char in remaining for char in no_whitespace(out))


def test_lossy_saves_more_than_lossless_on_verbose_prose() -> None:
    texts = [row["text"] for row in read_jsonl("verbose_prose.jsonl")]
    assert len(texts) >= 10
    before = sum(prompt_token_estimate(t) for t in texts)
    lossless = sum(compress(t, LOSSLESS).tokens_after for t in texts)
    lossy = sum(compress(t, LOSSY).tokens_after for t in texts)
    assert lossy < lossless < before
    assert (before - lossless) / before >= 0.05
    assert (before - lossy) / before >= 0.15


def test_tokens_before_and_after_by_the_given_counter() -> None:
    def words(text: str) -> int:
        return len(text.split())

    result = compress(MIXED, LOSSY, count_tokens=words)
    assert result.tokens_before == words(MIXED)
    assert result.tokens_after == words(result.text) < result.tokens_before
    assert result.note == ""


def test_short_text_is_skipped_and_off_does_nothing() -> None:
    short = "Basically   the   very   short   prompt."
    result = compress(short, LOSSY)
    assert result.text == short
    assert result.tokens_before == result.tokens_after == prompt_token_estimate(short)
    assert (
        result.note == f"skipped: {len(short)} characters < {SKIP_BELOW_CHARS}, too short to gain"
    )
    off = compress(MIXED, CompressionMode.OFF)
    assert (off.text, off.note) == (MIXED, "skipped: compression is off")


def test_nothing_to_remove_returns_the_input() -> None:
    text = "Dense prose with single spaces only. " * 10
    result = compress(text.strip(), LOSSLESS)
    assert result.text == text.strip()
    assert result.note == "skipped: nothing to remove"


def test_crlf_and_unbalanced_brackets() -> None:
    text = "First line   here.\r\nSecond [unclosed   bracket line.\r\n" + "More  text. " * 20
    out = compress(text, LOSSLESS).text
    assert out.startswith("First line here.\nSecond [unclosed bracket line.\n")


def test_deterministic() -> None:
    assert compress(MIXED, LOSSY) == compress(MIXED, LOSSY)


def test_messages_compress_user_and_system_turns_only() -> None:
    verbose = "Basically,   I   really   need   the   answer.   " * 10
    messages = (
        ChatMessage("system", verbose),
        ChatMessage("user", verbose),
        ChatMessage("assistant", verbose),
        ChatMessage("user", "ok"),
    )
    result = compress_messages(messages, LOSSY)
    system, user, assistant, short = result.messages
    assert assistant == messages[2]
    assert short == messages[3]
    assert system.content == user.content == compress(verbose, LOSSY).text
    assert len(user.content) < len(verbose)
    counts = [prompt_token_estimate(m.content) for m in messages]
    assert result.tokens_before == sum(counts)
    assert result.tokens_after == 2 * prompt_token_estimate(user.content) + sum(counts[2:])
    assert result.note == ""


def test_messages_notes_when_nothing_ran() -> None:
    only_short = compress_messages((ChatMessage("user", "hi"),), LOSSLESS)
    assert only_short.note.startswith("skipped: 2 characters")
    assert only_short.tokens_before == only_short.tokens_after
    answers = compress_messages((ChatMessage("assistant", "x" * 500),), LOSSLESS)
    assert answers.note == "skipped: no user or system turn"
