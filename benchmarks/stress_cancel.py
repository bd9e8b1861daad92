"""500 concurrent StreamGenerate calls, 30% cancelled at random points, through the server.

Checks that nothing deadlocks, that only the cancellations end streams early (every other
stream completes, no other error), and that the process's memory returns to its baseline:
RSS is read after a warm-up round and again after the stress round (both after
``gc.collect()`` and ``malloc_trim``). Prints one JSON line last.

    python benchmarks/stress_cancel.py [--streams 500] [--cancel 0.3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from batching import OUT, SPEC
from optiserve.tools.tinymodels import build_tiny_model


def rss_bytes() -> int:
    """Resident set size of this process, after collecting garbage and trimming malloc."""
    gc.collect()
    with contextlib.suppress(OSError):  # not glibc: measure as is
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


async def storm(target: str, streams: int, cancel_share: float, seed: int) -> dict[str, int]:
    """Run ``streams`` concurrent streams; count completed, cancelled and other errors."""
    from optiserve_client import AsyncClient

    rng = random.Random(seed)
    counts = {"completed": 0, "cancelled": 0, "errors_other": 0}
    words = [
        "alpha",
        "beta",
        "gamma",
        "delta",
        "epsilon",
        "zeta",
        "eta",
        "theta",
        "iota",
        "kappa",
        "lambda",
        "mu",
    ]

    async def one(client: Any, i: int) -> None:
        prompt = " ".join(rng.choice(words) for _ in range(rng.randint(4, 40)))
        max_new = rng.randint(8, 32)
        cancel_after = rng.randint(0, max_new // 2) if rng.random() < cancel_share else -1
        stream = client.stream(prompt, max_new_tokens=max_new, temperature=0.0, cache_mode="bypass")
        try:
            # aclosing: leaving the loop closes the stream at once, which cancels the RPC
            # (not later from the garbage collector, possibly after the loop is gone).
            async with contextlib.aclosing(stream):
                chunks = 0
                async for chunk in stream:
                    if chunk.completion is not None:
                        counts["completed"] += 1
                        return
                    chunks += 1
                    if chunks > cancel_after >= 0:
                        break
            counts["cancelled"] += 1
        except Exception as exc:
            counts["errors_other"] += 1
            if counts["errors_other"] <= 5:
                print(f"stream {i}: {exc!r}", file=sys.stderr)

    async with AsyncClient(target, timeout=300) as client:
        await asyncio.wait_for(asyncio.gather(*(one(client, i) for i in range(streams))), 600)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--cancel", type=float, default=0.3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path = build_tiny_model(OUT / "models" / "bench-llama", SPEC)

    from optiserve.app import ServerThread
    from optiserve.config import Config, EngineConfig, LoggingConfig, ModelConfig, ServerConfig

    config = Config(
        server=ServerConfig(port=0, grace_period_s=5.0, max_concurrent_rpcs=2 * args.streams),
        logging=LoggingConfig(level="WARNING", format="text"),
        engine=EngineConfig(torch_threads=1, max_queue=2 * args.streams),
        models=(ModelConfig(name="bench", source=str(path), device="cpu"),),
    )
    server = ServerThread(config)
    server.start()
    try:
        asyncio.run(storm(server.target, 64, args.cancel, seed=1))  # warm-up round
        baseline = rss_bytes()
        started = time.perf_counter()
        counts = asyncio.run(storm(server.target, args.streams, args.cancel, seed=2))
        elapsed = time.perf_counter() - started
        time.sleep(0.5)
        after = rss_bytes()
    finally:
        server.stop()
    print(
        f"{args.streams} streams in {elapsed:.1f}s; rss {baseline / 2**20:.0f} MiB -> "
        f"{after / 2**20:.0f} MiB",
        file=sys.stderr,
    )
    print(
        json.dumps(
            {
                "completed": counts["completed"],
                "cancelled": counts["cancelled"],
                "errors_other": counts["errors_other"],
                "rss_growth_pct": round(100.0 * (after - baseline) / baseline, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
