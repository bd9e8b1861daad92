"""The character bound behind check_input, and tokenizing off the event loop."""

from __future__ import annotations

import asyncio
import json
import random
import time
import unicodedata
from collections.abc import Iterator
from typing import Any

import pytest
from tiny_lm import TinyLM
from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers

from optiserve.domain.errors import InvalidRequest
from optiserve.domain.types import ChatMessage, GenerateRequest, SamplingParams
from optiserve.models.config import ModelConfig
from optiserve.models.local.backend import LocalHFBackend
from optiserve.models.local.config import EngineConfig
from optiserve.models.local.input_bound import CharBound, bound_from_spec, char_bound


def _texts(vocab: list[str]) -> list[str]:
    """Ordinary, odd and adversarial inputs: prose, code, every script, control and
    combining characters, runs of whitespace, and the longest tokens repeated."""
    rng = random.Random(0)
    longest = sorted(vocab, key=len)[-5:]
    texts = [
        "The quick brown fox jumps over the lazy dog. " * 20,
        "def f(x):\n    return x ** 2  # square\n" * 10,
        "Ünïcödé — ελληνικά, русский, 中文字符, العربية, 🙂🚀👩‍👩‍👧 " * 10,
        " " * 500 + "\t\n" * 200,
        "".join(chr(rng.randrange(0x20, 0x2FFF)) for _ in range(2000)),
        "".join(chr(rng.randrange(0, 0x10FFFF)) for _ in range(500))
        .encode("utf-8", "replace")
        .decode("utf-8", "replace"),
        "a" + "\u0301" * 300,
    ]
    texts += [t * 50 for t in longest]
    return texts


def _assert_bound_holds(tokenizer: Any, bound: CharBound, texts: list[str]) -> None:
    for text in texts:
        tokens = len(tokenizer.encode(text, add_special_tokens=False))
        counted = bound.count([text])
        assert counted <= bound.chars_per_token * tokens, (text[:40], counted, tokens)


def test_the_tiny_byte_level_tokenizer_has_a_true_bound(tiny_llama: TinyLM) -> None:
    tokenizer = tiny_llama.tokenizer
    bound = char_bound(tokenizer)
    assert bound is not None and not bound.skips_whitespace
    vocab = list(tokenizer.get_vocab())
    assert bound.chars_per_token == max(len(t) for t in vocab)
    _assert_bound_holds(tokenizer, bound, _texts(vocab))
    # Tight: the longest token repeated is close to the bound.
    longest = max(vocab, key=len)
    text = tokenizer.convert_tokens_to_string([longest]) * 100
    tokens = len(tokenizer.encode(text, add_special_tokens=False))
    assert len(text) > 0.3 * bound.chars_per_token * tokens


def _spec(
    model: dict[str, Any],
    normalizer: dict[str, Any] | None = None,
    pre_tokenizer: dict[str, Any] | None = None,
    added: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "model": model,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "added_tokens": added or [],
    }


BYTES = {f"<0x{b:02X}>": b for b in range(256)}
SP_BPE = {"type": "BPE", "vocab": {**BYTES, "▁the": 300, "▁": 301}, "byte_fallback": True}


