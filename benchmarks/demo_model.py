"""The embedded default as a new user meets it: server start, time to first token, tokens/s.

Starts the server in process on the default configuration (the demo model shipped with the
package, cache on) twice with the same data directory (default: a new empty one): the first
start is a new user's (one-time work such as the embedder's ONNX export included), the
second a later start. Then sends ``--requests`` sampled requests through the gRPC client
with the cache bypassed. Baseline in the same run: ``model.generate`` on the same demo model
outside the server, one request at a time with the same prompts and lengths. Prints one
JSON line last.

    python benchmarks/demo_model.py [--data-dir DIR] [--requests 15]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

PROMPTS = (
    "The socket module",
    "Return a new list of",
    "This module provides",
    "Create a new thread",
    "Raise an exception if",
)
MAX_NEW = 48


def main() -> None:
    """Measure and print the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", default=None, help="default: a new empty directory")
    parser.add_argument("--requests", type=int, default=15)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from optiserve.app import ServerThread
    from optiserve.config import load_config
    from optiserve.models.demo import demo_model_dir
    from optiserve_client import Client

    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="optiserve-demo-"))
    fresh = not any(data_dir.iterdir()) if data_dir.exists() else True
    config = load_config(None, env={})
    config = replace(config, data_dir=str(data_dir), server=replace(config.server, port=0))
    starts: list[float] = []
    for _ in range(2):
        started = time.perf_counter()
        server = ServerThread(config)
        server.start()
        starts.append(time.perf_counter() - started)
        if len(starts) == 1:
            server.stop()
    ttft: list[float] = []
    rates: list[float] = []
    try:
        with Client(server.target, timeout=120) as client:
            client.generate("warm up", max_new_tokens=4, cache_mode="bypass")
            for i in range(args.requests):
                r = client.generate(
                    PROMPTS[i % len(PROMPTS)],
                    max_new_tokens=MAX_NEW,
                    temperature=0.7,
                    seed=i,
                    cache_mode="bypass",
                )
                ttft.append(r.timings.time_to_first_token_ms)
                if r.usage.completion_tokens > 8:
                    rates.append(r.timings.decode_tokens_per_s)
    finally:
        server.stop()

    torch.set_num_threads(config.engine.torch_threads)
    path = demo_model_dir()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    base_ttft: list[float] = []
    base_rates: list[float] = []
    with torch.inference_mode():
        for i in range(args.requests):
            ids = tok(PROMPTS[i % len(PROMPTS)], return_tensors="pt")
            t0 = time.perf_counter()
            model.generate(**ids, max_new_tokens=1, do_sample=False)
            first_s = time.perf_counter() - t0
            base_ttft.append(first_s * 1000.0)
            t0 = time.perf_counter()
            out = model.generate(
                **ids,
                max_new_tokens=MAX_NEW,
                min_new_tokens=MAX_NEW,
                do_sample=True,
                temperature=0.7,
            )
            n = out.shape[1] - ids["input_ids"].shape[1]
            # Like the server's figure: tokens after the first over the time after the first.
            base_rates.append((n - 1) / (time.perf_counter() - t0 - first_s))
    print(
        json.dumps(
            {
                "first_start_s": round(starts[0], 2),
                "first_start_on_empty_data_dir": fresh,
                "later_start_s": round(starts[1], 2),
                "ttft_p50_ms": round(statistics.median(ttft), 2),
                "decode_tokens_per_s_p50": round(statistics.median(rates), 1),
                "baseline_generate_ttft_p50_ms": round(statistics.median(base_ttft), 2),
                "baseline_generate_tokens_per_s_p50": round(statistics.median(base_rates), 1),
                "torch_threads": config.engine.torch_threads,
                "requests": args.requests,
                "loadavg_1m": round(os.getloadavg()[0], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
