"""Shared fixtures: a tiny model built locally, a real server on 127.0.0.1, clients."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from optiserve.app import ServerThread
from optiserve.config import (
    CacheConfig,
    Config,
    EngineConfig,
    LoggingConfig,
    ModelConfig,
    ServerConfig,
)
from optiserve.tools.tinymodels import TinySpec, build_tiny_model
from optiserve_client import Client

TINY_CONTEXT = 512


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama with random weights and a locally trained tokenizer (save_pretrained)."""
    return build_tiny_model(
        tmp_path_factory.mktemp("models") / "tiny-llama",
        TinySpec(arch="llama", hidden_size=64, layers=2, heads=4, context_length=TINY_CONTEXT),
    )


@pytest.fixture(scope="session")
def make_config(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., Config]:
    """Build a Config serving the tiny model on an ephemeral loopback port."""

    def build(
        server: dict[str, Any] | None = None, cache: dict[str, Any] | None = None, **model: Any
    ) -> Config:
        return Config(
            server=replace(
                ServerConfig(port=0, grace_period_s=5.0, drain_announce_s=0.0), **(server or {})
            ),
            logging=LoggingConfig(level="WARNING", format="text"),
            engine=EngineConfig(torch_threads=1),
            # Off by default so generation tests see the model; cache tests turn it on.
            cache=replace(CacheConfig(enabled=False), **(cache or {})),
            models=(
                ModelConfig(
                    name="tiny",
                    source=str(tiny_model_dir),
                    default_max_new_tokens=16,
                    max_new_tokens_cap=TINY_CONTEXT,
                    description="test model",
                    **model,
                ),
            ),
            data_dir=str(tmp_path_factory.mktemp("data")),
        )

    return build


@pytest.fixture(scope="session")
def server(make_config: Callable[..., Config]) -> Iterator[ServerThread]:
    """One real server for the session (tests that need other settings start their own)."""
    thread = ServerThread(make_config())
    thread.start()
    yield thread
    thread.stop()


@pytest.fixture
def client(server: ServerThread) -> Iterator[Client]:
    """A sync client connected to the session server."""
    with Client(server.target, timeout=60) as c:
        yield c
