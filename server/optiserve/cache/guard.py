"""The false-hit guard: after a vector match, decide whether two questions mean the same.

A vector match says two questions are about the same thing; it does not say they ask the
same thing ("Is X safe?" / "Is X not safe?" are far above the cosine threshold in MiniLM
space). The guard
runs these checks on the cached question and the new one:

1. Hard vetoes, rules that hold whatever the training data says (QQP rarely contains these
   pairs, so a model trained on it would not learn them; the opposite-question failure is
   exactly what a semantic cache must never serve):

   * number: both name numbers and they differ (digits, number words and ordinals:
     ``iPhone 6`` / ``iPhone 7``, ``two`` = ``2``, ``second`` = ``2nd``; list enumerators
     such as ``1)`` count nothing);
   * negation: one side negates (``not``, ``never``, ``without``, ``absence``, ``lack``...)
     and the other does not while the rest of the wording agrees (a leading "No," answers,
     it does not negate);
   * entity: each side names a proper noun or acronym the other lacks (``France`` /
     ``Germany``; ``ML`` = ``machine learning``, ``JS`` = ``JavaScript`` are the same);
   * direction: two terms swap sides of the same to/into/than/from/over (``kilometers to
     miles``; also multi-word terms in questions: ``a PDF to Word`` / ``a Word document to
     PDF``);
   * antonym: one side has a word and the other its opposite, neither both (``shortest`` /
     ``longest``, ``buy`` / ``sell``, ``biased`` / ``unbiased``; lists in
     :mod:`.guard_lexicon`);
   * calendar: both name months or weekdays and not the same ones (values, like numbers);
   * name: each side names a country, people, language or programming language the other
     lacks, whatever the case (``indian`` / ``pakistani``, ``python`` / ``java``);
   * compared: both compare things (``X vs Y``, ``between X and Y``) and each compares a
     term the other never mentions;
   * quantifier: both quantify and share no claim (``all`` / ``most`` / ``some`` / ``few``:
     ``Do all snakes lay eggs?`` / ``Do most snakes lay eggs?``);
   * tense: both open with an auxiliary, one present and one past (``Is Pluto a planet?``
     / ``Was Pluto a planet?``);
   * role: the same content words, two trading places across a relation word that is not
     symmetric (``Did Caesar defeat Pompey?`` / ``Did Pompey defeat Caesar?``; ``X vs Y``,
     ``X and Y`` and adjacent words such as ``git branch`` / ``branch in git`` are no swap).

2. The same words in the same order, once case, punctuation and contractions are set
   aside (``What's the capital of Australia?`` / ``what is the capital of australia``), are
   the same question: served.

3. Otherwise a small logistic model over cheap features gives the probability that the
   cached answer answers the new question; the match is served when it reaches the
   calibrated threshold:

   * cosine similarity (and its square);
   * the mismatch flags above as soft features, and a different wh-word;
   * lexical overlap: Jaccard of content words and the share of each side's content words
     missing from the other;
   * length: the ratio of the two lengths, and the shorter length (log) alone and times the
     cosine: the data shows a longer question's paraphrase drifts further in cosine, so the
     model learns a lower cosine bar for long texts and a higher one for short questions
     (where one changed word is the whole difference).

The weights live in ``guard_weights.json`` next to this module, trained by
``python -m optiserve.tools.train_guard`` on one fixed half of ``qqp_dev.jsonl`` (seed
fixed, numpy only) and reported on the other half by ``benchmarks/semantic_cache.py``.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from optiserve.cache.guard_lexicon import (
    ANTONYMS,
    CALENDAR,
    NAMES,
    NEGATING_PREFIX_MIN_BASE,
    NEGATING_PREFIXES,
    QUANTIFIERS,
    SYMMETRIC_JOINERS,
    TENSES,
)

WEIGHTS_FILE = Path(__file__).with_name("guard_weights.json")

_TOKEN = re.compile(r"[A-Za-z0-9]+(?:[.'’][A-Za-z0-9]+)*")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
#: List enumerators ("1) download, 2) generate", "(a)"), which order items and count nothing.
_ENUMERATOR = re.compile(r"(?:^|(?<=[\s:;,(]))\(?\d{1,2}\)(?=\s)")


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


def _ordered(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_NEGATIONS = _words(
    "not no non never none nothing nobody nowhere neither nor without cannot cant dont doesnt "
    "didnt isnt arent wasnt werent wont wouldnt shouldnt couldnt hasnt havent hadnt mustnt neednt "
    "aint absence absent lack lacks lacking "
)
_NEGATED_AUX = _words("do does did is are was were wo ca could would should has have had must need")
#: A negation flip vetoes a match only when the rest of the wording mostly agrees (an
#: "opposite question"); reworded paraphrases often move negations around.
NEGATION_VETO_MAX_MISSING = 0.25
_DIRECTION = _words("to into than from over")
#: Texts up to this many words are checked for swaps with two words of reach.
SWAP_REACH_MAX_WORDS = 20
_COMPARATIVE = _words("better worse more less rather")
_WH = ("how many", "how much", "how long", "how old", "how often", "how far")
_WH_SINGLE = ("what", "why", "how", "when", "where", "who", "whom", "whose", "which")
_STOPWORDS = _words(
    "a an the is are was were be been being am do does did doing have has had having i me my we "
    "our you your he him his she her it its they them their this that these those of in on at "
    "to for with by from up down out off over under about into onto as and or but if so than "
    "then there here can could should would will shall may might must what why how when where "
    "who whom whose which some any all much many more most very just also get got best good way "
    "ways one s t "
)

FEATURES = (
    "cosine",
    "cosine_sq",
    "number_mismatch",
    "negation_mismatch",
    "entity_mismatch",
    "wh_mismatch",
    "jaccard",
    "missing_max",
    "missing_min",
    "length_ratio",
    "log_length",
    "cosine_x_log_length",
)


@dataclass(frozen=True)
class _Parsed:
    words: tuple[str, ...]
    content: frozenset[str]
    numbers: frozenset[str]
    negations: int
    entities: frozenset[str]
    wh: str
    #: (x, direction word, y) for the content words x just before and y just after a
    #: direction word ("kilometers to miles", "Python better than Java"), and in
    #: ``directed_wide`` for the last two before and the first two after it.
    directed: frozenset[tuple[str, str, str]]
    directed_wide: frozenset[tuple[str, str, str]]
    #: month and weekday names (canonical: ``sept`` = ``september``).
    calendar: frozenset[str]
    #: countries, peoples, languages and programming languages, whatever the case
    #: (canonical: ``indian`` = ``india``).
    names: frozenset[str]
    #: stemmed content words on either side of "vs"/"versus" or in "between X and Y".
    compared: frozenset[str]


_NUMBER_WORDS = {
    w: str(i)
    for i, w in enumerate(
        _ordered(
            "zero _ two three four five six seven eight nine ten eleven twelve thirteen "
            "fourteen fifteen sixteen seventeen eighteen nineteen twenty"
        )
    )
}
_NUMBER_WORDS.update({"thirty": "30", "forty": "40", "fifty": "50"})
#: Ordinals are values too ("second moment" / "first moment"; "2nd" = "second").
_NUMBER_WORDS.update(
    {
        w: str(i)
        for i, w in enumerate(
            _ordered("first second third fourth fifth sixth seventh eighth ninth tenth"), start=1
        )
    }
)
_NUMBER_WORDS.pop("_")  # "one" is mostly a pronoun ("which one"), not a number
_SENTENCE_END = frozenset(".!?:;\n\"'`(")


def _normalise_word(word: str) -> str:
    return word.lower().replace("’", "'").replace("'", "")


def _wh_word(lower: str) -> str:
    for phrase in _WH:
        if phrase in lower:
            return str(phrase)
    for word in re.findall(r"[a-z]+", lower):
        if word in _WH_SINGLE:
            return str(word)
    return ""


def _stem(word: str) -> str:
    """A tiny suffix stripper so plural/tense variants count as the same word."""
    if word.endswith(("us", "ss", "is")):  # virus, class, analysis: no plural "s" to strip
        return word
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def _is_negation(word: str) -> bool:
    return word in _NEGATIONS or (word.endswith("nt") and word[:-2] in _NEGATED_AUX)


def _sentence_start(text: str, at: int) -> bool:
    """True when the token at ``at`` opens a sentence (so its capital says nothing)."""
    before = text[:at].rstrip()
    return not before or before[-1] in _SENTENCE_END


def parse(text: str) -> _Parsed:
    """The features of one question that do not depend on the other one.

    Not memoised here: each :class:`Guard` keeps a bounded memo of its own
    (:class:`ParseMemo`).
    """
    matches = list(_TOKEN.finditer(text))
    words = tuple(_normalise_word(m.group()) for m in matches)
    entities: set[str] = set()
    for m in matches:
        w = m.group()
        acronym = len(w) >= 2 and w.isupper() and w.isalpha()
        proper = w[:1].isupper() and not w.isupper() and not _sentence_start(text, m.start())
        if acronym or proper:
            entities.add(_normalise_word(w))
    numbers = {n.replace(",", "") for n in _NUMBER.findall(_ENUMERATOR.sub(" ", text))}
    answer_no = bool(re.match(r"\s*no\s*[,.;!]", text, re.IGNORECASE))
    numbers.update(_NUMBER_WORDS[w] for w in words if w in _NUMBER_WORDS)
    return _Parsed(
        words=words,
        content=frozenset(_stem(w) for w in words if w not in _STOPWORDS and not _is_negation(w)),
        numbers=frozenset(numbers),
        # A leading "No," answers rather than negates: it does not count.
        negations=sum(1 for w in words if _is_negation(w)) - (1 if answer_no else 0),
        entities=frozenset(entities),
        wh=_wh_word(text.lower()),
        directed=_directed(words, 1),
        directed_wide=_directed(words, 2),
        calendar=frozenset(CALENDAR[w] for w in words if w in CALENDAR),
        names=_names(text, words),
        compared=_compared(words),
    )


_RAW_NAMES = re.compile(r"(?<![\w+#-])(c\+\+|c#|f#|objective-c)(?![\w+#])", re.IGNORECASE)


def _names(text: str, words: tuple[str, ...]) -> frozenset[str]:
    """Places, peoples, languages and programming languages named in ``text``."""
    out = {NAMES[w] for w in words if w in NAMES}
    out.update(m.group(1).lower() for m in _RAW_NAMES.finditer(text))
    return frozenset(out)


_VERSUS = _words("vs vs. versus")


def _compared(words: tuple[str, ...]) -> frozenset[str]:
    """The terms a question compares: ``X vs Y``, ``X versus Y``, ``between X and Y``.

    Each term is the run of content words next to the connector (``computer science vs
    information technology`` gives all four words), stemmed.
    """

    def run(span: tuple[str, ...]) -> list[str]:
        out: list[str] = []
        for w in span:
            if w in _STOPWORDS or w in _VERSUS or w == "between":
                break
            out.append(_stem(w))
        return out

    terms: list[str] = []
    for i, w in enumerate(words):
        if w in _VERSUS:
            terms += run(words[:i][::-1]) + run(words[i + 1 :])
        elif w == "between" and "and" in words[i + 1 :]:
            j = words.index("and", i + 1)
            terms += [_stem(x) for x in words[i + 1 : j] if x not in _STOPWORDS]
            terms += run(words[j + 1 :])
    return frozenset(terms)


def antonym_mismatch(pa: _Parsed, pb: _Parsed) -> bool:
    """One side uses a word and the other its opposite, neither using both.

    ``shortest`` / ``longest``, ``buy`` / ``sell``, ``men`` / ``women`` from the curated
    :data:`~optiserve.cache.guard_lexicon.ANTONYMS`, and a negating prefix on a word the
    other side uses bare (``biased`` / ``unbiased``, ``legal`` / ``illegal``).
    """
    a, b = set(pa.words), set(pb.words)
    for x, y in ANTONYMS:
        ax, ay, bx, by = bool(a & x), bool(a & y), bool(b & x), bool(b & y)
        if (ax and not ay and by and not bx) or (ay and not ax and bx and not by):
            return True
    return _prefixed_opposite(a, b) or _prefixed_opposite(b, a)


def _prefixed_opposite(a: set[str], b: set[str]) -> bool:
    """``a`` has ``un``+w (or in/dis/non...) where ``b`` has bare w and not the prefixed one."""
    for word in a - b:
        for prefix in NEGATING_PREFIXES:
            base = word[len(prefix) :]
            if (
                word.startswith(prefix)
                and len(base) >= NEGATING_PREFIX_MIN_BASE
                and base in b
                and base not in a
            ):
                return True
    return False


def calendar_mismatch(pa: _Parsed, pb: _Parsed) -> bool:
    """Both sides name months or weekdays and not the same ones (values, like numbers)."""
    return bool(pa.calendar and pb.calendar and pa.calendar != pb.calendar)


def name_mismatch(pa: _Parsed, pb: _Parsed) -> bool:
    """Each side names a country, people, language or programming language the other lacks.

    Lower-case names escape the capitalised-entity check (``indian`` / ``pakistani``,
    ``python`` / ``java``); a demonym and its country count as one (``Indian`` = ``India``).
    """
    return bool(pa.names - pb.names and pb.names - pa.names)


def compared_mismatch(pa: _Parsed, pb: _Parsed) -> bool:
    """Both compare things (``X vs Y``, ``between X and Y``) and each compares a term the
    other question does not mention at all (``mean vs median`` / ``mode vs median``)."""
    if not pa.compared or not pb.compared:
        return False
    return _unmentioned(pa.compared, pb.content) and _unmentioned(pb.compared, pa.content)


def _unmentioned(terms: frozenset[str], content: frozenset[str]) -> bool:
    """True when some term shares no 5-letter prefix (or whole word) with ``content``
    (so ``decoration`` / ``decorating``, ``language`` / ``languages`` are one term)."""
    return any(
        not any(t[:5] == w[:5] if len(t) >= 5 and len(w) >= 5 else t == w for w in content)
        for t in terms
    )


def _directed(words: tuple[str, ...], reach: int) -> frozenset[tuple[str, str, str]]:
    """(x, direction word, y) for the last ``reach`` content words x before a direction
    word and the first ``reach`` y after it (see ``_Parsed.directed``)."""
    out: set[tuple[str, str, str]] = set()
    for i, w in enumerate(words):
        if w not in _DIRECTION:
            continue
        before = [
            _stem(x)
            for x in words[:i]
            if x not in _STOPWORDS
            and x not in _DIRECTION
            and not (w == "than" and (x in _COMPARATIVE or x.endswith("er")))
        ]
        after = [_stem(x) for x in words[i + 1 :] if x not in _STOPWORDS and x not in _DIRECTION]
        for x in before[-reach:]:
            for y in after[:reach]:
                if x != y:
                    out.add((x, w, y))
    return frozenset(out)


def _same_entity(entity: str, other: _Parsed) -> bool:
    """True when ``entity`` is spelled differently but present on the other side.

    Covers plain words (``Python`` / ``python``), truncations and typos that keep a long
    prefix (``INSTALLATIO`` / ``installation``) and acronyms (``ML`` / ``machine learning``,
    ``JS`` / ``JavaScript``).
    """
    if entity in other.words:
        return True
    for word in other.words:
        if (
            len(entity) >= 4
            and len(word) >= 4
            and (word.startswith(entity) or entity.startswith(word))
        ):
            return True
    if 2 <= len(entity) <= 5:
        initials = "".join(w[0] for w in other.words if w)
        if entity in initials:
            return True
        for word in other.words:
            if word[:1] == entity[0] and _subsequence(entity, word):
                return True
    return False


def _subsequence(short: str, long: str) -> bool:
    it = iter(long)
    return all(ch in it for ch in short)


def _vetoes(pa: _Parsed, pb: _Parsed, missing_max: float) -> list[str]:
    """Hard reasons to refuse, whatever the model says (see the module docstring).

    * number: both sides name numbers and they differ (``iPhone 6`` / ``iPhone 7``);
    * negation: one side negates and the other does not, while the rest of the wording
      mostly agrees (``Is X safe?`` / ``Is X not safe?``);
    * entity: each side names something the other does not (``France`` / ``Germany``);
    * direction: the same two words swap sides of a direction word (``kilometers to miles``
      / ``miles to kilometers``, ``A better than B`` / ``B better than A``).
    """
    out: list[str] = []
    if pa.numbers and pb.numbers and pa.numbers != pb.numbers:
        out.append("number")
    if (pa.negations > 0) != (pb.negations > 0) and missing_max <= NEGATION_VETO_MAX_MISSING:
        out.append("negation")
    only_a = {e for e in pa.entities - pb.entities if not _same_entity(e, pb)}
    only_b = {e for e in pb.entities - pa.entities if not _same_entity(e, pa)}
    if only_a and only_b:
        out.append("entity")
    # A swap: the words next to a direction word on one side appear in the other order
    # within two words of it on the other side ("a PDF to Word" / "a Word document to
    # PDF"); the direction word must be the same ("flights from London to Paris" /
    # "London to Paris flights" is no swap).
    # Two words of reach only for question-length texts: in long statements the wider
    # pairs meet by chance.
    short = max(len(pa.words), len(pb.words)) <= SWAP_REACH_MAX_WORDS
    wide_a, wide_b = (pa.directed_wide, pb.directed_wide) if short else (pa.directed, pb.directed)
    if any((y, w, x) in wide_b for x, w, y in pa.directed) or any(
        (y, w, x) in wide_a for x, w, y in pb.directed
    ):
        out.append("direction")
    for name, check in _EXTRA_VETOES:
        if check(pa, pb):
            out.append(name)
    return out


def quantifier_mismatch(pa: _Parsed, pb: _Parsed) -> bool:
    """Both sides quantify and share no claim (all / most / some / few): "some datasets,
    not all" and "all datasets" share one, so no veto."""
    qa = {QUANTIFIERS[w] for w in pa.words if w in QUANTIFIERS}
    qb = {QUANTIFIERS[w] for w in pb.words if w in QUANTIFIERS}
    return bool(qa) and bool(qb) and not qa & qb


