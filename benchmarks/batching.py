"""Continuous batching through the gRPC server against three baselines, on CPU.

Workload (fixed seed): 64 requests, prompts of 16-256 tokens, max_new_tokens of 16-128, a
tiny Llama (random weights), greedy decoding. Measured in one run:

* the gRPC server (in process, ``optiserve.app.ServerThread``) driven by the async
  client over StreamGenerate at concurrency 1, 8 and 32;
* sequential one-at-a-time ``model.generate``;
* ``model.generate`` on static left-padded batches of 32;
* transformers' continuous batching (``init_continuous_batching``, paged cache) with
  per-request max_new_tokens and a tuned config (best of a few settings).

Throughput counts useful tokens only: each request's own generated tokens (up to its
max_new_tokens or end-of-sequence). TTFT is the server-measured time to first token.
The server batches through the local backend's ``optiserve.models.local.scheduler.Scheduler``
with the default ``EngineConfig`` (slot KV cache, chunked prefill). The JSON also names
the model, the scheduler settings and the host's 1-minute load average before and after
(the figures are only comparable on an otherwise idle machine). Prints one JSON line last.

The machine may be shared: every configuration (server c1/c8/c32 and the baselines) runs
once per round, ``--rounds`` rounds interleaved, and each figure is its best round, so a
burst of background load costs one round of one configuration rather than skewing a
ratio; every round's figures are in ``each_round``.

    python benchmarks/batching.py [--threads 1] [--requests 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from optiserve.tools.tinymodels import TinySpec, build_tiny_model

OUT = Path(__file__).resolve().parent / "out"
SPEC = TinySpec(arch="llama", hidden_size=128, layers=2, heads=4, context_length=512)
LEVELS = (1, 8, 32)


@dataclass(frozen=True)
class Job:
    """One request of the workload."""

    text: str
    ids: list[int]
    max_new: int


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def workload(tokenizer: Any, n: int, seed: int = 0) -> list[Job]:
    """Random-token prompts of 16-256 tokens (as text the server re-tokenizes)."""
    rng = random.Random(seed)
    jobs = []
    vocab = len(tokenizer)
    for _ in range(n):
        want = rng.randint(16, 256)
        ids = [rng.randrange(4, vocab) for _ in range(want)]
        text = tokenizer.decode(ids)
        ids = list(tokenizer(text)["input_ids"])[:256]
        text = tokenizer.decode(ids)
        ids = list(tokenizer(text)["input_ids"])
        jobs.append(Job(text, ids, rng.randint(16, 128)))
    return jobs


def useful(tokens: list[int], max_new: int, eos: set[int]) -> int:
    """Generated tokens a request asked for: up to max_new or the first EOS (excluded)."""
    count = 0
    for t in tokens[:max_new]:
        if t in eos:
            break
        count += 1
    return count


# ------------------------------------------------------------------ baselines


@torch.inference_mode()
def sequential_generate(model: Any, jobs: list[Job], eos: set[int]) -> tuple[int, float]:
    """One request at a time with ``generate``."""
    tokens = 0
    start = time.perf_counter()
    for job in jobs:
        out = model.generate(
            torch.tensor([job.ids]),
            max_new_tokens=job.max_new,
            do_sample=False,
            attention_mask=torch.ones(1, len(job.ids), dtype=torch.long),
        )
        tokens += useful(out[0, len(job.ids) :].tolist(), job.max_new, eos)
    return tokens, time.perf_counter() - start


@torch.inference_mode()
def static_generate(
    model: Any, tokenizer: Any, jobs: list[Job], eos: set[int], size: int = 32
) -> tuple[int, float]:
    """``generate`` on left-padded static batches of ``size``; a batch runs to its longest."""
    tokens = 0
    start = time.perf_counter()
    pad = tokenizer.pad_token_id
    for i in range(0, len(jobs), size):
        chunk = jobs[i : i + size]
        width = max(len(j.ids) for j in chunk)
        ids = torch.tensor([[pad] * (width - len(j.ids)) + j.ids for j in chunk])
        mask = torch.tensor([[0] * (width - len(j.ids)) + [1] * len(j.ids) for j in chunk])
        out = model.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=max(j.max_new for j in chunk),
            do_sample=False,
            pad_token_id=pad,
        )
        for row, job in enumerate(chunk):
            tokens += useful(out[row, width:].tolist(), job.max_new, eos)
    return tokens, time.perf_counter() - start


@torch.inference_mode()
def transformers_cb(
    model: Any, jobs: list[Job], eos: set[int], max_batch_tokens: int, max_requests: int
) -> tuple[int, float]:
    """transformers' continuous batching with per-request max_new_tokens."""
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    gen = GenerationConfig(max_new_tokens=128, do_sample=False, eos_token_id=sorted(eos))
    # Sized for this workload (every request resident at once): the default sizing reads
    # free memory and allocates a huge CPU cache. Start-up and one warm-up request are not timed.
    cb = ContinuousBatchingConfig(
        page_size=32,
        num_blocks=1024,
        max_batch_tokens=max_batch_tokens,
        max_requests_per_batch=max_requests,
    )
    manager = model.init_continuous_batching(generation_config=gen, continuous_batching_config=cb)
    manager.start()
    try:
        manager.add_request(jobs[0].ids, request_id="warmup", max_new_tokens=4)
        while (warm := manager.get_result(timeout=120)) is None or not warm.is_finished():
            if warm is None:
                raise RuntimeError("transformers continuous batching did not start")
        start = time.perf_counter()
        wanted = {}
        for i, job in enumerate(jobs):
            rid = manager.add_request(job.ids, request_id=f"r{i}", max_new_tokens=job.max_new)
            wanted[rid] = job
        tokens = 0
        done = 0
        while done < len(jobs):
            result = manager.get_result(timeout=60)
            if result is None:
                raise RuntimeError("transformers continuous batching stalled")
            if result.is_finished():
                if result.error:
                    raise RuntimeError(result.error)
                job = wanted[result.request_id]
                tokens += useful(list(result.generated_tokens), job.max_new, eos)
                done += 1
        elapsed = time.perf_counter() - start
    finally:
        manager.stop(block=True, timeout=30)
    return tokens, elapsed


