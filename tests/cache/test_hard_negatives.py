"""The adversarial set through the real cache: hand-written pairs that must never share an
answer (negation, numbers and units, dates, entity swaps, direction, comparatives,
quantifiers, the same words with a different ask), and rewordings that must hit.

Each pair gets its own tenant (so its own partition): ``a`` is stored, ``b`` is asked.

Issue 10's target is 0 false hits and 90% of the rewordings served. The guard does not
reach it yet, so these tests hold the measured level (a ratchet: any regression fails them;
lower the bounds as the guard improves): see ``benchmarks/semantic_cache.py``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from cachehelpers import chat

from optiserve.cache import ResponseCache
from optiserve.domain.types import FinishReason

DATA = Path(__file__).parent / "data"
#: Measured with the guard of this commit: 13 of 360 hard negatives served another's answer
#: (49 before the quantifier, tense and role vetoes), 102 of 119 rewordings served. The
#: bounds leave a margin of 2 for pairs at a threshold, whose int8 embeddings may differ a
#: little from one CPU to another.
MAX_FALSE_HITS = 13 + 2
MIN_REWORDINGS_SERVED = 102 - 2
Factory = Callable[..., ResponseCache]


def _pairs(name: str) -> list[dict[str, str]]:
    lines = (DATA / name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


async def _served(cache: ResponseCache, pairs: list[dict[str, str]]) -> list[bool]:
    for i, pair in enumerate(pairs):
        request = chat(pair["a"], tenant=f"pair-{i}")
        await cache.store(request, "m", f"answer {i}", 3, 0.0, FinishReason.EOS)
    served = []
    for i, pair in enumerate(pairs):
        result = await cache.lookup(chat(pair["b"], tenant=f"pair-{i}"), "m")
        assert result.entry is None or result.entry.text == f"answer {i}"
        served.append(result.entry is not None)
    return served


async def test_hard_negatives_served_another_answer_stay_few(make_cache: Factory) -> None:
    pairs = _pairs("hard_negatives.jsonl")
    assert len(pairs) >= 300
    cache = make_cache()
    served = await _served(cache, pairs)
    wrong = [(p["kind"], p["a"], p["b"]) for p, hit in zip(pairs, served, strict=True) if hit]
    assert len(wrong) <= MAX_FALSE_HITS, f"{len(wrong)} false hits, e.g. {wrong[:5]}"


async def test_rewordings_are_served_as_often_as_measured(make_cache: Factory) -> None:
    pairs = _pairs("must_hits.jsonl")
    assert len(pairs) >= 100
    cache = make_cache()
    served = await _served(cache, pairs)
    missed = [(p["a"], p["b"]) for p, hit in zip(pairs, served, strict=True) if not hit]
    assert sum(served) >= MIN_REWORDINGS_SERVED, f"{len(missed)} missed, e.g. {missed[:5]}"