def tense_mismatch(pa: _Parsed, pb: _Parsed) -> bool:
    """Both questions open with an auxiliary, one in the present and one in the past
    ("Is Pluto a planet?" / "Was Pluto a planet?")."""
    ta = TENSES.get(pa.words[0], "") if pa.words else ""
    tb = TENSES.get(pb.words[0], "") if pb.words else ""
    return bool(ta) and bool(tb) and ta != tb


def role_swap(pa: _Parsed, pb: _Parsed) -> bool:
    """The same content words, two of them trading places across a relation word that is
    not symmetric ("Did Caesar defeat Pompey?" / "Did Pompey defeat Caesar?"; "Python vs
    Java" / "Java vs Python" joins symmetrically and is no swap)."""
    a = [w for w in pa.words if w not in _STOPWORDS]
    b = [w for w in pb.words if w not in _STOPWORDS]
    if len(a) != len(b) or a == b or sorted(a) != sorted(b):
        return False
    moved = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
    if len(moved) != 2 or a[moved[0]] != b[moved[1]] or a[moved[1]] != b[moved[0]]:
        return False
    first, second = a[moved[0]], a[moved[1]]
    i, j = pa.words.index(first), pa.words.index(second)
    between = pa.words[min(i, j) + 1 : max(i, j)]
    # A relation word stands between them ("defeat", "orbit"); adjacent words trading
    # places are a reworded compound ("git branch" / "branch in git").
    relation = any(w not in _STOPWORDS for w in between)
    return relation and not any(w in SYMMETRIC_JOINERS for w in between)


