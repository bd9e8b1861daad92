"""The prompts of a benchmark point: the workload's own (cycled in a seeded order), or
synthetic ones of the asked lengths; then a share of them repeated for the cache."""

from __future__ import annotations

import random

from optiserve.benchmarking.schedule import prompt_lengths
from optiserve.domain.benchmark import Point, Workload

#: Common English words: with byte-level BPE tokenizers (GPT-2, Llama 3, the demo model's)
#: each is about one token after a space, so a prompt of N words is about N tokens. The
#: report gives the measured prompt tokens (the server's usage), never this approximation.
_WORD_TEXT = (
    "the of and to in is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there would their we him been has when who "
    "will more no if out so said what up its about into than them can only other new some "
    "could time these two may then do first any my now such like our over man me even "
    "most made after also did many before must through back years where much your way "
    "well down should because each just those people how too little state good very make "
    "world still own see men work long get here between both life being under never day "
    "same another know while last might us great old year off come since against go came "
    "right used take"
)
_WORDS = tuple(_WORD_TEXT.split())


def synthetic_prompt(tokens: int, rng: random.Random) -> str:
    """About ``tokens`` tokens of plain words drawn with ``rng``, ending in a question mark.

    The approximation: ``tokens - 1`` common words (about one token each after a space,
    see :data:`_WORDS`) plus the ``?``; a tokenizer that splits differently gives a few
    more or fewer. Reports use the server's measured prompt tokens, not this count.
    """
    words = [rng.choice(_WORDS) for _ in range(max(1, tokens - 1))]
    return " ".join(words).capitalize() + "?"


def repeat_count(n: int, fraction: float) -> int:
    """How many of ``n`` prompts repeat an earlier one: ``fraction`` of them, rounded (the
    first prompt has nothing earlier to repeat)."""
    return min(max(0, n - 1), round(min(1.0, max(0.0, fraction)) * n))


def point_prompts(workload: Workload, point: Point, n: int, seed: int) -> list[str]:
    """``n`` prompts for ``point``: the workload's own (cycled in a seeded order) or
    synthetic ones of ``point.input_tokens`` on average; then :func:`repeat_count` of them,
    at seeded positions, replaced by an earlier prompt of the point so the cache can
    answer them. The same arguments give the same prompts."""
    rng = random.Random(seed)
    if workload.prompts:
        order = list(workload.prompts)
        rng.shuffle(order)
        prompts = [order[i % len(order)] for i in range(n)]
    else:
        lengths = prompt_lengths(
            n, point.input_tokens, workload.input_distribution, workload.input_spread, seed
        )
        prompts = [synthetic_prompt(length, rng) for length in lengths]
    positions = rng.sample(range(1, n), repeat_count(n, workload.repeat_fraction)) if n > 1 else []
    for i in sorted(positions):
        prompts[i] = prompts[rng.randrange(i)]
    return prompts
