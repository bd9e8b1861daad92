"""The composition root: config -> models -> cache -> service -> gRPC server (health,
reflection, interceptors, metrics), and a graceful drain on SIGTERM/SIGINT.

:class:`OptiserveApp` is the server; :class:`ServerThread` runs one on a background
thread with its own event loop (for tests, benchmarks and embedding).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry, start_http_server

from optiserve.accounting.budget import Budgets
from optiserve.accounting.ledger import Ledger
from optiserve.accounting.metrics import register_spend_metrics
from optiserve.accounting.spend import Spending
from optiserve.accounting.spend_counters import (
    MemorySpendCounters,
    RedisSpendCounters,
    SpendCounters,
)
from optiserve.accounting.usage import UsageTracker
from optiserve.auth_keys import KeyStore, check_listen_address, default_keys_path
from optiserve.benchmarking.benchmarker import Benchmarker
from optiserve.cache import ResponseCache
from optiserve.cache.metrics import register_cache_metrics
from optiserve.config import Config
from optiserve.models.base import Backend
from optiserve.models.catalogue import ModelCatalogue
from optiserve.models.config import ModelConfig
from optiserve.models.local.backend import LocalHFBackend
from optiserve.models.local.metrics import SchedulerMetrics
from optiserve.models.remote.factory import build_remote_backend
from optiserve.models.remote.pools import ProviderPools
from optiserve.process_settings import apply_process_settings
from optiserve.quantizing import Quantizer
from optiserve.quantizing.embedder_job import EmbedderSettings
from optiserve.quantizing.quantizer import VariantBackendFactory, find_variants
from optiserve.routing.planner import Planner
from optiserve.routing.router import Router
from optiserve.rpc.auth import AuthInterceptor
from optiserve.rpc.interceptors import server_interceptors
from optiserve.rpc.limits import AdmissionInterceptor, CallLimits
from optiserve.rpc.observe import ObserveInterceptor, RpcMetrics
from optiserve.rpc.reflection import enable_reflection
from optiserve.rpc.servicer import OptiServeServicer
from optiserve.rpc.tls import server_credentials
from optiserve.service import Service
from optiserve_client.v1 import optiserve_pb2 as pb
from optiserve_client.v1 import optiserve_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["OptiServe"].full_name


def build_backends(
    config: Config, metrics: SchedulerMetrics, pools: ProviderPools
) -> list[tuple[str, Backend]]:
    """One backend per configured model, then one per Quantize variant found in the models
    directory that no configured model serves (none loaded yet); remote models of one
    provider share its pooled HTTP client through ``pools``."""
    backends: list[tuple[str, Backend]] = []
    for m in config.models:
        if m.local:
            backends.append((m.name, LocalHFBackend(m, config.engine, metrics)))
        else:
            provider = config.provider(m.provider)
            backends.append((m.name, build_remote_backend(m, provider, pools=pools)))
    names = {m.name for m in config.models}
    sources = {str(Path(m.source).expanduser().resolve()) for m in config.models if m.local}
    for path in find_variants(config.models_dir()):
        if path.name not in names and str(path.resolve()) not in sources:
            m = ModelConfig(
                name=path.name, source=str(path), description=f"Quantize variant in {path}"
            )
            backends.append((m.name, LocalHFBackend(m, config.engine, metrics)))
    return backends


def variant_backends(config: Config, metrics: SchedulerMetrics) -> VariantBackendFactory:
    """How a new variant is served: with its source model's settings (device, token caps,
    prices, tier, quality), its own weights and dtype."""
    configured = {m.name: m for m in config.models}

    def build(name: str, directory: Path, source_model: str) -> Backend:
        base = configured.get(source_model) or ModelConfig(name=name, source=str(directory))
        m = replace(
            base,
            name=name,
            source=str(directory),
            dtype="float32",  # a variant's own dtype (models/local/backend.py)
            description=f"Quantize variant of {source_model!r} in {directory}",
        )
        return LocalHFBackend(m, config.engine, metrics)

    return build


def build_planner(config: Config, catalogue: ModelCatalogue) -> Planner:
    """The planner: the configured routes over the catalogue's models."""
    infos = {m.name: m for m in catalogue.models()}
    router = Router(config.routes, infos, config.budget.pressure_fraction)
    return Planner(catalogue, router, config.default_model_name())