_EXTRA_VETOES = (
    ("antonym", antonym_mismatch),
    ("quantifier", quantifier_mismatch),
    ("tense", tense_mismatch),
    ("role", role_swap),
    ("calendar", calendar_mismatch),
    ("name", name_mismatch),
    ("compared", compared_mismatch),
)


#: Contractions spelled out, so "What's" and "what is" are the same words.
_CONTRACTIONS = {
    "whats": ("what", "is"),
    "whos": ("who", "is"),
    "wheres": ("where", "is"),
    "hows": ("how", "is"),
    "whens": ("when", "is"),
    "whys": ("why", "is"),
    "thats": ("that", "is"),
    "theres": ("there", "is"),
    "im": ("i", "am"),
    "youre": ("you", "are"),
    "theyre": ("they", "are"),
}


def same_words(pa: _Parsed, pb: _Parsed) -> bool:
    """The two questions are the same words in the same order once case, punctuation and
    the contractions above are set aside ("What's the capital of Australia?" / "what is
    the capital of australia"): the same question, whatever the model's score."""

    def spelled(words: tuple[str, ...]) -> list[str]:
        return [part for w in words for part in _CONTRACTIONS.get(w, (w,))]

    return bool(pa.words) and spelled(pa.words) == spelled(pb.words)