def test_bound_rules_per_component() -> None:
    assert bound_from_spec(_spec(SP_BPE)) == CharBound(6)  # "<0x41>" is the longest
    # Byte fallback without all 256 byte tokens, or an unknown token that is fused, or
    # none at all: text can vanish into one token or none.
    partial = {**SP_BPE, "vocab": {"▁the": 0, "<0x41>": 1}}
    assert bound_from_spec(_spec(partial)) is None
    fused = {"type": "BPE", "vocab": {"a": 0, "<unk>": 1}, "unk_token": "<unk>", "fuse_unk": True}
    assert bound_from_spec(_spec(fused)) is None
    assert bound_from_spec(_spec({**fused, "fuse_unk": False})) == CharBound(5)
    assert bound_from_spec(_spec({"type": "BPE", "vocab": {"a": 0}})) is None
    assert bound_from_spec(_spec({"type": "WordPiece", "vocab": {"a": 0}})) is None
    unigram = {"type": "Unigram", "vocab": [["▁a", -1.0], ["<unk>", 0.0]], "unk_id": 1}
    assert bound_from_spec(_spec(unigram)) is None
    # Normalizers: composition merges up to 4 code points; deleting ones give no bound.
    assert bound_from_spec(_spec(SP_BPE, {"type": "NFC"})) == CharBound(24)
    sequence = {
        "type": "Sequence",
        "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        ],
    }
    assert bound_from_spec(_spec(SP_BPE, sequence)) == CharBound(6)
    shrink = {"type": "Replace", "pattern": {"String": "..."}, "content": "…"}
    assert bound_from_spec(_spec(SP_BPE, shrink)) == CharBound(18)
    for deleting in ("Strip", "StripAccents", "BertNormalizer", "Precompiled", "Nmt"):
        assert bound_from_spec(_spec(SP_BPE, {"type": deleting})) is None
    delete = {"type": "Replace", "pattern": {"String": "x"}, "content": ""}
    assert bound_from_spec(_spec(SP_BPE, delete)) is None
    regex = {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "}
    assert bound_from_spec(_spec(SP_BPE, regex)) is None
    # Whitespace swallowed whole: count the other characters.
    assert bound_from_spec(_spec(SP_BPE, None, {"type": "WhitespaceSplit"})) == CharBound(6, True)
    lstrip = [{"content": "<mask>", "lstrip": True, "rstrip": False}]
    assert bound_from_spec(_spec(SP_BPE, added=lstrip)) == CharBound(6, True)
    removed = {"type": "Split", "pattern": {"String": "x"}, "behavior": "Removed"}
    assert bound_from_spec(_spec(SP_BPE, None, removed)) is None
    to_space = {"type": "Replace", "pattern": {"String": "_"}, "content": " "}
    assert bound_from_spec(_spec(SP_BPE, to_space, {"type": "Whitespace"})) is None
    # Added tokens count with their content.
    long_added = [{"content": "<|a very long special token|>"}]
    assert bound_from_spec(_spec(SP_BPE, added=long_added)) == CharBound(29)


def test_swallowed_whitespace_is_not_counted() -> None:
    """A whitespace-splitting tokenizer (and an lstrip added token) turn any run of
    whitespace into nothing: only the other characters bound the tokens."""
    vocab = {"a": 0, "b": 1, "<unk>": 2, "ab": 3}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("a", "b")], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.normalizer = normalizers.NFC()
    tok.add_tokens([AddedToken("<m>", lstrip=True)])
    spec = bound_from_spec(json.loads(tok.to_str()))
    assert spec is not None and spec.skips_whitespace
    texts = ["ab" + " " * 5000 + "ab", "a    <m>", "\u3000\u2028 x " * 300, "ab" * 100]
    for text in texts:
        tokens = len(tok.encode(text).ids)
        assert spec.count([text]) <= spec.chars_per_token * tokens, text[:20]
    assert len(texts[0]) > spec.chars_per_token * len(tok.encode(texts[0]).ids)


# ----------------------------------------------------------------------------- backend


@pytest.fixture(scope="module")
def backend(tiny_llama: TinyLM) -> Iterator[LocalHFBackend]:
    config = ModelConfig(
        name="tiny",
        source=str(tiny_llama.path),
        device="cpu",
        default_max_new_tokens=8,
        max_new_tokens_cap=64,
    )
    loaded = LocalHFBackend(config, EngineConfig(max_batch_tokens=4096))
    loaded.load()
    try:
        yield loaded
    finally:
        loaded.close()


def _request(backend: LocalHFBackend, prompt: str = "", **kw: Any) -> GenerateRequest:
    params = backend.resolve_sampling(SamplingParams(max_new_tokens=12))
    return GenerateRequest("r", prompt=prompt, sampling=params, **kw)


