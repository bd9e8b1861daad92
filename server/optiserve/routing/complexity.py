"""How demanding a prompt is, from cheap features any reader can check.

The router sends easy prompts to cheap models and hard ones to capable models. It cannot
ask a model how hard a prompt is (that would cost what routing saves), so it scores the
prompt from surface features, each a number in [0, 1]:

============  ==========================================================================
length        estimated tokens, ``sqrt(tokens / 2000)`` capped at 1 (long prompts carry
              more to read and usually more to do)
code          a code fence gives 0.6; each piece of code syntax (``def f(``, ``=>``, ``;``
              at a line end, ``x[i]``...) 0.25; each programming word ("function",
              "python", "refactor", "sql"...) 0.35
maths         each LaTeX command 0.4, each operator between numbers or variables 0.15,
              each maths word ("prove", "integral", "eigenvalues", "probability"...) 0.45
asks          how many things are asked: question marks, leading imperative verbs ("write",
              "explain", "list"...) and enumerated items; 1 ask gives 0.25, 4 or more give 1
reasoning     words asking for reasoning: "why", "explain", "compare", "step by step",
              "analyze", "trade-offs", "pros and cons"... (one gives 0.5, two give 1)
open_ended    words asking for a long piece of writing: "summarize", "describe", "draft",
              "essay", "letter", "plan"... (one gives 0.5, two give 1)
non_ascii     the share of non-ASCII characters, doubled and capped at 1 (other scripts and
              languages are served worse by small models)
constraints   words that constrain the answer: "must", "exactly", "JSON", "format", "under
              150 words", "bulleted"... (three give 1)
============  ==========================================================================

A prompt that is only pleasantries ("hi", "thanks!", "how are you?") asks nothing: its
questions are not counted.

The features combine by a weighted noisy-OR, ``score = 1 - prod(1 - weight * feature)``
(weights in :data:`WEIGHTS`), so one strong signal is enough (a code fence alone asks for a
capable model) and several weak ones add up, yet the score stays in [0, 1]. The weights and
word lists were set on ``tests/routing/data/labelled_prompts.jsonl``; a held-out set,
never tuned on, checks that they generalise.

Speed: one lower-casing and a few precompiled regular expressions, each one pass over the
text (all word lists share one alternation); prompts longer than :data:`SCAN_CHARS` are
scored on their head and tail (the length feature still sees the whole prompt), so scoring
costs well under a millisecond whatever the prompt's size.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, fields

from optiserve.domain.pricing import prompt_token_estimate

#: Weight of each feature in the noisy-OR (see the module docstring).
WEIGHTS: dict[str, float] = {
    "length": 0.5,
    "code": 0.8,
    "maths": 0.75,
    "asks": 0.6,
    "reasoning": 0.5,
    "open_ended": 0.5,
    "non_ascii": 0.3,
    "constraints": 0.35,
}

#: Characters scanned for the content features: the first 3,000 and the last 1,000.
SCAN_CHARS = 4_000
_TAIL_CHARS = 1_000
#: Longest prompt checked for being only pleasantries.
_PLEASANTRY_CHARS = 80
#: Estimated tokens at which the length feature reaches 1.
_FULL_LENGTH_TOKENS = 2_000

#: Words and phrases that signal each feature: regular expressions (lower case) joined by
#: ``|`` (no ``|`` inside one).
_WORD_LISTS: dict[str, str] = {
    "code": (
        r"code|functions?|bug|debug|compiler?|compile|refactor|implement|algorithm|regex|python"
        r"|javascript|typescript|js|rust|golang|go program|java|c\+\+|sql|query|bash|script|api"
        r"|stack trace|exception|keyerror|unit tests?|thread-safe|kubernetes|docker|async|await"
        r"|deadlock|segfault|o\(1\)|o\(n\)|o\(log n\)"
    ),
    "maths": (
        r"prove|proof|theorem|lemma|integral|integrate|derivative|differentiate|derive|gradient"
        r"|equations?|solve|matrix|eigen\w*|probability|expected value|variance|inequality"
        r"|polynomial|logarithm|modulo|prime numbers?|irrational|factorial|calculus|algebra|real x"
        r"|dx"
    ),
    "reasoning": (
        r"why|explain|explica|compare|contrast|step by step|each step|analy[sz]e|analysis|evaluate"
        r"|trade-?offs?|pros and cons|for and against|justify|critique|implications|reasoning"
        r"|design|difference between|how does|how do|in depth|detailed|recommend|assess|discuss"
        r"|causes|what would|whether"
    ),
    "open_ended": (
        r"summari[sz]e|describe|draft|rewrite|essay|story|speech|letter|email|paragraphs?|article"
        r"|report|description|plan|itinerary|outline|arguments"
    ),
    "constraints": (
        r"must|exactly|json|yaml|csv|xml|format|schema|at least|at most|no more than|\d+ words"
        r"|bulleted|bullet points?|table|only|do not|don't|strictly|keep it|mention"
        r"|in one paragraph|in two sentences|for a [\w-]+ student|with examples|each stage"
    ),
}
_IMPERATIVES = (
    r"write|explain|list|describe|compare|summari[sz]e|give|create|generate|translate|find"
    r"|calculate|compute|design|implement|analy[sz]e|evaluate|suggest|provide|draft|outline"
    r"|identify|prove|show|derive|fix|refactor|review|tell|name|define|rewrite|convert|solve|plan"
    r"|recommend|discuss|then|read|explica"
)
_PLEASANTRY_WORDS = (
    r"hi|hello|hey|there|thanks|thank you|so much|good (?:morning|afternoon|evening|night)"
    r"|how are you|how's it going|what's up|ok|okay|cool|great|bye|goodbye|see you|that's all"
    r"|cheers"
)


def _alternation(words: Iterable[str]) -> str:
    return "(?:" + "|".join(words) + ")"


def _by_first_letter(words: Iterable[str]) -> str:
    """An alternation of ``words`` grouped by their first letter. Python's ``re`` tries the
    alternatives one by one at every position; grouped, it tries one per letter, which
    makes the word scan about three times faster."""
    groups: dict[str, list[str]] = {}
    for word in words:
        key = word[0] if word[0].isalpha() else ""
        groups.setdefault(key, []).append(word[1:] if key else word)
    return _alternation(
        f"{key}{_alternation(rest)}" if key else _alternation(rest)
        for key, rest in sorted(groups.items())
    )


#: Every word list in one scan; :func:`_feature_of` says which list a match came from.
_WORDS = re.compile(
    r"\b" + _by_first_letter(w for ws in _WORD_LISTS.values() for w in ws.split("|")) + r"\b"
)
_FEATURE_WORDS = {name: re.compile(words) for name, words in _WORD_LISTS.items()}

_FENCES = ("```", "~~~")
#: Each of these patterns begins with a literal character, which lets ``re`` skip ahead to
#: the next candidate instead of trying every position (one pattern with all of them in is
#: five times slower).
_CODE_SYNTAX = (
    re.compile(
        r"=>|->|==|!=|&&|\|\||:=|\+=|#include|[;{][ \t]*$|\n[ \t]*\}|\[(?<=\w\[)\w+\]",
        re.MULTILINE,
    ),
    re.compile(
        r"def \w+\(|class \w+[:({]|import \w|function\s*\w*\s*\(|console\.log|print\(|fn \w"
        r"|func \w|select\b[^;\n]{1,200}?\bfrom\b"
    ),
)
_LATEX = re.compile(
    r"\\(?:frac|sum|int|sqrt|prod|lim|alpha|beta|theta|pi|cdot|le|ge)\b|\$[^$\n]+\$"
)
#: An operator spaced between words or brackets ("x + y"; an unspaced hyphen is a word's),
#: a power ("x^2"); then an operator between numbers ("3 - 1", "2/3"), a coefficient ("2x").
_ARITHMETIC = (
    re.compile(r" [-+*/^=] (?<=[\w)\]] [-+*/^=] )(?=[\w(\[])|\^(?<=\w\^)\w"),
    re.compile(r"[0-9](?:\s*[-+*/^=<>]\s*[0-9]|[a-z]\b(?! ?-))"),
)
_IMPERATIVE = re.compile(rf"(?:^|[.!?:;]\s+|\n\s*)\b(?:{_IMPERATIVES})\b", re.MULTILINE)
_ENUMERATION = re.compile(r"^\s*(?:\d+[.)]|[-*•]|\(?[a-h]\))\s+|\s\([a-h]\)\s", re.MULTILINE)
_PLEASANTRIES = re.compile(rf"^(?:\W|\b(?:{_PLEASANTRY_WORDS})\b)*$")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")


@functools.lru_cache(maxsize=4096)
def _feature_of(word: str) -> str:
    """The feature whose word list ``word`` (a match of :data:`_WORDS`) belongs to."""
    for name, pattern in _FEATURE_WORDS.items():
        if pattern.fullmatch(word):
            return name
    raise AssertionError(f"{word!r} matched no word list")


def _count(patterns: Iterable[re.Pattern[str]], text: str) -> int:
    return sum(len(p.findall(text)) for p in patterns)


#: What one match of each kind adds to its feature (then capped at 1).
_CODE_PER_SYNTAX, _CODE_PER_WORD, _CODE_FENCE = 0.25, 0.35, 0.6
_MATHS_PER_LATEX, _MATHS_PER_OPERATOR, _MATHS_PER_WORD = 0.4, 0.15, 0.45


@dataclass(frozen=True)
class PromptFeatures:
    """The features a prompt was scored on: each in [0, 1] but ``tokens`` and
    ``ask_count``, which are counts."""

    tokens: int
    length: float
    code: float
    maths: float
    ask_count: int
    asks: float
    reasoning: float
    open_ended: float
    non_ascii: float
    constraints: float

    def pairs(self) -> tuple[tuple[str, float], ...]:
        """The features as (name, value) pairs, for the route trace."""
        return tuple((f.name, round(float(getattr(self, f.name)), 4)) for f in fields(self))


def score(text: str) -> tuple[float, PromptFeatures]:
    """The complexity of ``text`` in [0, 1] and the features it came from."""
    tokens = prompt_token_estimate(text)
    if len(text) > SCAN_CHARS:
        text = text[: SCAN_CHARS - _TAIL_CHARS] + "\n" + text[-_TAIL_CHARS:]
    lower = text.lower()
    words = Counter(_feature_of(word) for word in _WORDS.findall(lower))
    stripped = lower.strip()
    if len(stripped) <= _PLEASANTRY_CHARS and _PLEASANTRIES.match(stripped):
        ask_count = 0
    else:
        asks = len(_IMPERATIVE.findall(lower)) + len(_ENUMERATION.findall(lower))
        ask_count = max(1, lower.count("?") + asks)
    non_ascii = 0.0 if text.isascii() else 2 * len(_NON_ASCII.findall(text)) / len(text)
    features = PromptFeatures(
        tokens=tokens,
        length=min(1.0, math.sqrt(tokens / _FULL_LENGTH_TOKENS)),
        code=min(
            1.0,
            _CODE_FENCE * any(fence in lower for fence in _FENCES)
            + _CODE_PER_SYNTAX * _count(_CODE_SYNTAX, lower)
            + _CODE_PER_WORD * words["code"],
        ),
        maths=min(
            1.0,
            _MATHS_PER_LATEX * len(_LATEX.findall(lower))
            + _MATHS_PER_OPERATOR * _count(_ARITHMETIC, lower)
            + _MATHS_PER_WORD * words["maths"],
        ),
        ask_count=ask_count,
        asks=min(1.0, ask_count / 4),
        reasoning=min(1.0, words["reasoning"] / 2),
        open_ended=min(1.0, words["open_ended"] / 2),
        non_ascii=min(1.0, non_ascii),
        constraints=min(1.0, words["constraints"] / 3),
    )
    keep = 1.0
    for name, weight in WEIGHTS.items():
        keep *= 1.0 - weight * float(getattr(features, name))
    return 1.0 - keep, features