def analyse(a: str, b: str, cosine: float) -> tuple[npt.NDArray[np.float64], list[str]]:
    """(the feature vector in :data:`FEATURES` order, the hard vetoes) of the pair."""
    return analyse_parsed(parse(a), parse(b), cosine)


def analyse_parsed(
    pa: _Parsed, pb: _Parsed, cosine: float
) -> tuple[npt.NDArray[np.float64], list[str]]:
    """:func:`analyse` of two questions already parsed."""
    union = pa.content | pb.content
    inter = pa.content & pb.content
    jaccard = len(inter) / len(union) if union else 1.0
    miss_a = len(pa.content - pb.content) / max(1, len(pa.content))
    miss_b = len(pb.content - pa.content) / max(1, len(pb.content))
    la, lb = len(pa.words), len(pb.words)
    entity_diff = {e for e in pa.entities ^ pb.entities if e not in pa.words or e not in pb.words}
    x = np.array(
        [
            cosine,
            cosine * cosine,
            1.0 if pa.numbers != pb.numbers else 0.0,
            1.0 if (pa.negations > 0) != (pb.negations > 0) else 0.0,
            min(len(entity_diff), 3) / 3.0,
            1.0 if pa.wh != pb.wh else 0.0,
            jaccard,
            max(miss_a, miss_b),
            min(miss_a, miss_b),
            min(la, lb) / max(1, la, lb),
            math.log1p(min(la, lb)),
            cosine * math.log1p(min(la, lb)),
        ],
        dtype=np.float64,
    )
    return x, _vetoes(pa, pb, max(miss_a, miss_b))