def open_spending(config: Config) -> Spending:
    """The ledger (when enabled) and the budgets (when a limit is set), loaded from the
    ledger so a restart keeps today's and this month's spend (blocking: call off the loop)."""
    ledger = None
    if config.ledger.enabled:
        path = Path(config.ledger.path) if config.ledger.path else None
        path = path or config.resolved_data_dir() / "ledger.sqlite3"
        ledger = Ledger(path, synchronous=config.ledger.synchronous)
    b = config.budget
    if not any((b.daily_usd, b.monthly_usd, b.tenant_daily_usd, b.tenant_monthly_usd)):
        return Spending(None, ledger)
    counters: SpendCounters = MemorySpendCounters()
    shared = bool(config.cache.redis_url)
    if shared:
        counters = RedisSpendCounters(
            config.cache.redis_url, timeout_s=config.cache.redis_timeout_s
        )
    budgets = Budgets(b, counters)
    if ledger is not None:
        budgets.load_from(ledger)
    return Spending(budgets, ledger, shared_counters=shared)


class OptiserveApp:
    """The optiserve server: owns the models, the cache, the service and the gRPC server."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.registry = CollectorRegistry()
        self.pools = ProviderPools()
        metrics = SchedulerMetrics(self.registry)
        self.backends = build_backends(config, metrics, self.pools)
        self.catalogue = ModelCatalogue(self.backends)
        embedder = (
            EmbedderSettings(
                config.cache.embedder_path,
                config.resolved_data_dir() / "onnx",
                config.cache.embedder_max_tokens,
            )
            if config.cache.enabled and config.cache.semantic_enabled
            else None
        )
        self.quantizer = Quantizer(
            config.quantize,
            config.models_dir(),
            self.catalogue,
            variant_backends(config, metrics),
            embedder,
        )
        #: Built once the models are loaded (routes read their context lengths).
        self.planner: Planner | None = None
        self.spending: Spending | None = None
        self.cache: ResponseCache | None = None
        self.service: Service | None = None
        self.health = health.aio.HealthServicer()
        #: Counts the OptiServe calls in progress (set by :meth:`start`).
        self.admission: AdmissionInterceptor | None = None
        #: The API keys (read by :meth:`start`).
        self.keys: KeyStore | None = None
        self._server: grpc.aio.Server | None = None
        self._metrics_server: Any = None
        self.port = 0

    async def start(self) -> int:
        """Load the models (off the event loop), start serving; return the bound port."""
        started = time.perf_counter()
        # A public address without keys is refused before anything loads or binds.
        check_listen_address(self.config.server.host, self.config.auth)
        keys = await asyncio.to_thread(
            KeyStore, default_keys_path(self.config.auth, self.config.resolved_data_dir())
        )
        self.keys = keys
        if self.config.auth.required and not keys.keys:
            log.warning(
                "auth.required is true but the keys file has no keys yet; every OptiServe "
                "call is refused until one is created with `optiserve keys create`",
                extra={"keys_file": str(keys.path)},
            )
        # Process-wide library settings, once, before models and cache load.
        apply_process_settings(self.config)
        # The ledger first: an unwritable one stops the start before minutes of loading.
        self.spending = await asyncio.to_thread(open_spending, self.config)
        register_spend_metrics(self.spending, self.registry)
        for _, backend in self.backends:
            await asyncio.to_thread(backend.load)
        self.planner = build_planner(self.config, self.catalogue)
        if self.config.cache.enabled:
            self.cache = await asyncio.to_thread(
                ResponseCache.open, self.config.cache, self.config.resolved_data_dir()
            )
            register_cache_metrics(self.cache, self.registry)
        await self._warm_up()
        self.service = Service(
            self.planner,
            UsageTracker(),
            self.cache,
            spending=self.spending,
            replay_chunk_chars=self.config.cache.replay_chunk_chars,
            max_pending_stores=self.config.cache.max_pending_writes,
        )
        cfg = self.config.server
        # No maximum_concurrent_rpcs: our admission counts OptiServe calls only, so health
        # and reflection always answer (rpc/limits.py).
        self.admission = AdmissionInterceptor(
            CallLimits(
                cfg.max_concurrent_rpcs, cfg.max_rpcs_per_connection, cfg.max_rpcs_per_tenant
            ),
            self.config.key_limits,
        )
        server = grpc.aio.server(
            interceptors=server_interceptors(
                AuthInterceptor(keys, self.config.auth.required),
                self.admission,
                cfg.stream_write_timeout_s,
                ObserveInterceptor(
                    RpcMetrics(self.registry), log_prompts=self.config.logging.log_prompts
                ),
            ),
            options=cfg.grpc_options(),
        )
        benchmarker = Benchmarker(self.config.benchmark, self.service, self.catalogue)
        servicer = OptiServeServicer(self.service, self.quantizer, benchmarker)
        pb_grpc.add_OptiServeServicer_to_server(servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        enable_reflection(server, (SERVICE_NAME, health.SERVICE_NAME))
        address = f"{cfg.host}:{cfg.port}"
        credentials = await asyncio.to_thread(
            server_credentials, cfg.tls_cert_file, cfg.tls_key_file, cfg.tls_client_ca_file
        )
        if credentials is None:
            self.port = server.add_insecure_port(address)
        else:
            try:
                self.port = server.add_secure_port(address, credentials)
            except RuntimeError as exc:  # grpc says only "Failed to bind"
                raise OSError(
                    f"cannot listen on {address} with TLS: the address is in use or not "
                    "allowed, or grpc refused server.tls_cert_file / server.tls_key_file"
                ) from exc
        if self.port == 0:
            raise OSError(f"cannot listen on {address} (in use or not allowed)")
        # Metrics first, so whoever sees the gRPC port open can scrape them too.
        if cfg.metrics_port:
            self._metrics_server = start_http_server(
                cfg.metrics_port, addr=cfg.host, registry=self.registry
            )
        await server.start()
        self._server = server
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "serving",
            extra={
                "address": f"{cfg.host}:{self.port}",
                "tls": bool(cfg.tls_cert_file),
                "mutual_tls": bool(cfg.tls_client_ca_file),
                "models": [n for n, _ in self.backends],
                "default_model": self.planner.default,
                "torch_threads": self.config.engine.torch_threads,
                "start_s": round(time.perf_counter() - started, 2),
            },
        )
        return self.port

    async def _warm_up(self) -> None:
        """One short generation per local model and one embedding for the semantic cache,
        measured and logged, before the server listens (so health's first SERVING comes
        after them)."""
        tokens = self.config.engine.warmup_tokens
        took: dict[str, float] = {}
        if tokens:
            for name, backend in self.backends:
                if isinstance(backend, LocalHFBackend):
                    took[name] = round(await backend.warm_up(tokens) * 1000.0, 1)
        embedder = self.cache.embedder if self.cache is not None else None
        if embedder is not None:
            started = time.perf_counter()
            await asyncio.to_thread(embedder.embed, "Hello, who are you?")
            took["embedder"] = round((time.perf_counter() - started) * 1000.0, 1)
        if took:
            log.info("warmed up", extra={"warm_up_ms": took, "tokens": tokens})

    async def _set_health(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain: health NOT_SERVING, refuse new work, let in-flight RPCs finish, stop."""
        if self._server is None:
            return
        grace = self.config.server.grace_period_s if grace_s is None else grace_s
        log.info("draining", extra={"grace_s": grace})
        started = time.monotonic()
        assert self.service is not None
        await self.service.drain(0.0)  # new requests get UNAVAILABLE from now on
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        announce = min(self.config.server.drain_announce_s, grace)
        await asyncio.sleep(announce)
        await self._server.stop(grace - announce)
        self._server = None
        # In-flight RPCs are done; their cache writes get what is left of the grace period.
        await self.service.drain(grace - (time.monotonic() - started))
        self.quantizer.close()
        for name in self.catalogue.names():  # with the variants served since the start
            await asyncio.to_thread(self.catalogue.backend(name).close)
        if self.cache is not None:
            await asyncio.to_thread(self.cache.close)
        if self.spending is not None:
            await asyncio.to_thread(self.spending.close)
        if self._metrics_server is not None:
            self._metrics_server[0].shutdown()
            self._metrics_server = None
        log.info("stopped")

    async def serve_until_signal(
        self, signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT)
    ) -> None:
        """Start, serve until SIGTERM/SIGINT, then drain and stop."""
        await self.start()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in signals:
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await self.stop()


class ServerThread:
    """Runs an :class:`OptiserveApp` on a background thread with its own event loop."""

    def __init__(self, config: Config) -> None:
        self.app = OptiserveApp(config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> int:
        """Start the server; return its port."""
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self.app.start(), self._loop)
        return future.result()

    @property
    def target(self) -> str:
        """``host:port`` to dial."""
        return f"{self.app.config.server.host}:{self.app.port}"

    def wait_for_cache_writes(self, timeout_s: float = 30.0) -> None:
        """Block until the cache writes pending now have finished (they run after the answer
        has gone out, so a repeat sent at once may still miss)."""
        service = self.app.service
        if service is not None:
            coro = service.wait_for_stores(timeout_s)
            asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def stop(self, grace_s: float = 0.0) -> None:
        """Drain and stop the server, then the loop and thread."""
        asyncio.run_coroutine_threadsafe(self.app.stop(grace_s), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
