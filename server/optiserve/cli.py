"""The ``optiserve`` command: run the server (``serve``) or call one (generate, stream, ...)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any


def _client_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default="127.0.0.1:50051", help="server host:port")
    parser.add_argument("--api-key", default=None, help="sent as x-api-key metadata")
    parser.add_argument("--timeout", type=float, default=None, help="deadline in seconds")


def _generation_args(parser: argparse.ArgumentParser) -> None:
    _client_args(parser)
    parser.add_argument("prompt", help="the prompt text")
    parser.add_argument("--model", default="", help="model or route name (default route)")
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument(
        "--min-new-tokens",
        type=int,
        default=None,
        help="tokens generated before an end-of-sequence token may end the answer",
    )
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--stop", action="append", default=[], help="stop sequence (repeat)")
    parser.add_argument(
        "--cache", default="default", choices=["default", "bypass", "refresh", "only_if_cached"]
    )
    parser.add_argument("--json", action="store_true", help="print the full result as JSON")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="optiserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server (default: the demo model on :50051)")
    serve.add_argument("--config", default=None, help="TOML configuration file")
    serve.add_argument("--host", default=None, help="override server.host")
    serve.add_argument("--port", type=int, default=None, help="override server.port")
    _generation_args(sub.add_parser("generate", help="one completion"))
    _generation_args(sub.add_parser("stream", help="print tokens as they arrive"))
    _client_args(sub.add_parser("models", help="list models"))
    _client_args(sub.add_parser("health", help="health status"))
    return parser


def _serve(args: argparse.Namespace) -> int:
    import os

    from optiserve.config import ConfigError, load_config
    from optiserve.logs import configure_logging

    overrides: dict[str, object] = {}
    if args.host:
        overrides["server.host"] = args.host
    if args.port is not None:
        overrides["server.port"] = args.port
    try:
        config = load_config(args.config, os.environ, overrides)
    except ConfigError as exc:
        print(f"optiserve: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.logging)
    from optiserve.app import OptiserveApp

    asyncio.run(OptiserveApp(config).serve_until_signal())
    return 0


def _generation_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "model": args.model,
        "max_new_tokens": args.max_new_tokens,
        "min_new_tokens": args.min_new_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "seed": args.seed,
        "stop": args.stop,
        "cache_mode": args.cache,
    }


def _call(args: argparse.Namespace) -> int:
    from optiserve_client import Client

    with Client(args.target, api_key=args.api_key, timeout=args.timeout) as client:
        if args.command == "generate":
            result = client.generate(args.prompt, **_generation_kwargs(args))
            print(json.dumps(asdict(result), indent=2) if args.json else result.text)
        elif args.command == "stream":
            for chunk in client.stream(args.prompt, **_generation_kwargs(args)):
                if not args.json:
                    print(chunk.text, end="", flush=True)
                elif chunk.completion is not None:
                    print(json.dumps(asdict(chunk.completion), indent=2))
            if not args.json:
                print()
        elif args.command == "models":
            for m in client.list_models():
                flags = " ".join(f for f, on in (("default", m.default), ("demo", m.demo)) if on)
                print(f"{m.name}\t{m.provider}\t{m.source}\t{m.context_length}\t{flags}")
        elif args.command == "health":
            print(client.health())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``optiserve`` command."""
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    from optiserve_client import OptiserveClientError

    try:
        return _call(args)
    except OptiserveClientError as exc:
        print(f"optiserve: {exc}", file=sys.stderr)
        return 1
