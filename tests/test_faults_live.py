"""Faults, each a test, through a live server: what the client sees when things break.

* the disk refuses the cache's and the ledger's writes (RLIMIT_FSIZE lowered on the running
  server: every write to a regular file fails with EFBIG, as on a full disk, root or not):
  requests still answer OK, each failure is logged and counted, and writes resume when the
  disk takes them again;
* SIGTERM with streams in flight: they finish, new requests get UNAVAILABLE, exit code 0;
* SIGKILL under load, then a restart on the same data directory: the cache opens and still
  answers what it had stored, every request answered OK before the kill has its ledger row,
  both files pass ``PRAGMA integrity_check``;
* the model's forward pass raising mid-batch: only the request it is pinned on fails;
* a client cancelling mid-stream: decoding of that sequence stops within a step and the
  in-flight gauges return to 0.

Servers run as subprocesses (``python -m optiserve serve``) where a signal or a process
limit is the fault, in-process (:class:`ServerThread`) otherwise. Everything is on
127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import resource
import signal
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from transformers import AutoTokenizer

from optiserve.app import ServerThread
from optiserve.config import Config
from optiserve.models.local.backend import LocalHFBackend
from optiserve_client import AsyncClient, Client, InternalError
from optiserve_client.v1 import optiserve_pb2 as pb
from optiserve_client.v1 import optiserve_pb2_grpc as pb_grpc
from server_process import free_port, serve_process


def _scrape(port: int) -> dict[str, float]:
    """The Prometheus endpoint's samples, by name with labels as written."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.02)


@dataclass
class Served:
    """A ``python -m optiserve serve`` subprocess and what it printed."""

    proc: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    data_dir: Path
    output: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return "".join(self.output)

    def metrics(self) -> dict[str, float]:
        return _scrape(self.metrics_port)


def _serve(
    tiny_model_dir: Path, data_dir: Path, conf_dir: Path, *, cache: bool = True, extra: str = ""
) -> Served:
    """Start a server subprocess with the ledger on (and the cache's exact layer, persisted,
    when ``cache``), and wait until it takes connections."""
    port, metrics_port = free_port(), free_port()
    config = conf_dir / f"optiserve-{port}.toml"
    config.write_text(
        f'data_dir = "{data_dir}"\n'
        f"[server]\nport = {port}\nmetrics_port = {metrics_port}\n"
        "grace_period_s = 20\ndrain_announce_s = 1\n"
        '[logging]\nformat = "json"\n'
        "[engine]\ntorch_threads = 1\n"
        f"[cache]\nenabled = {str(cache).lower()}\nsemantic_enabled = false\n"
        f"{extra}"
        f'[[models]]\nname = "tiny"\nsource = "{tiny_model_dir}"\nmax_new_tokens_cap = 480\n'
    )
    proc = serve_process(config)
    served = Served(proc, port, metrics_port, data_dir)

    def read() -> None:
        assert proc.stdout is not None
        for line in iter(proc.stdout.readline, b""):
            served.output.append(line.decode(errors="replace"))

    served._reader = threading.Thread(target=read, daemon=True)
    served._reader.start()
    # Poll the port: gRPC's reconnect backoff would wait seconds after the first refusal.
    deadline = time.monotonic() + 90
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return served
        if proc.poll() is not None or time.monotonic() > deadline:
            _finish(served)
            raise AssertionError(f"the server did not start:\n{served.log()}")
        time.sleep(0.05)


def _finish(served: Served) -> None:
    if served.proc.poll() is None:
        served.proc.kill()
    served.proc.wait()
    if served._reader is not None:
        served._reader.join(timeout=5)


class Servers:
    """The subprocess servers of this module, on one data directory, taking turns.

    Each start costs seconds (importing torch), so the faults that need a process share as
    few as possible: the disk test uses the first server; the kill test kills it and starts
    a second on the same data; the drain test sends that one SIGTERM. A test run alone
    starts its own."""

    def __init__(self, model_dir: Path, root: Path) -> None:
        self.model_dir = model_dir
        self.root = root
        self.data = root / "data"
        self.current: Served | None = None

    def get(self) -> Served:
        """The running server, or a new one on the data directory."""
        if self.current is None or self.current.proc.poll() is not None:
            self.current = _serve(self.model_dir, self.data, self.root)
        return self.current

    def close(self) -> None:
        if self.current is not None:
            _finish(self.current)