# ------------------------------------------------------------------ the server


async def drive(target: str, jobs: list[Job], concurrency: int) -> tuple[int, float, list[float]]:
    """Send every job over StreamGenerate with ``concurrency`` in flight."""
    from optiserve_client import AsyncClient

    gate = asyncio.Semaphore(concurrency)
    ttfts: list[float] = []
    tokens = 0

    async def one(client: Any, job: Job) -> None:
        nonlocal tokens
        async with gate:
            async for chunk in client.stream(
                job.text, max_new_tokens=job.max_new, temperature=0.0, cache_mode="bypass"
            ):
                if chunk.completion is not None:
                    tokens += chunk.completion.usage.completion_tokens
                    ttfts.append(chunk.completion.timings.time_to_first_token_ms)

    async with AsyncClient(target, timeout=600) as client:
        start = time.perf_counter()
        await asyncio.gather(*(one(client, job) for job in jobs))
        elapsed = time.perf_counter() - start
    return tokens, elapsed, ttfts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of every configuration; best round counts"
    )
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path = build_tiny_model(OUT / "models" / "bench-llama", SPEC)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    eos = {int(tokenizer.eos_token_id)}
    jobs = workload(tokenizer, args.requests)
    log(
        f"{len(jobs)} requests, prompt tokens {sum(len(j.ids) for j in jobs)}, "
        f"max_new total {sum(j.max_new for j in jobs)}, threads {args.threads}"
    )

    from optiserve.app import ServerThread
    from optiserve.config import Config, EngineConfig, LoggingConfig, ModelConfig, ServerConfig

    config = Config(
        server=ServerConfig(port=0, grace_period_s=5.0),
        logging=LoggingConfig(level="WARNING", format="text"),
        engine=EngineConfig(torch_threads=args.threads, max_queue=256),
        models=(ModelConfig(name="bench", source=str(path), device="cpu", max_new_tokens_cap=512),),
    )
    server = ServerThread(config)
    sched = config.engine  # the same settings the server's schedulers run with
    server.start()
    runs: dict[str, list[tuple[int, float, list[float]]]] = {f"c{c}": [] for c in LEVELS}
    seq_rates: list[float] = []
    static_rates: list[float] = []
    cb_rates: list[float] = []
    try:
        asyncio.run(drive(server.target, jobs[:4], 4))  # warm up
        for rnd in range(1, args.rounds + 1):
            for c in LEVELS:
                run = asyncio.run(drive(server.target, jobs, c))
                runs[f"c{c}"].append(run)
                tokens, elapsed, ttfts = run
                log(
                    f"round {rnd} server c{c}: {tokens} tokens in {elapsed:.2f}s = "
                    f"{tokens / elapsed:.0f} tok/s, ttft p50 {statistics.median(ttfts):.1f} ms"
                )
            # The server idles (its worker waits on a condition) while the baselines run.
            seq_tokens, seq_s = sequential_generate(model, jobs, eos)
            seq_rates.append(seq_tokens / seq_s)
            log(f"round {rnd} sequential generate: {seq_tokens} tokens in {seq_s:.2f}s")
            static_tokens, static_s = static_generate(model, tokenizer, jobs, eos)
            static_rates.append(static_tokens / static_s)
            log(f"round {rnd} static batches of 32: {static_tokens} tokens in {static_s:.2f}s")
            for max_tokens, max_requests in ((512, 32), (1024, 32), (2048, 64)):
                try:
                    cb_tokens, cb_s = transformers_cb(model, jobs, eos, max_tokens, max_requests)
                except Exception as exc:  # a config the CPU path cannot run: try the next one
                    log(f"transformers CB ({max_tokens}, {max_requests}) failed: {exc!r}")
                    continue
                cb_rates.append(cb_tokens / cb_s)
                log(
                    f"round {rnd} transformers CB ({max_tokens}, {max_requests}): "
                    f"{cb_tokens} tokens in {cb_s:.2f}s"
                )
    finally:
        server.stop()

    def rates(key: str) -> list[float]:
        return [tokens / elapsed for tokens, elapsed, _ in runs[key]]

    def ttft_p50(key: str) -> float:  # the best round's median time to first token
        return min(statistics.median(ttfts) for _, _, ttfts in runs[key])

    best = {key: max(rates(key)) for key in runs}
    best_seq, best_static = max(seq_rates), max(static_rates)
    best_cb = max(cb_rates, default=0.0)
    ttft1, ttft32 = ttft_p50("c1"), ttft_p50("c32")
    print(
        json.dumps(
            {
                "tokens_per_s_c1": round(best["c1"], 1),
                "tokens_per_s_c8": round(best["c8"], 1),
                "tokens_per_s_c32": round(best["c32"], 1),
                "speedup_vs_sequential": round(best["c32"] / best_seq, 2),
                "speedup_vs_static": round(best["c32"] / best_static, 2),
                "speedup_vs_transformers_cb": round(best["c32"] / best_cb, 2) if best_cb else None,
                "ttft_p50_ms_c1": round(ttft1, 1),
                "ttft_p50_ms_c32": round(ttft32, 1),
                "ttft_ratio_c32_vs_c1": round(ttft32 / ttft1, 2),
                "threads": args.threads,
                "model": (
                    f"tiny {SPEC.arch} (random weights, fp32): hidden {SPEC.hidden_size}, "
                    f"{SPEC.layers} layers, {SPEC.heads} heads, vocab {len(tokenizer)}"
                ),
                "scheduler": {
                    "max_batch_size": sched.max_batch_size,
                    "max_batch_tokens": sched.max_batch_tokens,
                    "max_prefill_tokens": sched.max_prefill_tokens,
                    "max_wait_ms": sched.max_wait_ms,
                },
                "rounds": args.rounds,
                "statistic": "best of rounds (each round runs every configuration once)",
                "each_round": {
                    "tokens_per_s_c32": [round(r) for r in rates("c32")],
                    "sequential_tokens_per_s": [round(r) for r in seq_rates],
                    "static_tokens_per_s": [round(r) for r in static_rates],
                    "ttft_p50_ms_c1": [round(statistics.median(t), 1) for *_, t in runs["c1"]],
                    "ttft_p50_ms_c32": [round(statistics.median(t), 1) for *_, t in runs["c32"]],
                },
                "loadavg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            }
        )
    )


if __name__ == "__main__":
    main()