def test_check_input_refuses_from_the_character_count(backend: LocalHFBackend) -> None:
    bound = backend._bound
    assert bound is not None
    most = bound.chars_per_token * (512 - 12)  # context 512 < max_batch_tokens 4096
    backend.check_input(_request(backend, "x" * most))
    with pytest.raises(InvalidRequest) as info:
        backend.check_input(_request(backend, "x" * (most + 1)))
    message = info.value.message
    assert message.startswith(f"prompt ({most + 1} characters, so at least 501 tokens) + ")
    assert "max_new_tokens (12) exceeds the context length (512) of model 'tiny'" in message
    assert f"at most {most} characters (500 tokens) can fit; shorten the prompt" in message
    half = "y" * (most // 2 + 1)
    chat = (ChatMessage("system", half), ChatMessage("user", half))
    with pytest.raises(InvalidRequest, match=rf"^messages \({2 * len(half)} characters"):
        backend.check_input(_request(backend, messages=chat))


def test_the_bound_uses_max_batch_tokens_when_it_is_lower(tiny_llama: TinyLM) -> None:
    config = ModelConfig(name="small", source=str(tiny_llama.path), device="cpu")
    small = LocalHFBackend(config, EngineConfig(max_batch_tokens=100))
    small.load()
    try:
        assert small._bound is not None
        request = _request(small, "z" * (small._bound.chars_per_token * 88 + 1))
        with pytest.raises(InvalidRequest, match=r"exceeds max_batch_tokens \(100\)"):
            small.check_input(request)
    finally:
        small.close()


async def test_long_prompts_are_tokenized_off_the_event_loop(
    backend: LocalHFBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no character bound (a tokenizer without a sound one), a long prompt is
    tokenized on a worker thread: the event loop keeps running meanwhile."""
    monkeypatch.setattr(backend, "_bound", None)
    prompt = "several words of ordinary text " * 15_000  # 465 000 characters
    gaps: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0.02)
    started = time.perf_counter()
    with pytest.raises(InvalidRequest, match="tokens"):
        async for _ in backend.stream(_request(backend, prompt)):
            pass
    took = time.perf_counter() - started
    stop.set()
    await ticking
    assert took > 0.1, "the tokenizing should take a while for this test to mean anything"
    assert max(gaps) < 0.1, f"the event loop stalled {max(gaps) * 1000:.0f} ms"


def _sentencepiece_bpe() -> Tokenizer:
    """A Llama-2-style tokenizer: "▁" for spaces, byte fallback, fused unknowns."""
    pieces = ["▁", "t", "h", "e", "▁t", "he", "▁the", "▁the▁the", "<unk>"]
    vocab = {
        **{f"<0x{b:02X}>": b for b in range(256)},
        **{p: 256 + i for i, p in enumerate(pieces)},
    }
    merges = [("▁", "t"), ("h", "e"), ("▁t", "he"), ("▁the", "▁the")]
    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    )
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    return tok


def _nfc_byte_level() -> Tokenizer:
    """A Qwen-style tokenizer: NFC, then byte-level BPE over the full byte alphabet."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {c: i for i, c in enumerate(sorted(alphabet))}
    vocab["ĠĠ"] = len(vocab)
    vocab["ĠĠĠĠ"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("Ġ", "Ġ"), ("ĠĠ", "ĠĠ")]))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    return tok


@pytest.mark.parametrize("build", [_sentencepiece_bpe, _nfc_byte_level])
def test_the_bound_holds_for_built_tokenizers(build: Any) -> None:
    tok = build()
    bound = bound_from_spec(json.loads(tok.to_str()))
    assert bound is not None
    composed = "\u1f82" * 50  # each one 4 code points decomposed: NFC merges them back
    decomposed = unicodedata.normalize("NFD", composed)
    texts = [*_texts(list(tok.get_vocab())), decomposed, "the " * 500, " " * 3000]
    for text in texts:
        tokens = len(tok.encode(text).ids)
        assert bound.count([text]) <= bound.chars_per_token * tokens, text[:30]
