"""The false-hit guard's features, vetoes and shipped weights."""

from __future__ import annotations

import json
import threading

import pytest

from optiserve.cache import guard as guard_module
from optiserve.cache.guard import FEATURES, WEIGHTS_FILE, Guard, ParseMemo, analyse, parse


@pytest.mark.parametrize(
    ("a", "b", "veto"),
    [
        ("How do I install Python 2?", "How do I install Python 3?", "number"),
        ("Is it safe to eat raw eggs?", "Is it not safe to eat raw eggs?", "negation"),
        ("Why should I learn Java?", "Why shouldn't I learn Java?", "negation"),
        ("What is the capital of France?", "What is the capital of Germany?", "entity"),
        ("How old is Barack Obama?", "How old is Donald Trump?", "entity"),
        ("What are two ways to say hi?", "What are 3 ways to say hi?", "number"),
        ("What is the second moment of Adam?", "What is the first moment of Adam?", "number"),
        ("Why is the 3rd symphony famous?", "Why is the second symphony famous?", "number"),
        ("Is X useful in the absence of Y?", "Is X useful in the presence of Y?", "negation"),
    ],
)
def test_vetoes(a: str, b: str, veto: str) -> None:
    _, vetoes = analyse(a, b, 0.95)
    assert veto in vetoes


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("How do I learn ML quickly?", "What is the fastest way to learn machine learning?"),
        ("Is JS hard?", "Is JavaScript hard?"),
        ("How can I reset my password?", "How do I reset my password?"),
        ("No, X doesn't exist in v2.", "X does not exist in v2."),
        ("What are two ways to cook rice?", "What are 2 ways to cook rice?"),
        ("How do I lose weight?", "What is the best way to lose weight?"),
        ("It works in two steps: 1) fetch, 2) build.", "It is a two-step process: fetch, build."),
        ("What is the 2nd law of motion?", "What is the second law of motion?"),
        # Reordered around another direction word, or a "to" of purpose: no swap.
        ("Cheap flights from London to Paris?", "London to Paris cheap flights?"),
        (
            "How do I convert JSON to YAML in Python?",
            "In Python, what's the way to convert JSON to YAML?",
        ),
        # A plural is the same term ("virus" and "viruses" stem alike).
        (
            "What's the difference between a virus and bacteria?",
            "What is the difference between viruses and bacteria?",
        ),
    ],
)
def test_no_veto_on_rewording(a: str, b: str) -> None:
    _, vetoes = analyse(a, b, 0.9)
    assert vetoes == []


def test_sentence_initial_capitals_are_not_entities() -> None:
    assert parse("What is it? Then tell me.").entities == frozenset()
    assert "paris" in parse("Is Paris big?").entities


def test_shipped_weights_load_and_decide() -> None:
    data = json.loads(WEIGHTS_FILE.read_text())
    assert data["features"] == list(FEATURES)
    assert 0.0 < data["threshold"] < 1.0
    guard = Guard.load()
    same = guard.check("How do I reset my password?", "How can I reset my password?", 0.97)
    assert same.accepted, same
    vetoed = guard.check(
        "Is Python a compiled language?", "Is Python not a compiled language?", 0.97
    )
    assert not vetoed.accepted
    assert "negation" in vetoed.reason
    low = guard.check("How do I cook rice?", "How do I sell my car?", 0.3)
    assert not low.accepted
    assert Guard.load(threshold=0.0).check("a b c", "d e f", 0.1).accepted


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("How do you convert kilometers to miles?", "How do I convert miles to kilometers?"),
        ("Is Python faster than Java?", "Is Java faster than Python?"),
        ("How do I fly from London to Paris?", "How do I fly from Paris to London?"),
        # Multi-word terms swap too.
        ("How do I convert a PDF to Word?", "How do I convert a Word document to PDF?"),
        (
            "how do I merge main into my feature branch",
            "how do I merge my feature branch into main",
        ),
    ],
)
def test_direction_veto(a: str, b: str) -> None:
    assert "direction" in analyse(a, b, 0.97)[1]
    assert analyse("Python vs Java?", "Java vs Python?", 0.97)[1] == []


def test_each_guard_memoises_its_own_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[str] = []
    real = guard_module.parse

    def counting(text: str) -> object:
        parsed.append(text)
        return real(text)

    monkeypatch.setattr(guard_module, "parse", counting)
    cached, asked = "How do I reset my password?", "How can I reset my password?"
    first = Guard.load()
    verdicts = [first.check(cached, asked, 0.97) for _ in range(3)]
    assert parsed == [cached, asked], "each question parsed once by this guard"
    assert len({v.reason for v in verdicts}) == 1
    second = Guard.load()
    second.check(cached, asked, 0.97)
    assert parsed == [cached, asked] * 2, "no memo shared across guards (or the process)"
    assert first.check(cached, asked, 0.97) == second.check(cached, asked, 0.97)


def test_parse_memo_is_bounded_and_thread_safe() -> None:
    memo = ParseMemo(max_size=8)
    texts = [f"How do I install version {i} of tool {i % 5}?" for i in range(40)]

    def work(offset: int) -> None:
        for i in range(200):
            text = texts[(i * 7 + offset) % len(texts)]
            assert memo(text) == parse(text)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(memo) <= 8
    recent = memo(texts[0])
    for text in texts[1:8]:
        memo(text)
    assert memo(texts[0]) is recent, "the least recently used goes first"


def test_the_same_words_are_served_whatever_the_score() -> None:
    guard = Guard.load(threshold=0.999)  # a bar no ordinary match clears
    same = guard.check("What's the capital of Australia?", "what is the capital of australia", 0.91)
    assert same.accepted and same.reason.startswith("accept same words"), same
    reordered = guard.check("Is Python slow?", "Python is slow?", 0.97)
    assert not reordered.accepted, "the same words in another order are not the same question"
    vetoed = guard.check("What's 2 + 2?", "what is 2 + 3", 0.95)
    assert not vetoed.accepted and "number" in vetoed.reason