@pytest.fixture(scope="module")
def servers(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    held = Servers(tiny_model_dir, tmp_path_factory.mktemp("faults"))
    yield held
    held.close()


def _ledger_rows(data: Path) -> dict[str, str]:
    """request_id -> status of every ledger row (read beside the running server: WAL)."""
    with contextlib.closing(sqlite3.connect(data / "ledger.sqlite3")) as db:
        return {r[0]: r[1] for r in db.execute("SELECT request_id, status FROM requests")}


def _integrity(path: Path) -> str:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])


# ---------------------------------------------------------------------------------------
# The disk refuses writes
# ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _disk_refuses_writes(pid: int) -> Iterator[None]:
    """Make every write to a regular file by process ``pid`` fail, then give the disk back.

    RLIMIT_FSIZE 0: a write fails with EFBIG, which SQLite reports as a disk I/O error (as
    it reports ENOSPC, "database or disk is full"). A process limit holds for root too,
    where a read-only chmod stops nothing; Python ignores SIGXFSZ, so the write fails
    rather than the process dying. Pipes (the server's log) are not regular files."""
    old = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (0, old[1]))
    try:
        yield
    finally:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, old)


def test_cache_and_ledger_writes_failing_still_answer(servers: Servers) -> None:
    """With the disk refusing writes, requests (unary and streamed) answer OK with text; the
    cache's SQLite write and the ledger row of each fail, logged and counted; the answers
    are still cached in memory (repeats hit); once the disk takes writes again, the same
    server persists and records again."""
    served = servers.get()
    log_from = len(served.output)
    count = 3
    prompts = [f"disk full, request {i}" for i in range(count)]
    with Client(served.target, timeout=60) as client:
        before = served.metrics()
        warm = client.generate("before the disk fills", max_new_tokens=4, request_id="disk-warm")
        assert warm.provider == "local" and warm.text
        stores = before["optiserve_cache_stores_total"] + 1
        _wait_for(lambda: served.metrics()["optiserve_cache_stores_total"] == stores, what="store")

        with _disk_refuses_writes(served.proc.pid):
            answers = [
                client.generate(p, max_new_tokens=4, request_id=f"full-{i}")
                for i, p in enumerate(prompts)
            ]
            chunks = list(
                client.stream("disk full, streamed", max_new_tokens=4, request_id="full-s")
            )
            errors = before["optiserve_cache_store_errors_total"] + count + 1
            _wait_for(
                lambda: served.metrics()["optiserve_cache_store_errors_total"] == errors,
                what="the failed cache writes",
            )
            repeats = [client.generate(p, max_new_tokens=4) for p in prompts]
            during = served.metrics()
        streamed = chunks[-1].completion
        for answer in [*answers, streamed]:
            assert answer is not None and answer.text, answer
            assert answer.provider == "local" and answer.usage.completion_tokens >= 1, answer
        failures = during["optiserve_ledger_write_failures_total"]
        # A row per answer: the generated ones and the repeats served from the cache.
        assert failures == before["optiserve_ledger_write_failures_total"] + 2 * count + 1
        assert during["optiserve_cache_stores_total"] == stores + count + 1  # in memory
        for answer, repeat in zip(answers, repeats, strict=True):
            assert repeat.provider == "cache" and repeat.text == answer.text, repeat

        # The disk takes writes again: the same connections write again.
        again = client.generate("the disk has room again", max_new_tokens=4, request_id="disk-ok")
        assert again.provider == "local"
        stores += count + 2
        _wait_for(
            lambda: served.metrics()["optiserve_cache_stores_total"] == stores,
            what="the store after the fault",
        )
        hit = client.generate("the disk has room again", max_new_tokens=4, request_id="disk-hit")
        assert hit.provider == "cache" and hit.text == again.text, hit
        after = served.metrics()
    assert after["optiserve_cache_store_errors_total"] == errors
    assert after["optiserve_ledger_write_failures_total"] == failures
    log = "".join(served.output[log_from:])
    assert log.count("the answer is cached in memory only") == count + 1, log
    assert log.count("ledger write failed") >= 1, log
    assert "disk I/O error" in log or "disk is full" in log, log
    rows = _ledger_rows(servers.data)
    assert {"disk-warm", "disk-ok", "disk-hit"} <= set(rows)
    assert not set(rows) & {*(f"full-{i}" for i in range(count)), "full-s"}
    with contextlib.closing(sqlite3.connect(servers.data / "response_cache.sqlite3")) as db:
        persisted = {r[0] for r in db.execute("SELECT query FROM entries")}
    assert "the disk has room again" in persisted and not persisted & set(prompts)
    print(
        f"disk refusing writes: {count + 1} answers OK (repeats hit from memory), cache "
        f"store errors {errors - before['optiserve_cache_store_errors_total']:.0f}, "
        f"ledger failures {failures - before['optiserve_ledger_write_failures_total']:.0f}"
    )


