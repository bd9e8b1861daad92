"""OpenAI's chat completions, and any OpenAI-compatible server (vLLM, TGI, Ollama,
llama.cpp server) through the same API, possibly on several replicas.

Every call streams with ``stream_options.include_usage``, so the usage arrives in a last
chunk after the one carrying ``finish_reason``; that chunk is the call's final event. A
stream that ends without it is cut. OpenAI's ``prompt_tokens`` includes the prompt-cache
reads (``prompt_tokens_details.cached_tokens``), normalised by
:meth:`~optiserve.domain.pricing.TokenCounts.from_openai`.

Sampling: ``temperature``, ``top_p`` (sent only below 1), ``stop`` and ``seed`` map one to
one. ``top_k`` is not part of OpenAI's API: an OpenAI-compatible server gets it as an extra
field (vLLM, TGI, llama.cpp and Ollama's OpenAI endpoint read it); OpenAI itself does not
and it is not sent there. ``max_new_tokens`` is ``max_completion_tokens`` for OpenAI and
``max_tokens`` (the field every compatible server knows) otherwise.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import httpx2
import openai

from optiserve.domain.pricing import TokenCounts
from optiserve.domain.types import FinishReason, GenerateRequest
from optiserve.models.remote.events import Accepted, Final, Text, UpstreamEvent, Usage
from optiserve.models.remote.prompts import openai_messages
from optiserve.models.remote.structured import AnswerSchema
from optiserve.models.remote.upstream import RemoteBackend

#: The SDK refuses to start without a key; a keyless OpenAI-compatible provider gets this
#: stand-in, and every call omits the Authorization header.
_NO_KEY = "no-key"

_FINISH = {"length": FinishReason.LENGTH}


class OpenAIBackend(RemoteBackend[openai.AsyncOpenAI]):
    """A model of an ``openai`` or ``openai_compatible`` provider."""

    @property
    def _needs_key(self) -> bool:
        return self._provider.kind == "openai"

    def _client(self, base_url: str | None, http: httpx2.AsyncClient) -> openai.AsyncOpenAI:
        p = self._provider
        return openai.AsyncOpenAI(
            api_key=self._key or _NO_KEY,
            base_url=base_url,
            http_client=http,
            max_retries=0,
            timeout=httpx2.Timeout(p.timeout_s, connect=p.connect_timeout_s),
        )

    def _params(self, request: GenerateRequest, schema: AnswerSchema | None) -> dict[str, Any]:
        s = request.sampling
        compatible = self._provider.kind == "openai_compatible"
        params: dict[str, Any] = {
            "model": self._model.source,
            "messages": openai_messages(request),
            "temperature": s.temperature,
            ("max_tokens" if compatible else "max_completion_tokens"): s.max_new_tokens,
            "stream_options": {"include_usage": True},
        }
        if s.top_p < 1.0:
            params["top_p"] = s.top_p
        if s.stop:
            params["stop"] = list(s.stop)
        if s.seed is not None:
            params["seed"] = s.seed
        if s.top_k and compatible:
            params["extra_body"] = {"top_k": s.top_k}
        if schema is not None:
            params["response_format"] = schema.openai_response_format()
        if not self._key:
            params["extra_headers"] = {"Authorization": openai.omit}
        return params

    async def _call(
        self,
        client: openai.AsyncOpenAI,
        request: GenerateRequest,
        schema: AnswerSchema | None,
        timeout: httpx2.Timeout,
    ) -> AsyncGenerator[UpstreamEvent, None]:
        stream = await client.chat.completions.create(
            **self._params(request, schema), stream=True, timeout=timeout
        )
        try:
            yield Accepted()
            reason: FinishReason | None = None
            async for chunk in stream:
                for choice in chunk.choices:
                    if choice.delta is not None and choice.delta.content:
                        yield Text(choice.delta.content)
                    if choice.finish_reason is not None:
                        reason = _FINISH.get(choice.finish_reason, FinishReason.EOS)
                usage = chunk.usage
                if usage is not None:
                    details = usage.prompt_tokens_details
                    cached = (details.cached_tokens if details is not None else None) or 0
                    counts = TokenCounts.from_openai(
                        usage.prompt_tokens, usage.completion_tokens, cached
                    )
                    yield Usage(counts)
            if reason is not None:
                yield Final(reason)
        finally:
            await stream.close()
