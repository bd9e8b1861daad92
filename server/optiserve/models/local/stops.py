"""Token-id stops: stop strings detokenization never shows, and chat end-of-turn tokens.

Generated text is detokenized with special tokens skipped, so a stop string that *is* a
special token of the tokenizer ("<|im_end|>", "</s>") can never match at text level: such a
stop becomes a token-id stop. Chat templates end every turn with an end-of-turn special
token (``<|eot_id|>``, ``<|im_end|>``, ``<|end|>``, ...); when the model's end-of-sequence ids
do not include the one its template emits, a chat answer would run on into an invented
next turn, so chat requests stop on it too. Either ends the answer with finish reason
STOP_SEQUENCE (see :class:`~optiserve.models.local.batch.SequenceRequest`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

#: Special tokens that end a turn in common chat templates (Llama 3, ChatML/Qwen, Phi-3,
#: Gemma, OpenChat, Command-R, GPT-style end of text).
END_OF_TURN_TOKENS = frozenset(
    {
        "<|eot_id|>",
        "<|eom_id|>",
        "<|im_end|>",
        "<|end|>",
        "<end_of_turn>",
        "<|end_of_turn|>",
        "<|END_OF_TURN_TOKEN|>",
        "<|endoftext|>",
    }
)


def special_tokens(tokenizer: Any) -> dict[str, int]:
    """Every special token of ``tokenizer`` (the ones detokenization skips): text -> id."""
    found: dict[str, int] = {}
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    for token_id, token in decoder.items():
        if getattr(token, "special", False):
            found[str(token.content)] = int(token_id)
    names = list(getattr(tokenizer, "all_special_tokens", ()) or ())
    if names:
        ids = tokenizer.convert_tokens_to_ids(names)
        for name, token_id in zip(names, ids, strict=True):
            if token_id is not None:
                found.setdefault(str(name), int(token_id))
    return found


def _templates(tokenizer: Any) -> str:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates (default, tool_use, ...)
        return "\n".join(str(t) for t in template.values())
    return template if isinstance(template, str) else ""


class TokenStops:
    """The token-id stops of one tokenizer, computed once at load.

    ``end_of_turn`` holds the ids of the end-of-turn special tokens its chat template
    emits that are not end-of-sequence ids already.
    """

    def __init__(self, tokenizer: Any, eos_ids: Iterable[int]) -> None:
        self._eos = {int(i) for i in eos_ids}
        self._special = special_tokens(tokenizer)
        template = _templates(tokenizer)
        self.end_of_turn: tuple[int, ...] = tuple(
            sorted(
                {
                    token_id
                    for name, token_id in self._special.items()
                    if name in END_OF_TURN_TOKENS and name in template
                }
                - self._eos
            )
        )

    def for_request(self, stop: Sequence[str], chat: bool) -> tuple[tuple[int, ...], ...]:
        """Token-id stops of a request: its stop strings that are special tokens (not
        end-of-sequence ids, which end the answer anyway), plus, for a chat request, the
        end-of-turn tokens."""
        ids = [self._special[s] for s in stop if s in self._special]
        if chat:
            ids.extend(self.end_of_turn)
        return tuple((i,) for i in dict.fromkeys(ids) if i not in self._eos)


__all__ = ["END_OF_TURN_TOKENS", "TokenStops", "special_tokens"]
