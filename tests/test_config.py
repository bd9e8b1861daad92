"""Typed configuration from one TOML file plus environment overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from optiserve.config import DEFAULT_MODELS, ConfigError, load_config


def test_defaults_serve_the_demo_model() -> None:
    config = load_config(None, env={})
    assert config.server.host == "127.0.0.1" and config.server.port == 50051
    assert config.models == DEFAULT_MODELS
    assert config.default_model_name() == "demo-llama"
    assert config.engine.torch_threads == 1


def test_file_then_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        'default_model = "b"\n[server]\nport = 7000\n[engine]\ntorch_threads = 2\n'
        '[[models]]\nname = "a"\nsource = "x"\n[[models]]\nname = "b"\nsource = "y"\n'
        'dtype = "bfloat16"\n'
    )
    config = load_config(path, env={"OPTISERVE_SERVER__PORT": "7001", "OTHER": "1"})
    assert config.server.port == 7001
    assert config.engine.torch_threads == 2
    assert [m.name for m in config.models] == ["a", "b"]
    assert config.models[1].dtype == "bfloat16"
    assert config.default_model_name() == "b"


@pytest.mark.parametrize(
    ("text", "env", "needle"),
    [
        ("[server]\nprot = 1\n", {}, "unknown key(s) ['prot']"),
        ("[server]\nport = 'x'\n", {}, "server.port: expected int"),
        ("", {"OPTISERVE_SERVER__PORT": "abc"}, "server.port: expected int"),
        ("", {"OPTISERVE_NOPE__X": "1"}, "unknown section 'nope'"),
        ('[[models]]\nname = "a"\nsource = "x"\ndtype = "int3"\n', {}, "dtype must be"),
        ('default_model = "z"\n[[models]]\nname = "a"\nsource = "x"\n', {}, "not one of"),
        ("this is not toml", {}, "not valid TOML"),
        ("colour = 1\n", {}, "unknown top-level key"),
    ],
)
def test_bad_config_says_what_is_wrong(
    tmp_path: Path, text: str, env: dict[str, str], needle: str
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env)
    assert needle in str(info.value)
