"""Anthropic's messages API, with automatic prompt caching (:mod:`.prompts`).

Every call streams. ``message_start`` carries the prompt's usage (``input_tokens``, which
excludes the cache reads and writes, ``cache_read_input_tokens``,
``cache_creation_input_tokens`` and its split by lifetime in ``cache_creation``),
``message_delta`` the stop reason and ``output_tokens`` (and, from newer API versions,
updated prompt figures, which win), and ``message_stop`` ends the call: without it the
stream is cut. Normalised by :meth:`~optiserve.domain.pricing.TokenCounts.from_anthropic`.

Sampling: ``stop`` maps to ``stop_sequences``. The messages API of the SDK this build uses
(anthropic 2.x) takes no ``temperature``, ``top_p``, ``top_k`` or ``seed``: the model
samples its own way, and those settings are not sent (a request is not refused for them,
as a route may mix providers). A structured answer is the input of a forced tool call
(:mod:`.structured`), streamed as ``input_json_delta`` pieces.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import anthropic
import httpx2
from anthropic.types import (
    MessageDeltaUsage,
    RawContentBlockDeltaEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    RawMessageStopEvent,
)

from optiserve.domain.errors import FailedPrecondition
from optiserve.domain.pricing import TokenCounts
from optiserve.domain.types import FinishReason, GenerateRequest, SamplingParams
from optiserve.models.remote.events import Accepted, Final, Text, UpstreamEvent, Usage
from optiserve.models.remote.prompts import anthropic_prompt
from optiserve.models.remote.structured import AnswerSchema
from optiserve.models.remote.upstream import RemoteBackend

_FINISH = {"max_tokens": FinishReason.LENGTH, "stop_sequence": FinishReason.STOP_SEQUENCE}


class AnthropicBackend(RemoteBackend[anthropic.AsyncAnthropic]):
    """A model of an ``anthropic`` provider."""

    structured_as_tool_input = True

    def resolve_sampling(self, params: SamplingParams) -> SamplingParams:
        """As for every remote model, and: the Messages API of this SDK takes no
        temperature, top_p, top_k or seed, so a request that sets any of them is refused
        (FAILED_PRECONDITION) rather than answered with sampling it did not ask for."""
        params = super().resolve_sampling(params)
        unusable = [
            name
            for name, value, default in (
                ("temperature", params.temperature, 0.0),
                ("top_p", params.top_p, 1.0),
                ("top_k", params.top_k, 0),
                ("seed", params.seed, None),
            )
            if value != default
        ]
        if unusable:
            raise FailedPrecondition(
                f"sampling.{', sampling.'.join(unusable)} cannot be honoured by model "
                f"{self._model.name!r}: provider {self._provider.name!r} (anthropic) chooses "
                "its own sampling; leave them unset, or use an OpenAI-compatible or local model"
            )
        return params

    def _client(self, base_url: str | None, http: httpx2.AsyncClient) -> anthropic.AsyncAnthropic:
        p = self._provider
        return anthropic.AsyncAnthropic(
            api_key=self._key,
            base_url=base_url,
            http_client=http,
            max_retries=0,
            timeout=httpx2.Timeout(p.timeout_s, connect=p.connect_timeout_s),
        )

    def _params(self, request: GenerateRequest, schema: AnswerSchema | None) -> dict[str, Any]:
        p, s = self._provider, request.sampling
        prompt = anthropic_prompt(
            request, cache_min_tokens=p.prompt_cache_min_tokens, cache_ttl=p.prompt_cache_ttl
        )
        params: dict[str, Any] = {
            "model": self._model.source,
            "max_tokens": s.max_new_tokens,
            "messages": prompt.messages,
        }
        if prompt.system:
            params["system"] = prompt.system
        if s.stop:
            params["stop_sequences"] = list(s.stop)
        if schema is not None:
            params["tools"], params["tool_choice"] = schema.anthropic_tool()
        return params

    async def _call(
        self,
        client: anthropic.AsyncAnthropic,
        request: GenerateRequest,
        schema: AnswerSchema | None,
        timeout: httpx2.Timeout,
    ) -> AsyncGenerator[UpstreamEvent, None]:
        stream = await client.messages.create(
            **self._params(request, schema), stream=True, timeout=timeout
        )
        try:
            yield Accepted()
            prompt_usage: Any = None
            reason = FinishReason.EOS
            async for event in stream:
                if isinstance(event, RawMessageStartEvent):
                    prompt_usage = getattr(event.message, "usage", None)
                elif isinstance(event, RawContentBlockDeltaEvent):
                    delta = event.delta
                    if delta.type == "text_delta" and schema is None and delta.text:
                        yield Text(delta.text)
                    elif delta.type == "input_json_delta" and schema and delta.partial_json:
                        yield Text(delta.partial_json)
                elif isinstance(event, RawMessageDeltaEvent):
                    reason = _FINISH.get(event.delta.stop_reason or "", FinishReason.EOS)
                    counts = _counts(prompt_usage, getattr(event, "usage", None))
                    if counts is not None:
                        yield Usage(counts)
                elif isinstance(event, RawMessageStopEvent):
                    yield Final(reason)
        finally:
            await stream.close()


def _counts(prompt_usage: Any, final: MessageDeltaUsage | None) -> TokenCounts | None:
    """The call's counts from message_start's usage and message_delta's (None when either
    is missing: the reply then reported no usage)."""
    input_tokens = getattr(prompt_usage, "input_tokens", None)
    if final is None or input_tokens is None:
        return None

    def latest(name: str) -> int:
        value = getattr(final, name, None)
        if value is None:
            value = getattr(prompt_usage, name, None)
        return int(value or 0)

    split = getattr(prompt_usage, "cache_creation", None)
    return TokenCounts.from_anthropic(
        input_tokens=latest("input_tokens"),
        output_tokens=final.output_tokens,
        cache_read_input_tokens=latest("cache_read_input_tokens"),
        cache_creation_input_tokens=latest("cache_creation_input_tokens"),
        ephemeral_5m_input_tokens=getattr(split, "ephemeral_5m_input_tokens", None),
        ephemeral_1h_input_tokens=getattr(split, "ephemeral_1h_input_tokens", None),
    )
