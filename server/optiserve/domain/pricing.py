"""Tokens by kind, prices per million tokens, and what an answer costs, in ``Decimal``.

Providers count prompt tokens differently. OpenAI's ``prompt_tokens`` *includes* the
tokens read from its prompt cache (``prompt_tokens_details.cached_tokens``); Anthropic's
``input_tokens`` *excludes* both the tokens read from and written to its cache
(``cache_read_input_tokens``, ``cache_creation_input_tokens``). :class:`TokenCounts` holds
one normalised form: ``input_tokens`` are the prompt tokens that touched no cache, so each
kind is charged once, at its own price, and ``prompt_tokens`` is the whole prompt either way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

#: Prices are per this many tokens.
MTOK = Decimal(1_000_000)
ZERO = Decimal(0)


@dataclass(frozen=True)
class TokenCounts:
    """The tokens of one answer by kind (see the module docstring)."""

    #: Prompt tokens neither read from nor written to a provider's prompt cache.
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    #: Prompt tokens written to the provider's cache with a 5-minute / 1-hour lifetime.
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0

    @property
    def cache_write_tokens(self) -> int:
        """Prompt tokens written to the provider's cache, either lifetime."""
        return self.cache_write_5m_tokens + self.cache_write_1h_tokens

    @property
    def prompt_tokens(self) -> int:
        """The whole prompt: uncached, read from the cache and written to it."""
        return self.input_tokens + self.cache_read_tokens + self.cache_write_tokens

    @classmethod
    def from_openai(
        cls, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0
    ) -> TokenCounts:
        """OpenAI's usage: ``prompt_tokens`` includes ``cached_tokens``."""
        cached = min(max(cached_tokens, 0), prompt_tokens)
        return cls(
            input_tokens=prompt_tokens - cached,
            output_tokens=completion_tokens,
            cache_read_tokens=cached,
        )

    @classmethod
    def from_anthropic(
        cls,
        input_tokens: int,
        output_tokens: int,
        cache_read_input_tokens: int = 0,
        cache_creation_input_tokens: int = 0,
        ephemeral_5m_input_tokens: int | None = None,
        ephemeral_1h_input_tokens: int | None = None,
    ) -> TokenCounts:
        """Anthropic's usage: ``input_tokens`` excludes cache reads and writes.

        The write lifetimes come from ``usage.cache_creation`` when the reply has it;
        otherwise every written token counts as a 5-minute write (the default lifetime).
        """
        if ephemeral_5m_input_tokens is None and ephemeral_1h_input_tokens is None:
            write_5m, write_1h = cache_creation_input_tokens, 0
        else:
            write_5m = ephemeral_5m_input_tokens or 0
            write_1h = ephemeral_1h_input_tokens or 0
        return cls(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_tokens=cache_read_input_tokens,
            cache_write_5m_tokens=write_5m,
            cache_write_1h_tokens=write_1h,
        )


@dataclass(frozen=True)
class Prices:
    """USD per million tokens of each kind (a local model's are usually all zero)."""

    input: Decimal = ZERO
    output: Decimal = ZERO
    cache_read: Decimal = ZERO
    cache_write_5m: Decimal = ZERO
    cache_write_1h: Decimal = ZERO

    def cost(self, counts: TokenCounts) -> Decimal:
        """What ``counts`` cost at these prices, exactly."""
        return (
            counts.input_tokens * self.input
            + counts.output_tokens * self.output
            + counts.cache_read_tokens * self.cache_read
            + counts.cache_write_5m_tokens * self.cache_write_5m
            + counts.cache_write_1h_tokens * self.cache_write_1h
        ) / MTOK

    @property
    def highest_prompt_price(self) -> Decimal:
        """The most one prompt token can cost (a cache write may cost more than input)."""
        return max(self.input, self.cache_read, self.cache_write_5m, self.cache_write_1h)

    def worst_case(self, prompt_tokens: int, max_new_tokens: int) -> Decimal:
        """The most a request can cost: every prompt token at the highest prompt price and
        every allowed output token at the output price (what a request reserves)."""
        return (prompt_tokens * self.highest_prompt_price + max_new_tokens * self.output) / MTOK

    @property
    def free(self) -> bool:
        """True when every price is zero."""
        return self.highest_prompt_price == ZERO and self.output == ZERO


def prompt_token_bound(text: str) -> int:
    """An upper bound on the tokens ``text`` takes with a byte-level BPE tokenizer (every
    token covers at least one UTF-8 byte), plus a few for the chat template's framing.

    Used before a remote provider has counted: for reservations and routing estimates.
    """
    return len(text.encode("utf-8", "surrogatepass")) + 8


def prompt_token_estimate(text: str) -> int:
    """A typical token count for ``text`` (about four characters per token in English);
    used to rank candidates and score prompts, never to charge."""
    return max(1, math.ceil(len(text) / 4))


@dataclass(frozen=True)
class BudgetPressure:
    """How close the tightest spending limit that applies to a request is to being reached.

    ``fraction`` is spend (settled plus reserved) over the limit: 0 when no limit applies,
    >= 1 when the limit is reached. ``limit`` names it (e.g. ``"tenant 'acme' daily limit
    $5.00"``) and ``resets_at`` says when it resets (UTC), for the error a client sees.
    """

    fraction: float = 0.0
    limit: str = ""
    resets_at: datetime | None = None

    @property
    def reached(self) -> bool:
        """True when the limit is spent: only free (local) models may serve."""
        return self.fraction >= 1.0
