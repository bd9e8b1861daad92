"""The complexity score: each documented feature fires on what it names, and only there."""

from __future__ import annotations

import pytest
from routinghelpers import read_jsonl

from optiserve.routing.complexity import SCAN_CHARS, WEIGHTS, score

FEATURES = ("code", "maths", "asks", "reasoning", "open_ended", "non_ascii", "constraints")


def test_score_and_features_are_in_range_for_every_labelled_prompt() -> None:
    for row in read_jsonl("labelled_prompts.jsonl") + read_jsonl("holdout_prompts.jsonl"):
        complexity, features = score(row["prompt"])
        assert 0.0 <= complexity <= 1.0
        values = dict(features.pairs())
        assert all(0.0 <= values[name] <= 1.0 for name in (*FEATURES, "length"))
    assert set(WEIGHTS) == {*FEATURES, "length"}


@pytest.mark.parametrize(
    ("prompt", "feature", "at_least"),
    [
        ("Look at this:\n```\nx = 1\n```", "code", 0.6),
        ("Please refactor the function.", "code", 0.35),
        ("if (a == b && c != d) { return x[i]; }", "code", 0.75),
        (r"Simplify \frac{a}{b} + \sqrt{c}", "maths", 0.8),
        (r"Is $x_1$ positive?", "maths", 0.4),
        ("Prove the theorem.", "maths", 0.9),
        ("What is 17 * 23 + 4?", "maths", 0.3),
        ("Why? How? When? Where?", "asks", 1.0),
        ("1. Name it\n2. Describe it\n3. Draw it", "asks", 0.75),
        ("Compare them and explain the trade-offs.", "reasoning", 1.0),
        ("Draft an essay.", "open_ended", 1.0),
        ("Объясни, почему небо голубое.", "non_ascii", 1.0),
        ("Answer in JSON, exactly 3 items, no more than 50 words.", "constraints", 1.0),
    ],
)
def test_each_feature_fires_on_what_it_names(prompt: str, feature: str, at_least: float) -> None:
    values = dict(score(prompt)[1].pairs())
    assert values[feature] >= at_least, values


def test_plain_prose_sets_no_content_feature() -> None:
    values = dict(score("Tell me about a 5-day trip for a high-school class.")[1].pairs())
    assert values["code"] == values["maths"] == values["non_ascii"] == 0.0
    assert values["ask_count"] == 1


def test_pleasantries_ask_nothing() -> None:
    for prompt in ("hi", "Hey, how are you?", "thanks!! bye", "Good morning :)"):
        features = score(prompt)[1]
        assert features.ask_count == 0, prompt
    assert score("Hi, what is the capital of Peru?")[1].ask_count == 1


def test_one_strong_signal_is_enough_and_signals_add_up() -> None:
    plain, _ = score("Tell me about lists.")
    code, _ = score("Tell me about lists.\n```python\nxs = [1, 2]\nxs.append(3)\n```")
    more, _ = score("Tell me about lists and why they are slow; compare them with arrays.")
    assert plain < 0.35 <= more < 0.7 <= code


def test_length_saturates_and_long_prompts_are_scanned_at_both_ends() -> None:
    filler = "The meeting was long and nothing was decided. " * 2000
    assert score(filler)[1].length == 1.0
    assert len(filler) > 2 * SCAN_CHARS
    tail_code = filler + "\nFix this:\n```js\nconst x = a => a + 1;\n```"
    assert score(tail_code)[1].code >= 0.6
    head_maths = "Prove the lemma below.\n" + filler
    assert score(head_maths)[1].maths >= 0.45
    middle = filler[: len(filler) // 2] + "```python\nx = 1\n```" + filler[len(filler) // 2 :]
    assert score(middle)[1].code == 0.0  # the middle is not scanned (documented)
