"""Fixtures of the remote-provider tests: a mock provider on 127.0.0.1 and backends built on
it (see helpers.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from providers.mock_provider import MockProvider

from .helpers import Backends


@pytest.fixture
def mock() -> Iterator[MockProvider]:
    """A fresh mock provider."""
    with MockProvider() as provider:
        yield provider


@pytest.fixture
async def backends(mock: MockProvider) -> AsyncIterator[Backends]:
    """``backends(kind, **provider_fields)``: a loaded backend talking to ``mock``; the
    pools close after the test."""
    built = Backends(mock)
    yield built
    await built.pools.aclose()
