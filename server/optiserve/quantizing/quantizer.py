"""Quantize jobs: checked before they start, run one at a time off the event loop, measured
on the variant as reloaded in a fresh process, then (when asked) served.

A job builds its variant in a hidden ``.partial-*`` directory of the models directory,
measures it there, and renames it into place only when everything succeeded, so a failed
or cancelled job (the client cancelled the RPC, or its deadline passed) leaves nothing
behind, and a variant directory that exists is always complete. The job itself runs on
one worker thread (quantizing) and one child process (measuring, see
:mod:`~optiserve.models.local.quantize.fresh_process`); both stop at the next layer or
measuring step once the job's cancel event is set.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from optiserve.domain.errors import FailedPrecondition, ResourceExhausted
from optiserve.domain.quantize import QuantizeProgress, QuantizeReport, QuantizeRequest
from optiserve.models.base import Backend
from optiserve.models.catalogue import ModelCatalogue
from optiserve.models.local.backend import LocalHFBackend
from optiserve.models.local.quantize.base import Method, Progress, QuantSpec
from optiserve.models.local.quantize.common import weight_bytes
from optiserve.models.local.quantize.config import QuantizeConfig
from optiserve.models.local.quantize.fresh_process import measure_in_fresh_process
from optiserve.models.local.quantize.measure import Measurement, MeasureOptions, eval_token_ids
from optiserve.models.local.quantize.methods import method_named
from optiserve.models.local.quantize.variant_io import is_variant
from optiserve.quantizing.embedder_job import (
    EMBEDDER_METHOD,
    EMBEDDER_MODEL,
    EmbedderSettings,
    check_embedder_request,
    embedder_report,
)
from optiserve.quantizing.names import default_variant_name, variant_dir

log = logging.getLogger(__name__)

QuantizeEvent = QuantizeProgress | QuantizeReport
#: ``factory(name, directory, source_model)``: the (not yet loaded) backend that serves
#: the variant in ``directory`` as ``name``, made from the model ``source_model``.
VariantBackendFactory = Callable[[str, Path, str], Backend]

#: Prefix of the directories jobs build in (removed when a job fails or is cancelled).
PARTIAL_PREFIX = ".partial-"


@dataclass(frozen=True)
class _Job:
    """A checked request: everything the worker thread needs."""

    name: str
    model: str
    method: Method
    spec: QuantSpec
    source: Path
    out: Path
    evaluation_text: str
    serve: bool


class Quantizer:
    """Runs Quantize requests (see the module docstring)."""

    def __init__(
        self,
        config: QuantizeConfig,
        models_dir: Path,
        catalogue: ModelCatalogue,
        variant_backend: VariantBackendFactory,
        embedder: EmbedderSettings | None = None,
    ) -> None:
        self._config = config
        self._embedder = embedder
        self._models_dir = models_dir
        self._catalogue = catalogue
        self._variant_backend = variant_backend
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="quantize")
        self._lock = asyncio.Lock()
        self._waiting = 0
        #: What the running job is, for the messages of those that wait or are refused.
        self._running = ""
        self._running_since = 0.0

    def close(self) -> None:
        """Stop taking jobs (a running one finishes or is cancelled by its RPC)."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def run(self, request: QuantizeRequest) -> AsyncIterator[QuantizeEvent]:
        """Progress events, then the report. Closing the iterator cancels the job."""
        if not self._config.enabled:
            raise FailedPrecondition(
                "Quantize is switched off on this server (quantize.enabled = false)"
            )
        embedder = request.model == EMBEDDER_MODEL and not self._catalogue.has(EMBEDDER_MODEL)
        if embedder:
            if self._embedder is None:
                raise FailedPrecondition(
                    "this server has no semantic cache embedder to quantize (cache off)"
                )
            check_embedder_request(request)
            job = None
        else:
            job = await asyncio.to_thread(self._check, request)
        self._admit()
        self._waiting += 1
        try:
            if self._lock.locked():
                yield QuantizeProgress("queued", 0, 0, 0.0, f"waiting for {self._running}")
            await self._lock.acquire()
        finally:
            self._waiting -= 1
        self._running_since = time.monotonic()
        if job is None:
            self._running = f"{EMBEDDER_MODEL} ({EMBEDDER_METHOD})"
            async for event in self._run_embedder():
                yield event
            return
        self._running = f"{job.name} ({job.method.name} of {job.model})"
        async for event in self._run_locked(job):
            yield event

    async def _run_embedder(self) -> AsyncIterator[QuantizeEvent]:
        """The embedder's report (the lock is held; released when the worker is done)."""
        assert self._embedder is not None
        yield QuantizeProgress("measuring embedder", 0, 1, 0.0, "fp32 vs int8 on fixed sentences")
        work = self._executor.submit(embedder_report, self._embedder)
        done = asyncio.wrap_future(work)
        done.add_done_callback(self._finished)
        yield await asyncio.shield(done)

    def _admit(self) -> None:
        if self._lock.locked() and self._waiting >= self._config.max_waiting:
            running_s = time.monotonic() - self._running_since
            raise ResourceExhausted(
                f"a Quantize job is running ({self._running}, for {running_s:.0f} s) and "
                f"{self._waiting} wait, the most this server queues "
                f"(quantize.max_waiting = {self._config.max_waiting}); retry when it is done"
            )

    async def _run_locked(self, job: _Job) -> AsyncIterator[QuantizeEvent]:
        """Run ``job`` holding the lock; the lock is released when the worker is done."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Progress] = asyncio.Queue()
        cancel = threading.Event()
        started = time.perf_counter()

        def progress(p: Progress) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, p)

        try:
            work: Future[Measurement] = self._executor.submit(self._build, job, progress, cancel)
        except BaseException:
            self._lock.release()
            raise
        done = asyncio.wrap_future(work)
        done.add_done_callback(self._finished)
        try:
            while not done.done() or not queue.empty():
                get = asyncio.ensure_future(queue.get())
                waiters: set[asyncio.Future[Any]] = {get, done}
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                    continue
                p = get.result()
                elapsed = time.perf_counter() - started
                yield QuantizeProgress(p.phase, p.step, p.steps, elapsed, p.message)
            measurement = done.result()
        finally:
            cancel.set()  # a no-op when the job is done; otherwise it stops at its next step
        serving, notes = False, measurement.notes
        if job.serve:
            yield QuantizeProgress("registering", 0, 1, time.perf_counter() - started)
            serving, note = await self._serve(job)
            notes = (*notes, note) if note else notes
        report = measurement.as_report(job.name, str(job.out), serving=serving)
        yield replace(report, duration_s=time.perf_counter() - started, notes=notes)

    def _finished(self, done: asyncio.Future[Any]) -> None:
        self._lock.release()
        self._running = ""
        if not done.cancelled():
            done.exception()  # retrieved here: a cancelled RPC never reads it

    # -- checks (a worker thread: they read config.json and the tokenizer) -----------------

    def _check(self, request: QuantizeRequest) -> _Job:
        """The job ``request`` asks for, or the error saying why it cannot run."""
        method = method_named(request.method)
        why = method.unavailable()
        if why:
            raise FailedPrecondition(f"method {method.name} cannot run on this server: {why}")
        source = self._source(request.model)
        spec = QuantSpec(
            method=method.name,
            bits=request.bits,
            group_size=request.group_size,
            sparsity=request.sparsity,
            calibration_texts=request.calibration_texts,
        )
        method.check(spec, json.loads((source / "config.json").read_text()))
        name = request.variant_name or default_variant_name(
            request.model, method.name, request.bits
        )
        out = variant_dir(self._models_dir, name)
        if self._catalogue.has(name) or out.exists():
            raise FailedPrecondition(
                f"variant_name {name!r} is taken (a served model or {out} exists); choose "
                "another name, or remove that directory"
            )
        if request.evaluation_text:
            from transformers import AutoTokenizer

            eval_token_ids(AutoTokenizer.from_pretrained(str(source)), request.evaluation_text)
        self._check_disk(source)
        return _Job(
            name=name,
            model=request.model,
            method=method,
            spec=spec,
            source=source,
            out=out,
            evaluation_text=request.evaluation_text,
            serve=request.serve,
        )

    def _source(self, model: str) -> Path:
        """The directory of local model ``model`` (NOT_FOUND for an unknown name,
        FAILED_PRECONDITION for a remote model or a variant)."""
        backend = self._catalogue.backend(model)
        local = sorted(
            name
            for name in self._catalogue.names()
            if isinstance(self._catalogue.backend(name), LocalHFBackend)
        )
        if not isinstance(backend, LocalHFBackend):
            raise FailedPrecondition(
                f"model {model!r} is not local (provider {backend.info.provider!r}); only "
                f"models served on this host can be quantized: {', '.join(local) or 'none'}"
            )
        path = Path(backend.source_path)
        if not path.is_dir():  # a hub id: the copy in the local Hugging Face cache
            from huggingface_hub import snapshot_download

            try:
                path = Path(snapshot_download(backend.source_path, local_files_only=True))
            except Exception as exc:
                raise FailedPrecondition(
                    f"model {model!r} ({backend.source_path}) has no local copy to quantize: {exc}"
                ) from exc
        if is_variant(path):
            raise FailedPrecondition(
                f"model {model!r} is already a Quantize variant; quantize its source instead"
            )
        return path

    def _check_disk(self, source: Path) -> None:
        """RESOURCE_EXHAUSTED when the models directory's disk lacks room for the variant
        (at most twice the source's weight bytes: an fp16 source's int8 variant keeps its
        embeddings in fp32) plus ``min_free_bytes``."""
        self._models_dir.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self._models_dir).free
        room = 2 * weight_bytes(source)
        need = room + self._config.min_free_bytes
        if free < need:
            raise ResourceExhausted(
                f"not enough free disk for the variant in {self._models_dir}: {free} bytes "
                f"free, {need} needed (room for the variant, {room}, plus "
                f"quantize.min_free_bytes, {self._config.min_free_bytes}); free some space"
            )

    # -- the job (the worker thread) -------------------------------------------------------

    def _build(
        self, job: _Job, progress: Callable[[Progress], None], cancel: threading.Event
    ) -> Measurement:
        """Build the variant in a partial directory, measure it, move it into place."""
        partial = self._models_dir / f"{PARTIAL_PREFIX}{job.name}-{uuid.uuid4().hex[:8]}"
        partial.mkdir(parents=True)
        try:
            job.method.apply(job.source, partial, job.spec, progress, cancel)
            options = MeasureOptions(
                new_tokens=self._config.measure_new_tokens, rounds=self._config.measure_rounds
            )
            measurement = measure_in_fresh_process(
                job.source,
                partial,
                eval_text=job.evaluation_text,
                progress=progress,
                cancel=cancel,
                options=options,
                timeout_s=self._config.measure_timeout_s,
            )
            partial.rename(job.out)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        log.info(
            "variant built",
            extra={"variant": job.name, "method": job.method.name, "path": str(job.out)},
        )
        return measurement

    async def _serve(self, job: _Job) -> tuple[bool, str]:
        """Load and register the variant; (served, a note when it could not be)."""
        backend = self._variant_backend(job.name, job.out, job.model)
        try:
            await asyncio.to_thread(backend.load)
            self._catalogue.add(job.name, backend)
        except Exception as exc:
            log.exception("serving the variant failed", extra={"variant": job.name})
            await asyncio.to_thread(backend.close)
            return False, f"the variant was saved but could not be served: {exc}"
        log.info("variant served", extra={"variant": job.name})
        return True, ""


def find_variants(models_dir: Path) -> list[Path]:
    """Variant directories in ``models_dir``. Partial builds a killed server left behind
    are removed (a job's directory is complete once renamed, so nothing finished is lost)."""
    if not models_dir.is_dir():
        return []
    variants = []
    for path in sorted(models_dir.iterdir()):
        if path.is_dir() and path.name.startswith(PARTIAL_PREFIX):
            log.info("removing a partial variant", extra={"path": str(path)})
            shutil.rmtree(path, ignore_errors=True)
        elif path.is_dir() and is_variant(path):
            variants.append(path)
    return variants