def features(a: str, b: str, cosine: float) -> npt.NDArray[np.float64]:
    """The guard's feature vector of the pair (order as in :data:`FEATURES`)."""
    return analyse(a, b, cosine)[0]


#: Questions a guard's parse memo holds at most (least recently used dropped first).
PARSE_MEMO_SIZE = 8192


class ParseMemo:
    """A bounded, thread-safe memo of :func:`parse` (least recently used dropped first).

    A cached question is checked against many new ones; the memo parses it once. The lock
    guards only the dictionary: two threads that miss on the same text may both parse it
    (same result), and no thread waits on another's parse.
    """

    def __init__(self, max_size: int = PARSE_MEMO_SIZE) -> None:
        self.max_size = max(1, int(max_size))
        self._items: OrderedDict[str, _Parsed] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def __call__(self, text: str) -> _Parsed:
        with self._lock:
            parsed = self._items.get(text)
            if parsed is not None:
                self._items.move_to_end(text)
                return parsed
        parsed = parse(text)
        with self._lock:
            self._items[text] = parsed
            self._items.move_to_end(text)
            while len(self._items) > self.max_size:
                self._items.popitem(last=False)
        return parsed


@dataclass(frozen=True)
class GuardVerdict:
    """The guard's decision on one match."""

    accepted: bool
    probability: float
    #: Short reason for the decision trace, e.g. "accept p=0.97" or "reject number p=0.12".
    reason: str


