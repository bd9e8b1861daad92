"""Remote providers: OpenAI, Anthropic and any OpenAI-compatible server, behind the same
:class:`~optiserve.models.base.Backend` protocol as local models."""
