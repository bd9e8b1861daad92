"""Prometheus metrics on the configured port, in the text exposition format."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable

from optiserve.app import ServerThread
from optiserve.config import Config
from optiserve_client import Client
from server_process import free_port


def test_metrics_endpoint_counts_tokens(make_config: Callable[..., Config]) -> None:
    port = free_port()
    server = ServerThread(make_config(server={"metrics_port": port}, cache={"enabled": True}))
    server.start()
    try:
        with Client(server.target, timeout=60) as client:
            result = client.generate("Count my tokens", max_new_tokens=7)
            server.wait_for_cache_writes()
            client.generate("Count my tokens", max_new_tokens=7)  # an exact hit
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
        assert response.headers["Content-Type"].startswith("text/plain")
        line = next(
            ln
            for ln in text.splitlines()
            if ln.startswith('optiserve_scheduler_tokens_generated_total{model="tiny"}')
        )
        assert float(line.split()[-1]) >= result.usage.completion_tokens
        for name in (
            "optiserve_scheduler_queue_depth",
            "optiserve_scheduler_batch_size_bucket",
            "optiserve_scheduler_time_to_first_token_seconds_bucket",
            "optiserve_scheduler_inter_token_latency_seconds_bucket",
        ):
            assert name in text
        hits = [ln for ln in text.splitlines() if ln.startswith("optiserve_cache_lookups_total")]
        assert any('layer="exact"' in ln and 'outcome="hit"' in ln for ln in hits), hits
    finally:
        server.stop()
