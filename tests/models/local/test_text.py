"""The detokenizer's fast decoder decodes exactly like the tokenizer it stands in for."""

from __future__ import annotations

import random

from tiny_lm import TinyLM

from optiserve.models.local.text import IncrementalDetokenizer, fast_decoder


def test_fast_decoder_matches_tokenizer(tiny_lm: TinyLM) -> None:
    tok = tiny_lm.tokenizer
    fast = fast_decoder(tok)
    assert fast is not tok  # the tiny models use fast tokenizers: the Rust path is taken
    rng = random.Random(0)
    for _ in range(200):
        ids = [rng.randrange(len(tok)) for _ in range(rng.randint(0, 12))]
        for skip in (True, False):
            assert fast.decode(ids, skip_special_tokens=skip) == tok.decode(
                ids, skip_special_tokens=skip
            )


def test_incremental_text_is_the_same_with_either_decoder(tiny_lm: TinyLM) -> None:
    tok = tiny_lm.tokenizer
    rng = random.Random(1)
    ids = [rng.randrange(4, len(tok)) for _ in range(300)]
    texts = []
    for decoder in (tok, fast_decoder(tok)):
        detok = IncrementalDetokenizer(decoder, ids[:4])
        texts.append([detok.push(t) for t in ids[4:]])
    assert texts[0] == texts[1]
