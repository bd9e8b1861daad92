"""Typed configuration: one dataclass per concern, read from one TOML file plus environment.

Precedence (last wins): the defaults below, the TOML file, environment variables, then the
command line's overrides. An environment variable ``OPTISERVE_<SECTION>__<FIELD>``
overrides one scalar field, e.g. ``OPTISERVE_SERVER__PORT=6000`` or
``OPTISERVE_ENGINE__TORCH_THREADS=2``; ``OPTISERVE_DATA_DIR`` and ``OPTISERVE_DEFAULT_MODEL``
set the top-level keys. Models are a list (``[[models]]`` in TOML) and are configured in the
file only.

Every setting is defined once, on its dataclass: its type (choices as ``Literal``) and its
range (in the dataclass's ``__post_init__``, see :mod:`optiserve.domain.settings`). The
loader converts each value to the annotated type and builds the dataclasses, so every bad
value is refused here, at start, with a :class:`ConfigError` that begins with the full
dotted key: ``engine.max_batch_size must be >= 1, got 0``.

Nothing is read at import time: call :func:`load_config`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import os
import ssl
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from optiserve.accounting.config import BudgetConfig, LedgerConfig
from optiserve.auth_keys import AuthConfig
from optiserve.benchmarking.config import BenchmarkConfig
from optiserve.cache.config import CacheConfig
from optiserve.domain.key_limits import KeyLimits
from optiserve.domain.settings import (
    SettingError,
    above,
    at_least,
    between,
    check,
    choices,
    require,
)
from optiserve.models.config import DEMO_SOURCE, ModelConfig
from optiserve.models.local.config import EngineConfig
from optiserve.models.local.quantize.config import QuantizeConfig
from optiserve.models.remote.config import ProviderConfig
from optiserve.routing.config import RouteConfig

ENV_PREFIX = "OPTISERVE_"

#: Log line format: one JSON object per line, or plain text.
LogFormat = Literal["json", "text"]
#: Lowest level logged.
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class ConfigError(ValueError):
    """The configuration file, an environment override or a command-line override is invalid.

    The message starts with the full dotted key (``models[0].dtype``) when one is to blame.
    """


@dataclass(frozen=True)
class ServerConfig:
    """The gRPC transport."""

    host: str = "127.0.0.1"
    #: Listen port (0 = an ephemeral port).
    port: int = 50051
    #: Largest request or response message, in bytes.
    max_message_bytes: int = 4 * 1024 * 1024
    #: OptiServe calls served at once; more are refused with RESOURCE_EXHAUSTED. Health and
    #: reflection are never counted nor refused.
    max_concurrent_rpcs: int = 512
    #: OptiServe calls one connection may have in progress at once.
    max_rpcs_per_connection: int = 100
    #: OptiServe calls one tenant (API key; callers without one share "anonymous") may have
    #: in progress at once.
    max_rpcs_per_tenant: int = 512
    #: Seconds a stream waits for its client to read the next message; then the server
    #: stops generating and ends the call with DEADLINE_EXCEEDED.
    stream_write_timeout_s: float = 30.0
    #: Seconds in-flight RPCs get to finish on SIGTERM/SIGINT before they are cancelled.
    grace_period_s: float = 10.0
    #: On SIGTERM, seconds (within the grace period) that health reports NOT_SERVING and new
    #: requests get UNAVAILABLE before the listener closes, so load balancers notice.
    drain_announce_s: float = 1.0
    #: Prometheus metrics port on the same host (0 = off).
    metrics_port: int = 0
    #: Seconds between keepalive pings the server sends on an idle connection (0 = gRPC's
    #: default, 2 hours), and how long it waits for the ack before closing the connection.
    keepalive_time_s: float = 0.0
    keepalive_timeout_s: float = 20.0
    #: Shortest interval between client keepalive pings the server accepts (pings without
    #: calls in progress included); clients pinging more often are sent GOAWAY.
    keepalive_min_client_interval_s: float = 10.0
    #: Close each connection after this many seconds (0 = never), with GOAWAY so the client
    #: reconnects, to the same or a new replica behind a load balancer; calls in progress get
    #: ``max_connection_age_grace_s`` more to finish (0 = as long as they need).
    max_connection_age_s: float = 0.0
    max_connection_age_grace_s: float = 0.0
    #: Close connections idle for this many seconds (0 = never).
    max_connection_idle_s: float = 0.0
    #: PEM certificate (chain) the server presents; set with ``tls_key_file`` to serve TLS
    #: ("" with ``tls_key_file`` "" = plaintext).
    tls_cert_file: str = ""
    #: PEM private key of ``tls_cert_file``.
    tls_key_file: str = ""
    #: PEM CA certificate(s); set = mutual TLS: every client must present a certificate
    #: signed by one of them. Needs ``tls_cert_file`` and ``tls_key_file``.
    tls_client_ca_file: str = ""

    def __post_init__(self) -> None:
        require(bool(self.host.strip()), "host", "must not be empty")
        require(
            bool(self.tls_key_file) or not self.tls_cert_file,
            "tls_cert_file",
            "is set without server.tls_key_file; set both (TLS) or neither (plaintext)",
        )
        require(
            bool(self.tls_cert_file) or not self.tls_key_file,
            "tls_key_file",
            "is set without server.tls_cert_file; set both (TLS) or neither (plaintext)",
        )
        require(
            bool(self.tls_cert_file) or not self.tls_client_ca_file,
            "tls_client_ca_file",
            "needs server.tls_cert_file and server.tls_key_file (mutual TLS runs over TLS)",
        )
        check(
            self,
            {
                "port": between(0, 65535),
                "max_message_bytes": at_least(1),
                "max_concurrent_rpcs": at_least(1),
                "max_rpcs_per_connection": at_least(1),
                "max_rpcs_per_tenant": at_least(1),
                "stream_write_timeout_s": above(0),
                "grace_period_s": at_least(0),
                "drain_announce_s": at_least(0),
                "metrics_port": between(0, 65535),
                "keepalive_time_s": at_least(0),
                "keepalive_timeout_s": above(0),
                "keepalive_min_client_interval_s": at_least(0),
                "max_connection_age_s": at_least(0),
                "max_connection_age_grace_s": at_least(0),
                "max_connection_idle_s": at_least(0),
            },
        )

    def grpc_options(self) -> list[tuple[str, int]]:
        """The gRPC server options of the message limits, keepalive and connection ageing."""

        def ms(seconds: float) -> int:
            return max(1, round(seconds * 1000))

        options = [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.keepalive_timeout_ms", ms(self.keepalive_timeout_s)),
            ("grpc.keepalive_permit_without_calls", 1),
            (
                "grpc.http2.min_recv_ping_interval_without_data_ms",
                ms(self.keepalive_min_client_interval_s),
            ),
            ("grpc.http2.max_ping_strikes", 2),
        ]
        for name, seconds in (
            ("grpc.keepalive_time_ms", self.keepalive_time_s),
            ("grpc.max_connection_age_ms", self.max_connection_age_s),
            ("grpc.max_connection_age_grace_ms", self.max_connection_age_grace_s),
            ("grpc.max_connection_idle_ms", self.max_connection_idle_s),
        ):
            if seconds > 0:
                options.append((name, ms(seconds)))
        return options

    @property
    def tls_files(self) -> dict[str, str]:
        """The TLS settings that are set: field name -> path."""
        names = ("tls_cert_file", "tls_key_file", "tls_client_ca_file")
        return {n: getattr(self, n) for n in names if getattr(self, n)}


@dataclass(frozen=True)
class LoggingConfig:
    """Structured logs on stderr."""

    #: "DEBUG", "INFO", "WARNING", "ERROR" or "CRITICAL" (any case in the file).
    level: LogLevel = "INFO"
    #: "json" (one object per line) or "text".
    format: LogFormat = "json"
    #: Put the prompt (and chat messages) in the access log; off, no prompt text is logged.
    log_prompts: bool = False

    def __post_init__(self) -> None:
        check(self)


@dataclass(frozen=True)
class Config:
    """The whole configuration."""

    server: ServerConfig = field(default_factory=ServerConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    key_limits: KeyLimits = field(default_factory=KeyLimits)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    models: tuple[ModelConfig, ...] = ()
    providers: tuple[ProviderConfig, ...] = ()
    routes: tuple[RouteConfig, ...] = ()
    #: Model or route served when a request names none (empty = the first model).
    default_model: str = ""
    #: Where caches and ledgers live ("" = $XDG_DATA_HOME/optiserve).
    data_dir: str = ""

    def __post_init__(self) -> None:
        seen: dict[str, int] = {}
        for i, m in enumerate(self.models):
            require(
                m.name not in seen,
                f"models[{i}].name",
                f"{m.name!r} is already the name of models[{seen.get(m.name)}]; names must be "
                "unique",
            )
            seen[m.name] = i
        providers = _unique_names(self.providers, "providers")
        for i, m in enumerate(self.models):
            require(
                m.local or m.provider in providers,
                f"models[{i}].provider",
                f"{m.provider!r} is neither 'local' nor a [[providers]] name "
                f"({', '.join(sorted(providers)) or 'none configured'})",
            )
            require(
                m.local or m.context_length > 0,
                f"models[{i}].context_length",
                "is required for a remote model (its context window in tokens)",
            )
        routes = _unique_names(self.routes, "routes")
        for i, r in enumerate(self.routes):
            require(r.name not in seen, f"routes[{i}].name", f"{r.name!r} is also a model name")
            for name in r.models:
                require(
                    name in seen,
                    f"routes[{i}].models",
                    f"{name!r} is not one of the model names {sorted(seen)}",
                )
        require(
            not self.default_model or self.default_model in seen or self.default_model in routes,
            "default_model",
            f"{self.default_model!r} is not one of the model or route names "
            f"{sorted([*seen, *routes])}",
        )

    def provider(self, name: str) -> ProviderConfig:
        """The [[providers]] entry called ``name``."""
        return next(p for p in self.providers if p.name == name)

    def models_dir(self) -> Path:
        """Where Quantize writes variants (not created here)."""
        if self.quantize.models_dir:
            return Path(self.quantize.models_dir).expanduser()
        return self.resolved_data_dir() / "models"

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


def _unique_names(items: tuple[Any, ...], where: str) -> set[str]:
    """The ``name`` of each item; SettingError naming the second of two equal names."""
    names: set[str] = set()
    for i, item in enumerate(items):
        require(item.name not in names, f"{where}[{i}].name", f"{item.name!r} is used twice")
        names.add(item.name)
    return names


#: The embedded default: the demo model shipped with the package.
DEFAULT_MODELS = (
    ModelConfig(
        name="demo-llama",
        source=DEMO_SOURCE,
        description="Demo: a tiny Llama-architecture model (2.3 M parameters) shipped with "
        "the package, trained briefly on Python's docstrings. Fast, small, not smart; point "
        "the config at a real model.",
        default_max_new_tokens=48,
        max_new_tokens_cap=512,
        default_min_new_tokens=8,
    ),
)

_SECTIONS: dict[str, type[Any]] = {
    "server": ServerConfig,
    "auth": AuthConfig,
    "key_limits": KeyLimits,
    "logging": LoggingConfig,
    "engine": EngineConfig,
    "cache": CacheConfig,
    "budget": BudgetConfig,
    "ledger": LedgerConfig,
    "quantize": QuantizeConfig,
    "benchmark": BenchmarkConfig,
}
#: Arrays of tables ([[models]], [[providers]], [[routes]]), configured in the file only.
_LISTS: dict[str, type[Any]] = {
    "models": ModelConfig,
    "providers": ProviderConfig,
    "routes": RouteConfig,
}
_TOP_LEVEL = ("default_model", "data_dir")


def _type_name(annotation: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        annotation, getattr(annotation, "__name__", str(annotation))
    )


def _coerce(value: Any, annotation: Any, key: str, origin: str = "") -> Any:
    """Convert a TOML, environment or command-line value to the field's annotated type.

    Environment and command-line values arrive as strings; TOML values must already have the
    right kind (a TOML float is not an integer, a number is not a boolean).
    """
    allowed = choices(annotation)
    if allowed:
        if isinstance(value, str):
            for choice in allowed:
                if isinstance(choice, str) and choice.lower() == value.lower():
                    return choice
        raise ConfigError(
            f"{key} must be one of {', '.join(map(repr, allowed))}, got {value!r}{origin}"
        )
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if type(None) in args and isinstance(value, str) and value.lower() in ("", "none"):
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key, origin)
    text = isinstance(value, str)
    result: Any = None
    if annotation is bool:
        if isinstance(value, bool):
            result = value
        elif text and value.strip().lower() in ("1", "true", "yes", "on"):
            result = True
        elif text and value.strip().lower() in ("0", "false", "no", "off"):
            result = False
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            result = value
        elif text:
            with contextlib.suppress(ValueError):
                result = int(value.strip())
    elif annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            result = float(value)
        elif text:
            with contextlib.suppress(ValueError):
                result = float(value.strip())
        if result is not None and not math.isfinite(result):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}{origin}")
    elif annotation is str:
        result = value if text else None
    elif typing.get_origin(annotation) is tuple:
        if text:
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            result = tuple(value)
        else:
            raise ConfigError(f"{key}: expected a list of strings, got {value!r}{origin}")
    else:  # pragma: no cover - every settings field is one of the kinds above
        raise ConfigError(f"{key}: unsupported setting type {annotation!r}")
    if result is None:
        raise ConfigError(f"{key}: expected {_type_name(annotation)}, got {value!r}{origin}")
    return result


def _unknown(key: str, name: str, allowed: list[str], what: str = "key") -> str:
    close = difflib.get_close_matches(name, allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{key}: unknown {what}{hint}; allowed: {', '.join(allowed)}"


def _build(cls: type[Any], data: Any, where: str, origins: Mapping[str, str] | None = None) -> Any:
    """The dataclass ``cls`` from the mapping ``data`` (section ``where``), checked."""
    origins = origins or {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a table of settings, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    known = [f.name for f in fields]
    for name in data:
        if name not in known:
            raise ConfigError(_unknown(f"{where}.{name}", name, known) + origins.get(name, ""))
    for f in fields:
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and f.name not in data:
            raise ConfigError(f"{where}.{f.name} is required")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}", origins.get(k, "")) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except SettingError as exc:
        raise ConfigError(f"{where}.{exc.field} {exc.problem}{origins.get(exc.field, '')}") from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _read(path: str | Path) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc


def _check_pem_file(key: str, path: str, origin: str) -> None:
    """ConfigError naming ``key`` unless ``path`` is a readable file with a PEM block."""
    try:
        data = Path(path).expanduser().read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"{key}: cannot read {path}: {reason}{origin}") from exc
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{key}: {path} is not PEM (no '-----BEGIN ' line){origin}")


def _no_password() -> bytes:
    return b""  # an encrypted key fails to load instead of prompting on the terminal


def _reason(exc: ssl.SSLError) -> str:
    return f" ({exc.reason})" if exc.reason else ""


def _check_tls(server: ServerConfig, origins: Mapping[str, str]) -> None:
    """ConfigError naming the key unless the TLS files are readable PEM, the certificate and
    the key match, and the client CA file holds certificates (checked with :mod:`ssl`)."""
    for name, path in server.tls_files.items():
        _check_pem_file(f"server.{name}", path, origins.get(name, ""))
    if not server.tls_cert_file:
        return
    cert, key = (str(Path(p).expanduser()) for p in (server.tls_cert_file, server.tls_key_file))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"server.tls_cert_file: {server.tls_cert_file} holds no valid PEM certificate"
            f"{_reason(exc)}{origins.get('tls_cert_file', '')}"
        ) from exc
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except ssl.SSLError as exc:
        what = (
            "is not the private key of the certificate in server.tls_cert_file"
            if exc.reason == "KEY_VALUES_MISMATCH"
            else "is not an unencrypted PEM private key"
        )
        raise ConfigError(
            f"server.tls_key_file: {server.tls_key_file} {what}{_reason(exc)}"
            f"{origins.get('tls_key_file', '')}"
        ) from exc
    if server.tls_client_ca_file:
        try:
            context.load_verify_locations(cafile=str(Path(server.tls_client_ca_file).expanduser()))
        except ssl.SSLError as exc:
            raise ConfigError(
                f"server.tls_client_ca_file: {server.tls_client_ca_file} holds no valid PEM "
                f"certificate{_reason(exc)}{origins.get('tls_client_ca_file', '')}"
            ) from exc


def load_config(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Read the TOML file at ``path`` (None: defaults only), apply environment overrides
    (``env``, default ``os.environ``), then ``overrides`` (dotted key -> value, e.g.
    ``{"server.port": 6000}`` from the command line).

    Raises :class:`ConfigError` for anything invalid, naming the key; nothing else.
    """
    env = os.environ if env is None else env
    raw: dict[str, Any] = {} if path is None else _read(path)

    sections: dict[str, dict[str, Any]] = {}
    for name in _SECTIONS:
        table = raw.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{name}: expected a table ([{name}]), got {table!r}")
        sections[name] = dict(table)
    top: dict[str, Any] = {k: v for k, v in raw.items() if k not in _SECTIONS and k not in _LISTS}
    allowed_top = sorted([*_TOP_LEVEL, *_SECTIONS, *_LISTS])
    for key in top:
        if key not in _TOP_LEVEL:
            raise ConfigError(_unknown(key, key, allowed_top, "top-level key"))
    origins: dict[str, dict[str, str]] = {name: {} for name in [*_SECTIONS, ""]}

    for key in sorted(env):
        if not key.startswith(ENV_PREFIX):
            continue
        rest = key[len(ENV_PREFIX) :].lower()
        if "__" in rest:
            section, _, name = rest.partition("__")
            if section in _LISTS:
                raise ConfigError(
                    f"{key}: {section} are configured in the file only ([[{section}]] tables)"
                )
            if section not in sections:
                raise ConfigError(_unknown(key, section, sorted(_SECTIONS), "section"))
            sections[section][name] = env[key]
            origins[section][name] = f" (from {key})"
        elif rest in _TOP_LEVEL:
            top[rest] = env[key]
            origins[""][rest] = f" (from {key})"

    for dotted, value in (overrides or {}).items():
        section, _, name = dotted.rpartition(".")
        if section not in sections:
            raise ConfigError(_unknown(dotted, section, sorted(_SECTIONS), "section"))
        sections[section][name] = value
        origins[section][name] = " (from the command line)"

    lists: dict[str, Any] = {}
    for name, cls in _LISTS.items():
        items = raw.get(name, [])
        if not isinstance(items, list):
            raise ConfigError(f"{name}: expected an array of tables ([[{name}]]), got {items!r}")
        lists[name] = tuple(_build(cls, m, f"{name}[{i}]") for i, m in enumerate(items))
    lists["models"] = lists["models"] or DEFAULT_MODELS
    built = {
        name: _build(cls, sections[name], name, origins[name]) for name, cls in _SECTIONS.items()
    }
    _check_tls(built["server"], origins["server"])
    hints = typing.get_type_hints(Config)
    scalars = {k: _coerce(v, hints[k], k, origins[""].get(k, "")) for k, v in top.items()}
    try:
        return Config(**built, **lists, **scalars)
    except SettingError as exc:
        raise ConfigError(f"{exc.field} {exc.problem}{origins[''].get(exc.field, '')}") from exc


__all__ = [
    "DEFAULT_MODELS",
    "DEMO_SOURCE",
    "AuthConfig",
    "CacheConfig",
    "Config",
    "ConfigError",
    "EngineConfig",
    "LogFormat",
    "LogLevel",
    "LoggingConfig",
    "ModelConfig",
    "ServerConfig",
    "load_config",
]