# ---------------------------------------------------------------------------------------
# SIGKILL under load, then a restart
# ---------------------------------------------------------------------------------------


def test_sigkill_under_load_loses_no_committed_row(servers: Servers) -> None:
    """kill -9 with requests in flight; the restarted server opens both files intact, the
    cache still answers what it had stored, and every request answered OK before the kill
    has its ledger row."""
    served = servers.get()
    stored = [f"Stored before the kill, question {i}" for i in range(6)]
    answered: set[str] = set()  # request ids answered OK before the kill
    failed: list[grpc.StatusCode] = []
    lock = threading.Lock()
    stop = threading.Event()

    def load(worker: int) -> None:
        with grpc.insecure_channel(served.target) as channel:
            stub = pb_grpc.OptiServeStub(channel)
            n = 0
            while not stop.is_set():
                rid = f"load-{worker}-{n}"
                request = pb.GenerateRequest(
                    request_id=rid,
                    prompt=f"Worker {worker} asks question number {n}",
                    sampling=pb.SamplingParams(max_new_tokens=8),
                )
                n += 1
                try:
                    stub.Generate(request, timeout=10)
                except grpc.RpcError as exc:
                    with lock:
                        failed.append(exc.code())
                    return
                with lock:
                    answered.add(rid)

    with Client(served.target, timeout=60) as client:
        stores = served.metrics()["optiserve_cache_stores_total"] + len(stored)
        texts = {p: client.generate(p, max_new_tokens=8).text for p in stored}
    _wait_for(
        lambda: served.metrics()["optiserve_cache_stores_total"] == stores,
        what="the cache writes",
    )
    workers = [threading.Thread(target=load, args=(w,)) for w in range(6)]
    for w in workers:
        w.start()
    try:
        _wait_for(lambda: len(answered) >= 40, timeout=30, what="40 answers")
        served.proc.send_signal(signal.SIGKILL)
        assert served.proc.wait(timeout=10) == -signal.SIGKILL
        with lock:
            ok_before_kill = set(answered)
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=15)
    assert failed, "no request was in flight at the kill"
    assert all(c == grpc.StatusCode.UNAVAILABLE for c in failed), failed

    again = servers.get()
    assert again is not served
    with Client(again.target, timeout=60) as client:
        for prompt, text in texts.items():
            hit = client.generate(prompt, max_new_tokens=8)
            assert hit.provider == "cache" and hit.text == text, (prompt, hit)
    rows = _ledger_rows(servers.data)
    missing = ok_before_kill - set(rows)
    assert not missing, f"{len(missing)} of {len(ok_before_kill)} committed rows lost"
    assert all(rows[rid] == "OK" for rid in ok_before_kill)
    assert _integrity(servers.data / "ledger.sqlite3") == "ok"
    assert _integrity(servers.data / "response_cache.sqlite3") == "ok"
    entries = again.metrics()["optiserve_cache_entries"]
    with contextlib.closing(sqlite3.connect(servers.data / "response_cache.sqlite3")) as db:
        assert entries == db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
    assert entries >= len(stored)
    assert not list(servers.data.glob("*.corrupt-*")), list(servers.data.iterdir())
    assert "corrupt" not in again.log()
    cut = sum(r.startswith("load-") for r in rows) - len(ok_before_kill)
    print(
        f"kill -9: {len(ok_before_kill)} answered OK before it, {len(failed)} cut off "
        f"(UNAVAILABLE; {cut} of them committed); after the restart {len(rows)} ledger rows, "
        f"{entries:.0f} cache entries, {len(stored)} of {len(stored)} stored prompts hit"
    )