class Guard:
    """Logistic model over :func:`features`; accepts a match when p ≥ ``threshold``.

    Thread-safe; parses go through the guard's own bounded memo (``memo_size`` questions).
    """

    def __init__(
        self,
        weights: npt.NDArray[np.float64],
        bias: float,
        mean: npt.NDArray[np.float64],
        scale: npt.NDArray[np.float64],
        threshold: float,
        *,
        memo_size: int = PARSE_MEMO_SIZE,
    ) -> None:
        self.weights = weights
        self.bias = bias
        self.mean = mean
        self.scale = scale
        self.threshold = threshold
        self._parse = ParseMemo(memo_size)

    @classmethod
    def load(cls, path: str | Path = "", threshold: float | None = None) -> Guard:
        """Load weights (default: the shipped file); ``threshold`` overrides the calibrated one."""
        data = json.loads(Path(path or WEIGHTS_FILE).read_text())
        if list(data["features"]) != list(FEATURES):
            raise ValueError(f"guard weights {path} were trained on other features")
        return cls(
            weights=np.asarray(data["weights"], dtype=np.float64),
            bias=float(data["bias"]),
            mean=np.asarray(data["mean"], dtype=np.float64),
            scale=np.asarray(data["scale"], dtype=np.float64),
            threshold=float(data["threshold"] if threshold is None else threshold),
        )

    def probability(self, a: str, b: str, cosine: float) -> float:
        """Probability that ``a`` and ``b`` ask the same question."""
        return self.probability_of(self.analyse(a, b, cosine)[0])

    def analyse(self, a: str, b: str, cosine: float) -> tuple[npt.NDArray[np.float64], list[str]]:
        """:func:`analyse` with the parses memoised by this guard."""
        return analyse_parsed(self._parse(a), self._parse(b), cosine)

    def probability_of(self, x: npt.NDArray[np.float64]) -> float:
        """Probability for a precomputed feature vector."""
        z = float(((x - self.mean) / self.scale) @ self.weights + self.bias)
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))

    def check(self, cached_query: str, query: str, cosine: float) -> GuardVerdict:
        """Accept or reject serving ``cached_query``'s answer to ``query``."""
        pa, pb = self._parse(cached_query), self._parse(query)
        x, vetoes = analyse_parsed(pa, pb, cosine)
        p = self.probability_of(x)
        if vetoes:
            return GuardVerdict(False, p, f"reject {','.join(vetoes)} mismatch p={p:.3f}")
        if same_words(pa, pb):
            return GuardVerdict(True, p, f"accept same words p={p:.3f}")
        if p >= self.threshold:
            return GuardVerdict(True, p, f"accept p={p:.3f}")
        return GuardVerdict(False, p, f"reject low score p={p:.3f} < {self.threshold:.3f}")
