"""Typed configuration from one TOML file plus environment overrides, checked at load."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import time
import typing
from pathlib import Path

import pytest

from optiserve.accounting.config import BudgetConfig, LedgerConfig
from optiserve.auth_keys import AuthConfig
from optiserve.benchmarking.config import BenchmarkConfig
from optiserve.cache.config import CacheConfig, EmbedderQuantize
from optiserve.config import (
    DEFAULT_MODELS,
    Config,
    ConfigError,
    EngineConfig,
    LoggingConfig,
    ModelConfig,
    ServerConfig,
    load_config,
)
from optiserve.domain.settings import SettingError, choices
from optiserve.models.local.quantize.config import QuantizeConfig
from optiserve.models.remote.config import ProviderConfig
from optiserve.routing.config import RouteConfig


def load_text(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Config:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return load_config(path, env=env or {})


def test_defaults_serve_the_demo_model() -> None:
    config = load_config(None, env={})
    assert config.server.host == "127.0.0.1" and config.server.port == 50051
    assert config.models == DEFAULT_MODELS
    assert config.default_model_name() == "demo-llama"
    assert config.engine.torch_threads == 1
    assert config.models[0].default_min_new_tokens > 0  # the demo never answers nothing


def test_file_then_environment_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        'default_model = "b"\n[server]\nport = 7000\n[engine]\ntorch_threads = 2\n'
        '[[models]]\nname = "a"\nsource = "x"\n[[models]]\nname = "b"\nsource = "y"\n'
        'dtype = "bfloat16"\n'
    )
    env = {"OPTISERVE_SERVER__PORT": "7001", "OTHER": "1", "OPTISERVE_NO_EXTENSIONS": "1"}
    config = load_config(path, env=env)
    assert config.server.port == 7001
    assert config.engine.torch_threads == 2
    assert [m.name for m in config.models] == ["a", "b"]
    assert config.models[1].dtype == "bfloat16"
    assert config.default_model_name() == "b"
    assert load_config(path, env=env, overrides={"server.port": 7002}).server.port == 7002


def test_environment_values_are_converted_to_the_field_type() -> None:
    config = load_config(
        None,
        env={
            "OPTISERVE_CACHE__ENABLED": "off",
            "OPTISERVE_CACHE__TTL_S": "2.5",
            "OPTISERVE_CACHE__GUARD_THRESHOLD": "0.7",
            "OPTISERVE_ENGINE__MAX_QUEUE": " 9 ",
            "OPTISERVE_LOGGING__LEVEL": "debug",
            "OPTISERVE_LOGGING__FORMAT": "TEXT",
            "OPTISERVE_DATA_DIR": "/tmp/x",
        },
    )
    assert config.cache.enabled is False and config.cache.ttl_s == 2.5
    assert config.cache.guard_threshold == 0.7 and config.engine.max_queue == 9
    # Choices are matched in any case and stored in the declared spelling.
    assert config.logging == LoggingConfig(level="DEBUG", format="text")
    assert config.data_dir == "/tmp/x"
    unset = load_config(None, env={"OPTISERVE_CACHE__GUARD_THRESHOLD": "none"})
    assert unset.cache.guard_threshold is None


# One bad value per section (and the top level): the message starts with the dotted key.
BAD_FILES = [
    ("[server]\nport = 70000\n", "server.port must be in [0, 65535], got 70000"),
    ("[server]\nprot = 1\n", "server.prot: unknown key (did you mean 'port'?)"),
    ("[server]\nport = 'x'\n", "server.port: expected an integer, got 'x'"),
    ("[server]\nport = 1.5\n", "server.port: expected an integer, got 1.5"),
    ("[server]\ngrace_period_s = -1\n", "server.grace_period_s must be >= 0, got -1.0"),
    ("[server]\ndrain_announce_s = -0.5\n", "server.drain_announce_s must be >= 0, got -0.5"),
    ("[server]\nmax_concurrent_rpcs = 0\n", "server.max_concurrent_rpcs must be >= 1, got 0"),
    ('[server]\nhost = ""\n', "server.host must not be empty"),
    ("server = 5\n", "server: expected a table ([server]), got 5"),
    ('[auth]\nrequired = "maybe"\n', "auth.required: expected true or false, got 'maybe'"),
    ("[auth]\nkeys = 1\n", "auth.keys: unknown key (did you mean 'keys_file'?)"),
    ('[logging]\nformat = "xml"\n', "logging.format must be one of 'json', 'text', got 'xml'"),
    ('[logging]\nlevel = "LOUD"\n', "logging.level must be one of 'DEBUG', 'INFO'"),
    ("[engine]\nmax_batch_size = 0\n", "engine.max_batch_size must be >= 1, got 0"),
    ("[engine]\nmax_wait_ms = -1\n", "engine.max_wait_ms must be >= 0, got -1.0"),
    ("[engine]\ntorch_threads = true\n", "engine.torch_threads: expected an integer, got True"),
    ('[cache]\neviction = "random"\n', "cache.eviction must be one of 'lru', 'lfu', 'fifo'"),
    ('[cache]\nembed_text = "all"\n', "cache.embed_text must be one of 'last_user', 'all_user'"),
    ('[cache]\nembedder_quantize = "int4"\n', "cache.embedder_quantize must be one of"),
    ("[cache]\nmax_pending_writes = 0\n", "cache.max_pending_writes must be >= 1, got 0"),
    ("[cache]\nreplay_chunk_chars = 0\n", "cache.replay_chunk_chars must be >= 1, got 0"),
    ("[cache]\nsemantic_threshold = 1.5\n", "cache.semantic_threshold must be in [0, 1], got 1.5"),
    ("[cache]\nguard_threshold = -0.1\n", "cache.guard_threshold must be in [0, 1], got -0.1"),
    ("[cache]\nenabled = 1\n", "cache.enabled: expected true or false, got 1"),
    ('[cache]\nredis_url = "localhost:6379"\n', "cache.redis_url must start with redis://"),
    ("[cache]\nttl_s = nan\n", "cache.ttl_s: expected a finite number, got nan"),
    ('[[models]]\nname = "a"\nsource = "x"\ndtype = "int3"\n', "models[0].dtype must be one of"),
    (
        '[[models]]\nname = "a"\nsource = "x"\nprovider = "openai"\n',
        "models[0].provider 'openai' is neither 'local' nor a [[providers]] name",
    ),
    (
        '[[providers]]\nname = "o"\nkind = "openai"\n[[models]]\nname = "a"\nsource = "x"\n'
        'provider = "o"\n',
        "models[0].context_length is required for a remote model",
    ),
    (
        '[[providers]]\nname = "v"\nkind = "openai_compatible"\n',
        "providers[0].base_urls an openai_compatible provider needs at least one base URL",
    ),
    (
        '[[routes]]\nname = "auto"\nmodels = ["nope"]\n',
        "routes[0].models 'nope' is not one of the model names",
    ),
    ("[budget]\ndaily_usd = -1\n", "budget.daily_usd must be >= 0"),
    ('[[models]]\nname = "a"\n', "models[0].source is required"),
    ('[[models]]\nname = "a"\nsource = "x"\ndevice = "gpu"\n', "models[0].device must be"),
    (
        '[[models]]\nname = "a"\nsource = "x"\ndefault_max_new_tokens = 5000\n',
        "models[0].default_max_new_tokens must be <= max_new_tokens_cap (1024), got 5000",
    ),
    (
        '[[models]]\nname = "a"\nsource = "x"\n[[models]]\nname = "a"\nsource = "y"\n',
        "models[1].name 'a' is already the name of models[0]",
    ),
    ('[[models]]\nname = "a"\nsource = "x"\ncolour = 1\n', "models[0].colour: unknown key"),
    (
        f'[[models]]\nname = "{"m" * 257}"\nsource = "x"\n',
        "models[0].name must be at most 256 characters",
    ),
    (
        f'[[models]]\nname = "a"\nsource = "x"\n[[routes]]\nname = "{"r" * 257}"\nmodels = ["a"]\n',
        "routes[0].name must be at most 256 characters",
    ),
    ("models = [1]\n", "models[0]: expected a table of settings, got 1"),
    ('models = "a"\n', "models: expected an array of tables ([[models]])"),
    ('default_model = "z"\n[[models]]\nname = "a"\nsource = "x"\n', "default_model 'z' is not"),
    ("default_model = 3\n", "default_model: expected a string, got 3"),
    ("colour = 1\n", "colour: unknown top-level key"),
    ("this is not toml", "is not valid TOML"),
]


@pytest.mark.parametrize(("text", "needle"), BAD_FILES)
def test_bad_file_says_which_key_and_what_is_wrong(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    message = str(info.value)
    assert needle in message
    if "TOML" not in needle:
        assert message.startswith(needle.split()[0].rstrip(":"))


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        (
            {"OPTISERVE_ENGINE__MAX_QUEUE": "abc"},
            "engine.max_queue: expected an integer, got 'abc' (from OPTISERVE_ENGINE__MAX_QUEUE)",
        ),
        (
            {"OPTISERVE_ENGINE__MAX_QUEUE": "0"},
            "engine.max_queue must be >= 1, got 0 (from OPTISERVE_ENGINE__MAX_QUEUE)",
        ),
        ({"OPTISERVE_SERVER__PORT": "abc"}, "server.port: expected an integer, got 'abc'"),
        ({"OPTISERVE_CACHE__EVICTION": "mru"}, "cache.eviction must be one of"),
        ({"OPTISERVE_CACHE__PERSIST": "maybe"}, "cache.persist: expected true or false"),
        ({"OPTISERVE_ENGINE__MAX_QUEU": "1"}, "engine.max_queu: unknown key (did you mean"),
        ({"OPTISERVE_NOPE__X": "1"}, "OPTISERVE_NOPE__X: unknown section"),
        ({"OPTISERVE_MODELS__NAME": "x"}, "models are configured in the file only"),
        ({"OPTISERVE_DEFAULT_MODEL": "nope"}, "default_model 'nope' is not one of"),
    ],
)
def test_bad_environment_override_names_key_and_variable(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env=env)
    assert needle in str(info.value)


def test_command_line_override_is_checked() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={}, overrides={"server.port": -1})
    assert str(info.value) == "server.port must be in [0, 65535], got -1 (from the command line)"


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.toml", env={})


def test_settings_are_checked_when_built_in_code_too() -> None:
    """The ranges live on the dataclasses, so a config built in code is checked the same."""
    with pytest.raises(SettingError, match="max_batch_size must be >= 1, got 0"):
        EngineConfig(max_batch_size=0)
    with pytest.raises(SettingError, match="port must be in"):
        ServerConfig(port=-1)
    with pytest.raises(SettingError, match="eviction must be one of"):
        CacheConfig(eviction="mru")  # type: ignore[arg-type]
    with pytest.raises(SettingError, match="dtype must be one of"):
        ModelConfig(name="a", source="x", dtype="int8")  # type: ignore[arg-type]
    with pytest.raises(SettingError, match="default_model 'b' is not one of"):
        Config(models=(ModelConfig(name="a", source="x"),), default_model="b")


def test_each_choice_is_declared_once_as_a_literal() -> None:
    """The allowed values come from the annotations (the Embedder reads the same Literal)."""
    hints = typing.get_type_hints(CacheConfig)
    assert choices(hints["eviction"]) == ("lru", "lfu", "fifo")
    assert choices(hints["embedder_quantize"]) == typing.get_args(EmbedderQuantize)
    assert choices(typing.get_type_hints(ModelConfig)["dtype"]) == (
        "float32",
        "bfloat16",
        "float16",
    )
    assert choices(typing.get_type_hints(LoggingConfig)["format"]) == ("json", "text")


def test_every_section_field_can_be_set_from_the_environment() -> None:
    """Every field of every section is a scalar the environment can override."""
    for section, cls in (
        ("server", ServerConfig),
        ("auth", AuthConfig),
        ("logging", LoggingConfig),
        ("engine", EngineConfig),
        ("cache", CacheConfig),
    ):
        default = cls()
        env = {}
        for f in dataclasses.fields(cls):
            value = getattr(default, f.name)
            text = "none" if value is None else str(value).lower()
            env[f"OPTISERVE_{section.upper()}__{f.name.upper()}"] = text
        assert getattr(load_config(None, env=env), section) == default


def _optiserve() -> list[str]:
    script = Path(sys.executable).with_name("optiserve")
    if script.exists():
        return [str(script)]
    found = shutil.which("optiserve")
    return [found] if found else [sys.executable, "-m", "optiserve"]


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("[server]\nport = 70000\n", {}, "server.port must be in [0, 65535], got 70000"),
        ('[logging]\nformat = "xml"\n', {}, "logging.format must be one of 'json', 'text'"),
        ("[engine]\nmax_batch_size = 0\n", {}, "engine.max_batch_size must be >= 1, got 0"),
        ("[cache]\nmax_pending_writes = 0\n", {}, "cache.max_pending_writes must be >= 1"),
        ('[[models]]\nname = "a"\nsource = "x"\ndtype = "fp8"\n', {}, "models[0].dtype must"),
        ("colour = 1\n", {}, "colour: unknown top-level key"),
        ("", {"OPTISERVE_ENGINE__MAX_QUEUE": "abc"}, "engine.max_queue: expected an integer"),
    ],
)
def test_serve_exits_2_with_one_line_before_loading_anything(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    started = time.monotonic()
    proc = subprocess.run(
        [*_optiserve(), "serve", "--config", str(path)],
        env={**os.environ, "OPTISERVE_DATA_DIR": str(tmp_path / "data"), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"optiserve: configuration error: {message}"), proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "data").exists()  # nothing was started
    assert elapsed < 60


def test_serve_rejects_a_bad_port_flag(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*_optiserve(), "serve", "--port", "99999"],
        env={**os.environ, "OPTISERVE_DATA_DIR": str(tmp_path / "data")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr == (
        "optiserve: configuration error: server.port must be in [0, 65535], got 99999 "
        "(from the command line)\n"
    )


def test_readme_documents_every_setting() -> None:
    """The configuration reference in README.md names every field of every section."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    keys = [f"`{name}`" for name in ("data_dir", "default_model")]
    for section, cls in (
        ("server", ServerConfig),
        ("auth", AuthConfig),
        ("logging", LoggingConfig),
        ("engine", EngineConfig),
        ("cache", CacheConfig),
        ("budget", BudgetConfig),
        ("ledger", LedgerConfig),
        ("quantize", QuantizeConfig),
        ("benchmark", BenchmarkConfig),
    ):
        keys += [f"`{section}.{f.name}`" for f in dataclasses.fields(cls)]
    for table, cls in (
        ("models", ModelConfig),
        ("providers", ProviderConfig),
        ("routes", RouteConfig),
    ):
        keys += [f"`[[{table}]] {f.name}`" for f in dataclasses.fields(cls)]
    missing = [key for key in keys if key not in readme]
    assert not missing, f"README.md's configuration reference lacks {missing}"


def test_readme_provider_example_loads(tmp_path: Path) -> None:
    """The providers/routes/budget example in README.md is a valid configuration."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Remote providers, routes and budgets", 1)[1]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "example.toml"
    path.write_text(example, encoding="utf-8")
    config = load_config(path, env={})
    assert config.default_model_name() == "auto"
    assert [p.kind for p in config.providers] == ["openai", "anthropic", "openai_compatible"]
    assert config.routes[0].models == ("demo-llama", "mini", "haiku", "llama70b")


def test_serve_with_an_unwritable_ledger_exits_1_saying_what_to_fix(tmp_path: Path) -> None:
    path = tmp_path / "ledger.toml"
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    path.write_text(f'[server]\nport = 0\n[ledger]\npath = "{blocker / "ledger.sqlite3"}"\n')
    proc = subprocess.run(
        [*_optiserve(), "serve", "--config", str(path)],
        env={**os.environ, "OPTISERVE_DATA_DIR": str(tmp_path / "data")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("optiserve: cannot start: cannot open the usage ledger"), last
    assert "[ledger] path" in last and "Traceback" not in proc.stderr