# ---------------------------------------------------------------------------------------
# SIGTERM under load
# ---------------------------------------------------------------------------------------

STREAMS = 8


def test_sigterm_with_streams_in_flight_drains_them(servers: Servers) -> None:
    """Eight streams in flight on SIGTERM all finish with their whole answer; every request
    sent after it gets UNAVAILABLE; the process exits 0 within the grace period."""
    served = servers.get()
    max_new = 400
    prompts = [f"Stream {i} tells a long story" for i in range(STREAMS)]
    # Each answer first (the cache bypassed, so the streams below generate too).
    with Client(served.target, timeout=60) as client, ThreadPoolExecutor(STREAMS) as pool:
        expected = list(
            pool.map(
                lambda p: client.generate(p, max_new_tokens=max_new, cache_mode="bypass").text,
                prompts,
            )
        )
    started = threading.Barrier(STREAMS + 1, timeout=30)
    results: list[Any] = [None] * STREAMS

    def stream(i: int) -> None:
        with Client(served.target, timeout=60) as own:
            chunks = own.stream(prompts[i], max_new_tokens=max_new, cache_mode="bypass")
            try:
                first = next(chunks)
                started.wait()
                results[i] = [first, *chunks]
            except Exception as exc:
                results[i] = exc

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(STREAMS)]
    for t in threads:
        t.start()
    started.wait()
    sent = time.monotonic()
    served.proc.send_signal(signal.SIGTERM)
    _wait_for(lambda: '"msg": "draining"' in served.log(), what="draining")

    # New requests, each on a new connection, until the process is gone.
    refused: list[tuple[grpc.StatusCode, str]] = []
    in_flight_at_refusal = []
    request = pb.GenerateRequest(prompt="too late", sampling=pb.SamplingParams(max_new_tokens=2))
    while served.proc.poll() is None and len(refused) < 200:
        with grpc.insecure_channel(served.target) as channel:
            try:
                pb_grpc.OptiServeStub(channel).Generate(request, timeout=2)
                refused.append((grpc.StatusCode.OK, "answered"))
            except grpc.RpcError as exc:
                refused.append((exc.code(), exc.details() or ""))
        in_flight_at_refusal.append(sum(r is None for r in results))
        time.sleep(0.02)
    for t in threads:
        t.join(timeout=30)
    assert served.proc.wait(timeout=30) == 0
    elapsed = time.monotonic() - sent
    for i, result in enumerate(results):
        assert isinstance(result, list), (i, result)
        done = result[-1].completion
        assert done is not None, f"stream {i} ended without its summary"
        assert done.provider == "local" and done.text == expected[i], i
        assert done.usage.completion_tokens == max_new or done.finish_reason == "stop", done
    assert refused, "no request was sent during the drain"
    assert all(code == grpc.StatusCode.UNAVAILABLE for code, _ in refused), refused
    assert any("shutting down" in details for _, details in refused), refused
    assert max(in_flight_at_refusal) == STREAMS, "the streams ended before the first refusal"
    assert elapsed < 20
    assert '"msg": "stopped"' in served.log()
    messages = sorted({d.split(" (")[0][:60] for _, d in refused})
    print(
        f"SIGTERM: {STREAMS} streams OK ({max_new} tokens each), {len(refused)} new requests "
        f"UNAVAILABLE {messages}, exit 0 after {elapsed:.1f} s"
    )


