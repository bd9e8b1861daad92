"""Soak: a fixed mixed load against a real server for N minutes, on loopback only.

    .venv/bin/python benchmarks/soak.py [--minutes 5] [--concurrency 8] [--seed 0]

The server is ``python -m optiserve serve --config <toml>`` in its own process: the shipped
demo model, the response cache on, the ledger on, ``auth.required = true`` with one key
(created with the same code as ``optiserve keys create``), a fresh data directory. This
process drives ``--concurrency`` workers (one asyncio loop, ``optiserve_client``), each
picking its next request from a fixed, seeded mix:

* 30% repeats of 8 fixed prompts (exact-cache hits after their first answer),
* 30% unique prompts (misses: the model generates 8 tokens),
* 20% streams of 16 tokens read to the end,
* 10% streams cancelled after their first chunk,
* 5% bad requests (max_new_tokens above the model's cap: INVALID_ARGUMENT),
* 5% calls without a key (UNAUTHENTICATED).

Keys of the JSON line printed last: ``requests``, ``errors_internal`` (INTERNAL or
UNKNOWN: the server failing), ``errors_by_status`` (every non-OK status, the expected
INVALID_ARGUMENT and UNAUTHENTICATED included), ``p99_ms_first_minute`` /
``p99_ms_last_minute`` (completed requests of the first and last minute; the cancelled
streams are not timed), ``rss_growth_pct`` and ``fd_growth`` (the server's resident memory
and open file descriptors at the end against after the first minute, read from /proc, so
warm-up allocations do not count). Targets: no internal errors, RSS growth <= 10%, no fd
growth, last-minute p99 within 1.5x the first minute's (stderr says which are met).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

#: (operation, weight) of the mix.
MIX = (
    ("hit", 30),
    ("miss", 30),
    ("stream", 20),
    ("cancel", 10),
    ("bad", 5),
    ("unauthenticated", 5),
)
HIT_PROMPTS = tuple(
    f"What does the module number {i} of the standard library do?" for i in range(8)
)
WORDS = [
    "socket",
    "thread",
    "queue",
    "parser",
    "buffer",
    "stream",
    "format",
    "module",
    "value",
    "return",
    "path",
    "time",
]


@dataclass(frozen=True)
class Result:
    """One request: when it started (seconds since the load began), what it got."""

    op: str
    started_s: float
    latency_ms: float
    status: str


def _p99(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = 0.99 * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _start_server(work: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    """The server process, its address and an API key."""
    from optiserve.auth_keys import create_key

    data = work / "data"
    data.mkdir()
    keys = work / "keys.json"
    _, key = create_key(keys, "soak")
    port = _free_port()
    config = work / "soak.toml"
    config.write_text(
        f'data_dir = "{data}"\n'
        "[server]\n"
        f'host = "127.0.0.1"\nport = {port}\n'
        '[logging]\nlevel = "WARNING"\n'
        "[auth]\nrequired = true\n"
        f'keys_file = "{keys}"\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "optiserve", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=open(work / "server.log", "wb"),  # noqa: SIM115 - lives as long as the server
    )
    return proc, f"127.0.0.1:{port}", key


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_serving(target: str, timeout_s: float = 120) -> None:
    from optiserve_client import AsyncClient

    deadline = time.monotonic() + timeout_s
    async with AsyncClient(target, timeout=2) as client:
        while time.monotonic() < deadline:
            try:
                if await client.health() == "SERVING":
                    return
            except Exception:
                pass
            await asyncio.sleep(0.5)
    raise RuntimeError(f"the server at {target} did not start")


async def _one(op: str, client: object, anonymous: object, rng: random.Random) -> str:
    from optiserve_client import AsyncClient, OptiserveClientError

    assert isinstance(client, AsyncClient) and isinstance(anonymous, AsyncClient)
    try:
        if op == "hit":
            await client.generate(rng.choice(HIT_PROMPTS), max_new_tokens=8)
        elif op == "miss":
            words = " ".join(rng.choice(WORDS) for _ in range(12))
            await client.generate(f"{words} {rng.random()}", max_new_tokens=8, cache_mode="bypass")
        elif op == "stream":
            async for _ in client.stream(f"Explain {rng.choice(WORDS)}", max_new_tokens=16):
                pass
        elif op == "cancel":
            stream = client.stream(f"Describe {rng.choice(WORDS)} at length", max_new_tokens=64)
            async for _ in stream:
                break
            await stream.aclose()  # type: ignore[attr-defined]
            return "CANCELLED"
        elif op == "bad":
            await client.generate("Hello", max_new_tokens=1_000_000)
        else:
            await anonymous.generate("Hello", max_new_tokens=4)
    except OptiserveClientError as exc:
        return exc.code
    return "OK"


async def _load(
    target: str, key: str, minutes: float, concurrency: int, seed: int, pid: int
) -> dict[str, object]:
    from optiserve_client import AsyncClient

    ops = [op for op, weight in MIX for _ in range(weight)]
    results: list[Result] = []
    start = time.monotonic()
    end = start + minutes * 60
    marks: dict[str, tuple[int, int]] = {}

    async def sample_after_first_minute() -> None:
        await asyncio.sleep(min(60.0, minutes * 60 / 2))
        marks["start"] = (_rss_bytes(pid), _fds(pid))

    async with (
        AsyncClient(target, api_key=key, timeout=60) as client,
        AsyncClient(target, timeout=60) as anonymous,
    ):

        async def worker(i: int) -> None:
            rng = random.Random(seed * 1000 + i)
            while time.monotonic() < end:
                op = rng.choice(ops)
                t0 = time.monotonic()
                status = await _one(op, client, anonymous, rng)
                results.append(Result(op, t0 - start, (time.monotonic() - t0) * 1000, status))

        sampler = asyncio.ensure_future(sample_after_first_minute())
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        await sampler
    marks["end"] = (_rss_bytes(pid), _fds(pid))
    total_s = time.monotonic() - start
    timed = [r for r in results if r.status == "OK"]
    first = [r.latency_ms for r in timed if r.started_s < 60]
    last = [r.latency_ms for r in timed if r.started_s >= total_s - 60]
    statuses = Counter(r.status for r in results if r.status not in ("OK", "CANCELLED"))
    (rss0, fd0), (rss1, fd1) = marks["start"], marks["end"]
    return {
        "requests": len(results),
        "errors_internal": statuses.get("INTERNAL", 0) + statuses.get("UNKNOWN", 0),
        "errors_by_status": dict(sorted(statuses.items())),
        "p99_ms_first_minute": round(_p99(first), 2),
        "p99_ms_last_minute": round(_p99(last), 2),
        "rss_growth_pct": round(100 * (rss1 - rss0) / rss0, 2) if rss0 else 0.0,
        "fd_growth": fd1 - fd0,
        "minutes": minutes,
        "concurrency": concurrency,
        "by_op": dict(sorted(Counter(r.op for r in results).items())),
        "cancelled": sum(1 for r in results if r.status == "CANCELLED"),
        "rss_bytes": [rss0, rss1],
        "fds": [fd0, fd1],
        "requests_per_s": round(len(results) / total_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="optiserve-soak-"))
    proc, target, key = _start_server(work)
    try:
        asyncio.run(_wait_serving(target))
        result = asyncio.run(
            _load(target, key, args.minutes, args.concurrency, args.seed, proc.pid)
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    result["server_exit_code"] = proc.returncode
    targets = {
        "errors_internal_eq_0": result["errors_internal"] == 0,
        "rss_growth_pct_le_10": float(result["rss_growth_pct"]) <= 10,  # type: ignore[arg-type]
        "fd_growth_eq_0": result["fd_growth"] == 0,
        "p99_last_within_1.5x_first": float(result["p99_ms_last_minute"])  # type: ignore[arg-type]
        <= 1.5 * float(result["p99_ms_first_minute"]),  # type: ignore[arg-type]
    }
    result["targets"] = targets
    for name, ok in targets.items():
        print(f"target {name}: {'met' if ok else 'MISSED'}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
