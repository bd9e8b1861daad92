"""A mock LLM provider on 127.0.0.1 speaking the OpenAI and Anthropic HTTP APIs, for tests
and benchmarks (see :mod:`providers.mock_provider`)."""