# ---------------------------------------------------------------------------------------
# 4 and 5: in-process, with a hook on the model's forward pass
# ---------------------------------------------------------------------------------------


class ForwardHook:
    """Wraps a model's ``forward``: raises for prompts holding ``poison`` (prefill only),
    raises once on the next decode when ``fail_next_decode``, sleeps ``delay_s`` per call
    (to make a step long enough to count steps from the outside)."""

    def __init__(self, forward: Callable[..., Any]) -> None:
        self.forward = forward
        self.poison: int | None = None
        self.fail_next_decode = False
        self.delay_s = 0.0
        self.failures: list[str] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        ids = kwargs["input_ids"]
        if ids.shape[1] > 1 and self.poison is not None and bool((ids == self.poison).any()):
            self.failures.append(f"prefill of {ids.shape[0]}")
            raise RuntimeError("injected forward fault (poisoned prompt)")
        if ids.shape[1] == 1 and self.fail_next_decode:
            self.fail_next_decode = False
            self.failures.append(f"decode of {ids.shape[0]}")
            raise RuntimeError("injected forward fault (one decode step)")
        if self.delay_s:
            time.sleep(self.delay_s)
        return self.forward(*args, **kwargs)


@pytest.fixture(scope="module")
def hooked(make_config: Callable[..., Config]) -> Iterator[tuple[ServerThread, ForwardHook, int]]:
    """A server (metrics on) whose model's forward goes through a :class:`ForwardHook`; the
    idle scheduler waits up to 0.3 s to batch a burst."""
    metrics_port = free_port()
    config = make_config(server={"metrics_port": metrics_port})
    config = replace(config, engine=replace(config.engine, max_wait_ms=300.0, max_batch_size=8))
    thread = ServerThread(config)
    thread.start()
    backend = thread.app.backends[0][1]
    assert isinstance(backend, LocalHFBackend) and backend.scheduler is not None
    model = backend.scheduler.model
    hook = ForwardHook(model.forward)
    functools.update_wrapper(hook, model.forward)  # keeps the signature (cache argument)
    model.forward = hook
    try:
        yield thread, hook, metrics_port
    finally:
        thread.stop()


RUNNING = ["The long answer one", "The long answer two"]
BURST = ["The quick brown fox", "def parse(text):", "In the beginning", "import os, sys"]
POISONED = "zebra quartz marmalade"


def test_a_model_raising_mid_batch_fails_only_its_request(
    hooked: tuple[ServerThread, ForwardHook, int], tiny_model_dir: Path
) -> None:
    """Two streams decoding; a burst of five arrives, one of whose prompts makes the forward
    pass raise, and one decode step raises once: the poisoned request gets INTERNAL, every
    other request (running and in the burst) finishes with the text it gets alone."""
    server, hook, port = hooked
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    innocent = {t for p in RUNNING + BURST for t in tokenizer(p)["input_ids"]}
    candidates = [t for t in tokenizer(POISONED)["input_ids"] if t not in innocent]
    candidates = [t for t in candidates if t not in tokenizer.all_special_ids]
    assert candidates, "no token of the poisoned prompt is unique to it"
    long_new, short_new = 200, 8
    with Client(server.target, timeout=60) as client:
        alone = {p: client.generate(p, max_new_tokens=long_new).text for p in RUNNING}
        alone |= {p: client.generate(p, max_new_tokens=short_new).text for p in BURST}
    hook.poison = candidates[0]
    hook.failures.clear()
    try:

        async def scenario() -> tuple[list[Any], list[Any]]:
            async with AsyncClient(server.target, timeout=60) as aclient:

                async def streamed(prompt: str) -> Any:
                    last = None
                    async for chunk in aclient.stream(prompt, max_new_tokens=long_new):
                        last = chunk
                    return last.completion if last else None

                running = [asyncio.create_task(streamed(p)) for p in RUNNING]
                # Both admitted and decoding, far from their end.
                await asyncio.to_thread(
                    _wait_for,
                    lambda: _sample(_scrape(port), "optiserve_scheduler_running") == 2,
                    what="two running sequences",
                )
                hook.fail_next_decode = True
                await asyncio.to_thread(
                    _wait_for, lambda: not hook.fail_next_decode, what="the failed decode"
                )
                burst = await asyncio.gather(
                    *(
                        aclient.generate(p, max_new_tokens=short_new)
                        for p in [*BURST[:2], POISONED, *BURST[2:]]
                    ),
                    return_exceptions=True,
                )
                return list(await asyncio.gather(*running, return_exceptions=True)), burst

        running, burst = asyncio.run(scenario())
    finally:
        hook.poison = None
        hook.fail_next_decode = False
    failed = burst.pop(2)
    assert isinstance(failed, InternalError), failed
    assert "injected forward fault (poisoned prompt)" in failed.message
    assert "fail again if retried" in failed.message
    for prompt, result in zip(RUNNING + BURST, running + burst, strict=True):
        assert not isinstance(result, BaseException), (prompt, result)
        assert result.text == alone[prompt], prompt
    # The decode step failed once with the running streams in it, and was retried; the
    # prefill failed with the poisoned prompt in it (in a burst, then again alone).
    assert hook.failures[0] == f"decode of {len(RUNNING)}", hook.failures
    assert hook.failures.count("prefill of 1") == 1, hook.failures
    assert _sample(_scrape(port), "optiserve_scheduler_step_failures_total") >= 3


