"""Seeds are 64-bit (the proto field is uint64): every bit selects a different sample.

Through the live server, i.e. the batch path users run.
"""

from __future__ import annotations

from optiserve_client import Client

PROMPT = "Once upon a time"
#: Pairs that a 32-bit seed merged: 1, 2^32 + 1 and 2^40 + 1 (equal below bit 32); 0 and
#: 2^63 (equal below bit 63); and the largest uint64.
SEEDS = [1, 2**32 + 1, 2**40 + 1, 0, 2**63, 2**64 - 1]


def _sample(client: Client, seed: int) -> str:
    return client.generate(PROMPT, max_new_tokens=24, temperature=1.0, seed=seed).text


def test_seeds_differing_only_above_bit_32_give_different_text(client: Client) -> None:
    texts = {seed: _sample(client, seed) for seed in SEEDS}
    assert len(set(texts.values())) == len(SEEDS), texts


def test_the_same_64_bit_seed_gives_the_same_text(client: Client) -> None:
    for seed in (2**40 + 1, 2**64 - 1):
        assert _sample(client, seed) == _sample(client, seed)
