"""The demo model ships with the package and serves the embedded default with no build step."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from optiserve.app import ServerThread
from optiserve.config import CacheConfig, load_config
from optiserve.models.demo import REQUIRED_FILES, demo_model_dir
from optiserve_client import Client

#: The shipped files stay small enough to live in the repository and the wheel.
MAX_BYTES = 6 * 1024 * 1024


def test_shipped_files_are_present_and_small() -> None:
    path = demo_model_dir()
    for name in (*REQUIRED_FILES, "generation_config.json", "tokenizer_config.json"):
        assert (path / name).is_file(), name
    total = sum(p.stat().st_size for p in path.iterdir() if p.is_file() and p.suffix != ".py")
    assert total < MAX_BYTES


def test_serving_never_imports_the_build_tools() -> None:
    code = (
        "import sys, optiserve.app, optiserve.cli, optiserve.config\n"
        "bad = sorted(m for m in sys.modules if m.startswith('optiserve.tools'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> ServerThread:
    config = load_config(None, env={})
    config = replace(
        config,
        server=replace(config.server, port=0, drain_announce_s=0.0),
        cache=CacheConfig(enabled=False),
        data_dir=str(tmp_path_factory.mktemp("demo-data")),
    )
    thread = ServerThread(config)
    thread.start()
    yield thread  # type: ignore[misc]
    thread.stop()


def test_default_config_answers_a_greeting(demo_server: ServerThread) -> None:
    with Client(demo_server.target, timeout=60) as client:
        (info,) = client.list_models()
        assert info.demo and info.default and info.name == "demo-llama"
        assert (info.default_max_new_tokens, info.max_new_tokens_cap) == (48, 512)
        result = client.generate("Hello, who are you?")
        assert result.text.strip()
        assert result.usage.completion_tokens >= 8  # the demo's default min_new_tokens
        chat = client.generate(messages=[{"role": "user", "content": "Hello, who are you?"}])
        assert chat.text.strip()
        # The chat format's role markers are special tokens: never part of the text.
        for prompt in ("What is the capital of France?", "What does os.path.join do?"):
            text = client.generate(prompt, cache_mode="bypass").text
            assert text.strip() and "<|" not in text


def test_demo_source_loads_like_any_model_directory() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = demo_model_dir()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert tok.chat_template and tok.eos_token_id == model.config.eos_token_id
    assert Path(path).name == "demo"
