"""The local backend: resolve_sampling, and token-id stops (special-token stop strings,
chat end-of-turn tokens) through the backend, its scheduler and the batch."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tiny_lm import ForcedToken

from optiserve.domain.errors import InvalidRequest
from optiserve.domain.types import ChatMessage, FinishReason, GenerateRequest, SamplingParams
from optiserve.models.base import BackendDelta, BackendFinish
from optiserve.models.config import ModelConfig
from optiserve.models.local.backend import LocalHFBackend
from optiserve.models.local.config import EngineConfig
from optiserve.models.local.stops import TokenStops

CHAT = (ChatMessage("user", "Name a data structure."),)
PROMPT = "Return the number of items in a container"


@pytest.fixture(scope="module")
def loaded(tiny_chat_dir: Path) -> Iterator[tuple[LocalHFBackend, ForcedToken]]:
    """The backend serving the tiny chat model, its model wrapped to force tokens."""
    config = ModelConfig(
        name="chat",
        source=str(tiny_chat_dir),
        device="cpu",
        default_max_new_tokens=8,
        max_new_tokens_cap=64,
        default_min_new_tokens=3,
    )
    backend = LocalHFBackend(config, EngineConfig())
    backend.load()
    assert backend.scheduler is not None
    forced = ForcedToken(backend.scheduler.model)
    backend.scheduler.model = forced
    try:
        yield backend, forced
    finally:
        backend.close()


@pytest.fixture
def backend(loaded: tuple[LocalHFBackend, ForcedToken]) -> Iterator[LocalHFBackend]:
    yield loaded[0]
    loaded[1].token = None


@pytest.fixture
def forced(loaded: tuple[LocalHFBackend, ForcedToken]) -> ForcedToken:
    return loaded[1]


def _token_id(backend: LocalHFBackend, text: str) -> int:
    return int(backend._tokenizer.convert_tokens_to_ids(text))


async def _run(
    backend: LocalHFBackend, *, chat: bool = False, **sampling: object
) -> tuple[str, BackendFinish]:
    params = backend.resolve_sampling(SamplingParams(**sampling))  # type: ignore[arg-type]
    request = GenerateRequest(
        "r", prompt="" if chat else PROMPT, messages=CHAT if chat else (), sampling=params
    )
    parts: list[str] = []
    async for item in backend.stream(request):
        if isinstance(item, BackendFinish):
            return "".join(parts), item
        if isinstance(item, BackendDelta):
            parts.append(item.text)
    raise AssertionError("the stream ended without a BackendFinish")


def test_resolve_sampling_fills_defaults_and_checks_ranges(backend: LocalHFBackend) -> None:
    resolved = backend.resolve_sampling(SamplingParams())
    assert (resolved.max_new_tokens, resolved.min_new_tokens) == (8, 3)
    # A request for fewer tokens than the default minimum lowers the minimum.
    assert backend.resolve_sampling(SamplingParams(max_new_tokens=2)).min_new_tokens == 2
    explicit = SamplingParams(max_new_tokens=20, min_new_tokens=0)
    assert backend.resolve_sampling(explicit) == explicit
    with pytest.raises(InvalidRequest, match=r"max_new_tokens must be in \[1, 64\]"):
        backend.resolve_sampling(SamplingParams(max_new_tokens=65))
    with pytest.raises(InvalidRequest, match=r"min_new_tokens must be in \[0, 8\].*default"):
        backend.resolve_sampling(SamplingParams(min_new_tokens=9))
    with pytest.raises(InvalidRequest, match=r"min_new_tokens must be in \[0, 4\]"):
        backend.resolve_sampling(SamplingParams(max_new_tokens=4, min_new_tokens=5))


def test_token_stops_of_the_tokenizer(backend: LocalHFBackend) -> None:
    tok = backend._tokenizer
    im_end, eot, unk = (_token_id(backend, t) for t in ("<|im_end|>", "<|eot_id|>", "<unk>"))
    stops = TokenStops(tok, [tok.eos_token_id])
    assert stops.end_of_turn == (im_end,)  # <|eot_id|> is special but never emitted
    assert stops.for_request(("<unk>", "plain text", "</s>"), chat=False) == ((unk,),)
    assert stops.for_request(("<|eot_id|>",), chat=True) == ((eot,), (im_end,))
    assert stops.for_request((), chat=False) == ()
    assert TokenStops(tok, [tok.eos_token_id, im_end]).end_of_turn == ()  # already an EOS


async def test_chat_answers_stop_at_the_end_of_turn_token(
    backend: LocalHFBackend, forced: ForcedToken
) -> None:
    two, _ = await _run(backend, chat=True, max_new_tokens=2)
    forced.token, forced.at = _token_id(backend, "<|im_end|>"), 3
    text, done = await _run(backend, chat=True, max_new_tokens=10, min_new_tokens=0)
    assert done.finish_reason is FinishReason.STOP_SEQUENCE
    assert done.completion_tokens == 3
    assert text == two
    # A prompt (no chat template) does not stop there: the token is just skipped text.
    text, done = await _run(backend, max_new_tokens=10, min_new_tokens=0)
    assert (done.finish_reason, done.completion_tokens) == (FinishReason.LENGTH, 10)


async def test_a_special_token_stop_string_stops_at_token_level(
    backend: LocalHFBackend, forced: ForcedToken
) -> None:
    one, _ = await _run(backend, max_new_tokens=1)
    forced.token, forced.at = _token_id(backend, "<unk>"), 2
    text, done = await _run(backend, max_new_tokens=10, min_new_tokens=0, stop=("<unk>",))
    assert (done.finish_reason, done.completion_tokens, text) == (
        FinishReason.STOP_SEQUENCE,
        2,
        one,
    )
    _, done = await _run(backend, max_new_tokens=10, min_new_tokens=0)  # no stop: goes on
    assert done.finish_reason is FinishReason.LENGTH
    # Below min_new_tokens (the model's default here, 3) the stop token is masked too.
    _, done = await _run(backend, max_new_tokens=10, stop=("<unk>",))
    assert done.finish_reason is FinishReason.LENGTH


async def test_min_new_tokens_holds_back_the_end_of_turn_token(
    backend: LocalHFBackend, forced: ForcedToken
) -> None:
    forced.token, forced.at = _token_id(backend, "<|im_end|>"), 1
    _, done = await _run(backend, chat=True, max_new_tokens=4, min_new_tokens=0)
    assert (done.finish_reason, done.completion_tokens) == (FinishReason.STOP_SEQUENCE, 1)
    _, done = await _run(backend, chat=True, max_new_tokens=4, min_new_tokens=2)
    assert (done.finish_reason, done.completion_tokens) == (FinishReason.LENGTH, 4)