def _sample(samples: dict[str, float], name: str, **labels: str) -> float:
    """The one sample of ``name`` whose labels include ``labels`` (0 when none)."""
    found = [
        value
        for key, value in samples.items()
        if key.split("{")[0] == name and all(f'{k}="{v}"' in key for k, v in labels.items())
    ]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else 0.0


LONG = pb.GenerateRequest(prompt="Tell me", sampling=pb.SamplingParams(max_new_tokens=400))


def test_a_cancelled_stream_stops_decoding_within_a_step(
    hooked: tuple[ServerThread, ForwardHook, int],
) -> None:
    """Cancel a stream mid-answer: the tokens its sequence gets after the cancel are at most
    the step in progress and the next; the in-flight gauges (RPCs, running sequences,
    queue) return to 0; the server answers the next request."""
    server, hook, port = hooked
    hook.delay_s = 0.03  # ~30 ms steps: a step is long next to a scrape and a cancel
    try:
        with grpc.insecure_channel(server.target) as channel:
            call = pb_grpc.OptiServeStub(channel).StreamGenerate(LONG, timeout=60)
            for received, _ in enumerate(call, start=1):
                if received == 10:
                    break
            in_flight = _scrape(port)
            at_cancel = _sample(in_flight, "optiserve_scheduler_tokens_generated_total")
            call.cancel()
            cancelled = time.monotonic()
            _wait_for(
                lambda: _sample(_scrape(port), "optiserve_scheduler_running") == 0,
                what="the sequence to leave the batch",
            )
            stopped_after = time.monotonic() - cancelled
        time.sleep(0.2)
        after = _scrape(port)
    finally:
        hook.delay_s = 0.0
    assert _sample(in_flight, "optiserve_rpc_in_flight", method="StreamGenerate") == 1
    assert _sample(in_flight, "optiserve_scheduler_running") == 1
    extra = _sample(after, "optiserve_scheduler_tokens_generated_total") - at_cancel
    assert extra <= 2, f"{extra} tokens generated after the cancel"
    assert stopped_after < 0.5
    assert _sample(after, "optiserve_rpc_in_flight", method="StreamGenerate") == 0
    assert _sample(after, "optiserve_scheduler_running") == 0
    assert _sample(after, "optiserve_scheduler_queue_depth") == 0
    assert (
        _sample(after, "optiserve_rpc_requests_total", method="StreamGenerate", status="CANCELLED")
        == 1
    )
    with Client(server.target, timeout=60) as client:
        assert client.generate("after the cancel", max_new_tokens=2).text
    print(f"cancel: {extra:.0f} tokens after the cancel, out of the batch in {stopped_after:.3f} s")
