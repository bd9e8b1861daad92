"""The guard's lexical vetoes: opposites, calendar values, names, compared terms,
quantifiers, tense and swapped roles."""

from __future__ import annotations

import pytest

from optiserve.cache.guard import (
    analyse,
    antonym_mismatch,
    calendar_mismatch,
    compared_mismatch,
    name_mismatch,
    parse,
)

PARAPHRASES = [
    ("How do I reverse a list in Python?", "How can I reverse a list in Python?"),
    ("What is the best way to lose weight?", "How do I lose weight fast?"),
    ("What are the pros and cons of Python?", "What are the advantages of Python and its cons?"),
    ("What happened in March 2016?", "What happened in march of 2016?"),
    ("Is Indian food spicy?", "Is food in India spicy?"),
    ("What is the difference between C++ and Java?", "How does Java differ from C++?"),
    ("Python vs Java: which is faster?", "Which is faster, Python or Java?"),
    ("interior design vs interior decoration?", "interior design versus interior decorating?"),
    ("What is the difference between a 32-bit and 64-bit OS?", "32 bit vs 64 bit OS?"),
    ("Why is Kim famous?", "Why is Kim so famous?"),
    ("How do I stand infront of a crowd?", "How do I stand in front of a crowd?"),
]


@pytest.mark.parametrize(("a", "b"), PARAPHRASES)
def test_paraphrases_pass_every_new_veto(a: str, b: str) -> None:
    vetoes = analyse(a, b, 0.95)[1]
    assert not {"antonym", "calendar", "name", "compared"} & set(vetoes), vetoes


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Which is the shortest river in India?", "Which is the longest river in India?"),
        ("What is the best pickup line?", "What is the worst pickup line?"),
        ("What is the cheapest hotel in Goa?", "What is the most expensive hotel in Goa?"),
        ("What should I eat before a workout?", "What should I eat after a workout?"),
        ("How do I increase my metabolism?", "How do I decrease my metabolism?"),
        ("Where can I buy used books?", "Where can I sell used books?"),
        ("What is the minimum wage in Texas?", "What is the maximum wage in Texas?"),
        ("Why do women live longer?", "Why do men live longer?"),
        (
            "What are the advantages of nuclear power?",
            "What are the disadvantages of nuclear power?",
        ),
        ("What are unbiased facts about smoking?", "What are biased facts about smoking?"),
        ("Is it legal to own a sword?", "Is it illegal to own a sword?"),
        ("How do I lose weight?", "How do I gain weight?"),
        ("What is the best gift you have given?", "What is the best gift you have received?"),
        ("What are anti-feminism critiques?", "What are pro feminism critiques?"),
    ],
)
def test_antonym_veto(a: str, b: str) -> None:
    assert antonym_mismatch(parse(a), parse(b))
    assert "antonym" in analyse(a, b, 0.97)[1]


def test_antonym_needs_the_word_missing_from_the_other_side() -> None:
    both = parse("What are the best and worst phones?")
    assert not antonym_mismatch(both, parse("What are the worst phones?"))
    assert not antonym_mismatch(parse("How long is a short film?"), parse("How long is a film?"))


@pytest.mark.parametrize(
    ("a", "b", "veto"),
    [
        ("What happens in september?", "What happens in february?", True),
        ("Is the bank open on Sunday?", "Is the bank open on Monday?", True),
        ("Song in the ad (Sept 2016)?", "Song in the ad (September 2016)?", False),
        ("What happens in September?", "What happens every year?", False),
        ("May I park here in June?", "Can I park here in June?", False),
    ],
)
def test_calendar_veto(a: str, b: str, veto: bool) -> None:
    assert calendar_mismatch(parse(a), parse(b)) is veto


@pytest.mark.parametrize(
    ("a", "b", "veto"),
    [
        ("Do indian people like cricket?", "Do pakistani people like cricket?", True),
        ("how do i learn python fast?", "how do i learn java fast?", True),
        ("Is C++ harder than Java?", "Is C# harder than Java?", True),
        ("what is indian food like?", "what is food in india like?", False),
        ("Is python hard?", "Is python hard to learn in india?", False),
        ("Who would win, China or Russia?", "Who would win, Russian or China?", False),
    ],
)
def test_name_veto(a: str, b: str, veto: bool) -> None:
    assert name_mismatch(parse(a), parse(b)) is veto


@pytest.mark.parametrize(
    ("a", "b", "veto"),
    [
        (
            "Difference between sociology and psychology?",
            "Difference between sociology and science?",
            True,
        ),
        ("mean vs median?", "mode vs median?", True),
        ("lion vs bear: who wins?", "Who would win, a lion or a bear?", False),
        ("mean vs median?", "When should I use the median rather than the mean?", False),
    ],
)
def test_compared_veto(a: str, b: str, veto: bool) -> None:
    assert compared_mismatch(parse(a), parse(b)) is veto


def _vetoes(a: str, b: str) -> list[str]:
    return analyse(a, b, 0.9)[1]


@pytest.mark.parametrize(
    ("a", "b", "veto"),
    [
        ("Do all snakes lay eggs?", "Do most snakes lay eggs?", "quantifier"),
        ("Does it ever snow in Hawaii?", "Does it always snow in Hawaii?", "quantifier"),
        ("Is any even number prime?", "Is every even number prime?", "quantifier"),
        ("Is Pluto a planet?", "Was Pluto a planet?", "tense"),
        ("Did Caesar defeat Pompey?", "Did Pompey defeat Caesar?", "role"),
        ("Does the Earth orbit the Sun?", "Does the Sun orbit the Earth?", "role"),
        ("how to turn on dark mode in chrome", "how to turn off dark mode in chrome", "antonym"),
        ("How many seconds are in 3 hours?", "How many minutes are in 3 hours?", "antonym"),
    ],
)
def test_quantifier_tense_role_and_more_opposites(a: str, b: str, veto: str) -> None:
    assert veto in _vetoes(a, b), _vetoes(a, b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        # The same claim, or a shared one.
        ("Is there any way to speed up pip?", "Is there some way to speed up pip?"),
        (
            "Streaming works for some datasets, not all.",
            "Streaming does not work for all datasets.",
        ),
        ("Do all birds fly?", "Does every bird fly?"),
        # Symmetric joiners and adjacent words trading places are rewordings.
        ("Python vs Java for web apps?", "Java vs Python for web apps?"),
        ("How do I delete a git branch?", "How can I delete a branch in git?"),
        ("What is the tallest mountain in Africa?", "Which mountain is the tallest in Africa?"),
        # One side has no auxiliary to compare.
        ("Is Python slow?", "Why is Python slow?"),
    ],
)
def test_rewordings_pass_the_new_vetoes(a: str, b: str) -> None:
    assert not {"quantifier", "tense", "role"} & set(_vetoes(a, b)), _vetoes(a, b)
