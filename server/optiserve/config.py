"""Typed configuration: one dataclass per concern, read from one TOML file plus environment.

Precedence (last wins): the defaults below, the TOML file, environment variables.
An environment variable ``OPTISERVE_<SECTION>__<FIELD>`` overrides one scalar field, e.g.
``OPTISERVE_SERVER__PORT=6000`` or ``OPTISERVE_ENGINE__TORCH_THREADS=2``. Models are a
list (``[[models]]`` in TOML) and are configured in the file only.

Nothing is read at import time: call :func:`load_config`.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optiserve.cache.config import CacheConfig
from optiserve.models.config import DEMO_SOURCE, ModelConfig
from optiserve.models.local.config import EngineConfig

ENV_PREFIX = "OPTISERVE_"


class ConfigError(ValueError):
    """The configuration file or an environment override is invalid."""


@dataclass(frozen=True)
class ServerConfig:
    """The gRPC transport."""

    host: str = "127.0.0.1"
    port: int = 50051
    #: Largest request or response message, in bytes.
    max_message_bytes: int = 4 * 1024 * 1024
    #: RPCs served at once; more are refused with RESOURCE_EXHAUSTED.
    max_concurrent_rpcs: int = 512
    #: Seconds in-flight RPCs get to finish on SIGTERM/SIGINT before they are cancelled.
    grace_period_s: float = 10.0
    #: On SIGTERM, seconds (within the grace period) that health reports NOT_SERVING and new
    #: requests get UNAVAILABLE before the listener closes, so load balancers notice.
    drain_announce_s: float = 1.0
    #: Prometheus metrics port on the same host (0 = off).
    metrics_port: int = 0


@dataclass(frozen=True)
class LoggingConfig:
    """Structured logs on stderr."""

    level: str = "INFO"
    #: "json" (one object per line) or "text".
    format: str = "json"


@dataclass(frozen=True)
class Config:
    """The whole configuration."""

    server: ServerConfig = field(default_factory=ServerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    models: tuple[ModelConfig, ...] = ()
    #: Model served when a request names none (empty = the first model).
    default_model: str = ""
    #: Where the demo model, caches and ledgers live ("" = $XDG_DATA_HOME/optiserve).
    data_dir: str = ""

    def resolved_data_dir(self) -> Path:
        """The data directory, created if needed."""
        if self.data_dir:
            path = Path(self.data_dir).expanduser()
        else:
            base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
            path = Path(base) / "optiserve"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def default_model_name(self) -> str:
        """The name of the model that serves requests naming none."""
        return self.default_model or (self.models[0].name if self.models else "")


#: The embedded default: the demo model, built locally on first run.
DEFAULT_MODELS = (
    ModelConfig(
        name="demo-llama",
        source=DEMO_SOURCE,
        description="Demo: a tiny Llama-architecture model trained briefly on local "
        "text at first start. Fast, small, not smart; point the config at a real model.",
        default_max_new_tokens=48,
        max_new_tokens_cap=512,
    ),
)


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert a TOML or environment value to the field's annotated type."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _coerce(value, args[0], where)
    try:
        if annotation is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if annotation is int:
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if annotation is float:
            return float(value)
        if annotation is str:
            if not isinstance(value, str):
                raise ValueError(value)
            return value
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: expected {annotation.__name__}, got {value!r}") from exc
    return value


def _build(cls: type[Any], data: Mapping[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(known)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


_SECTIONS: dict[str, type[Any]] = {
    "server": ServerConfig,
    "logging": LoggingConfig,
    "engine": EngineConfig,
    "cache": CacheConfig,
}


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read the TOML file at ``path`` (None: defaults only) and apply environment overrides."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc

    sections: dict[str, dict[str, Any]] = {name: dict(raw.get(name, {})) for name in _SECTIONS}
    top: dict[str, Any] = {k: v for k, v in raw.items() if k not in _SECTIONS and k != "models"}
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX) or "__" not in key:
            continue
        section, _, name = key[len(ENV_PREFIX) :].lower().partition("__")
        if section not in sections:
            raise ConfigError(f"{key}: unknown section {section!r}; allowed: {sorted(sections)}")
        sections[section][name] = value
    for key in ("DATA_DIR", "DEFAULT_MODEL"):
        if ENV_PREFIX + key in env:
            top[key.lower()] = env[ENV_PREFIX + key]

    models_raw = raw.get("models", [])
    if not isinstance(models_raw, list):
        raise ConfigError("models must be an array of tables ([[models]])")
    models = (
        tuple(_build(ModelConfig, m, f"models[{i}]") for i, m in enumerate(models_raw))
        or DEFAULT_MODELS
    )

    config = Config(
        **{name: _build(cls, sections[name], name) for name, cls in _SECTIONS.items()},
        models=models,
        **{k: _coerce(v, str, k) for k, v in _check_top(top).items()},
    )
    _validate(config)
    return config


def _check_top(top: dict[str, Any]) -> dict[str, Any]:
    allowed = {"default_model", "data_dir"}
    unknown = set(top) - allowed
    if unknown:
        raise ConfigError(
            f"unknown top-level key(s) {sorted(unknown)}; allowed: "
            f"{sorted(allowed | set(_SECTIONS) | {'models'})}"
        )
    return top


def _validate(config: Config) -> None:
    names = [m.name for m in config.models]
    if len(set(names)) != len(names):
        raise ConfigError(f"model names must be unique, got {names}")
    if config.default_model and config.default_model not in names:
        raise ConfigError(f"default_model {config.default_model!r} is not one of {names}")
    for m in config.models:
        if m.dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"model {m.name}: dtype must be float32, bfloat16 or float16")
        if m.provider != "local":
            raise ConfigError(f"model {m.name}: provider must be 'local' (remote providers: soon)")
        if not 1 <= m.default_max_new_tokens <= m.max_new_tokens_cap:
            raise ConfigError(
                f"model {m.name}: need 1 <= default_max_new_tokens <= max_new_tokens_cap"
            )
    c = config.cache
    if c.eviction not in ("lru", "lfu", "fifo"):
        raise ConfigError(f"cache.eviction must be lru, lfu or fifo, got {c.eviction!r}")
    if not 0.0 <= c.semantic_threshold <= 1.0:
        raise ConfigError(f"cache.semantic_threshold must be in [0, 1], got {c.semantic_threshold}")
    if c.embed_text not in ("last_user", "all_user"):
        raise ConfigError(f"cache.embed_text must be last_user or all_user, got {c.embed_text!r}")
    if c.embedder_quantize not in ("int8", "none"):
        raise ConfigError(
            f"cache.embedder_quantize must be int8 or none, got {c.embedder_quantize!r}"
        )
    if c.guard_threshold is not None and not 0.0 <= c.guard_threshold <= 1.0:
        raise ConfigError(f"cache.guard_threshold must be in [0, 1], got {c.guard_threshold}")
    if c.ttl_s < 0 or c.max_entries < 1 or c.max_bytes < 1:
        raise ConfigError("cache.ttl_s must be >= 0; cache.max_entries and max_bytes >= 1")
    if config.engine.torch_threads < 1:
        raise ConfigError("engine.torch_threads must be >= 1")
    if config.logging.format not in ("json", "text"):
        raise ConfigError("logging.format must be 'json' or 'text'")


__all__ = [
    "DEFAULT_MODELS",
    "DEMO_SOURCE",
    "CacheConfig",
    "Config",
    "ConfigError",
    "EngineConfig",
    "LoggingConfig",
    "ModelConfig",
    "ServerConfig",
    "load_config",
]
