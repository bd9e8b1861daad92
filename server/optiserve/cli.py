"""The ``optiserve`` command: run the server (``serve``) or call one (generate, stream, ...)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from optiserve_client import Completion


def _client_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default="127.0.0.1:50051", help="server host:port")
    parser.add_argument("--api-key", default=None, help="the API key (sent as x-api-key metadata)")
    parser.add_argument("--timeout", type=float, default=None, help="deadline in seconds")
    tls = parser.add_argument_group("TLS (any of the files or --server-name implies --tls)")
    tls.add_argument("--tls", action="store_true", help="connect over TLS")
    tls.add_argument(
        "--ca-file", default=None, help="PEM CA the server's certificate must chain to"
    )
    tls.add_argument("--cert-file", default=None, help="PEM client certificate (mutual TLS)")
    tls.add_argument("--key-file", default=None, help="PEM private key of --cert-file")
    tls.add_argument(
        "--server-name", default=None, help="name in the server's certificate, if not the host"
    )


def client_options(args: argparse.Namespace) -> dict[str, Any]:
    """The Client/AsyncClient keyword arguments of the common client options."""
    return {
        "api_key": args.api_key,
        "timeout": args.timeout,
        "tls": args.tls,
        "ca_file": args.ca_file,
        "cert_file": args.cert_file,
        "key_file": args.key_file,
        "server_name": args.server_name,
    }


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
    parser.add_argument(
        "--max-cost", type=float, default=None, help="most the request may cost, in US dollars"
    )
    parser.add_argument(
        "--min-quality", type=float, default=None, help="lowest model quality a route may pick"
    )
    parser.add_argument("--compress", default="off", choices=["off", "lossless", "lossy"])
    parser.add_argument(
        "--json-schema", default="", help="a JSON Schema the answer must follow (JSON text)"
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
    _keys_args(sub.add_parser("keys", help="create, list or revoke API keys (the keys file)"))
    _generation_args(sub.add_parser("generate", help="one completion"))
    _generation_args(sub.add_parser("stream", help="print tokens as they arrive"))
    _client_args(sub.add_parser("models", help="list models"))
    _client_args(sub.add_parser("health", help="health status"))
    usage = sub.add_parser("usage", help="usage since start, the ledger's totals and budgets")
    _client_args(usage)
    usage.add_argument("--model", default="", help="only this model")
    _quantize_args(sub.add_parser("quantize", help="build, measure and serve a variant"))
    bench = sub.add_parser(
        "bench", help="measure latency, throughput, tokens, cost and cache savings"
    )
    _client_args(bench)
    from optiserve.bench_cli import add_bench_args

    add_bench_args(bench)
    return parser


def _keys_args(parser: argparse.ArgumentParser) -> None:
    from optiserve.auth_keys import SCOPES

    keys = parser.add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="a new key for a tenant (printed once)")
    create.add_argument("--tenant", required=True, help="the tenant the key's calls count to")
    create.add_argument(
        "--scope", action="append", default=[], choices=SCOPES, help="a scope (repeat)"
    )
    create.add_argument("--name", default="", help="a note to recognise the key by")
    for flag, kind, what in (
        ("--requests-per-s", float, "calls per second"),
        ("--burst", int, "calls at once above the rate"),
        ("--tokens-per-min", int, "prompt + completion tokens per minute"),
        ("--max-streams", int, "streaming calls in progress at once"),
    ):
        create.add_argument(
            flag,
            type=kind,
            default=None,
            help=f"the key's own limit: {what} (0 = none; "
            "default: [key_limits] of the configuration)",
        )
    listing = keys.add_parser("list", help="every key (never the keys themselves)")
    listing.add_argument("--json", action="store_true", help="print JSON")
    revoke = keys.add_parser("revoke", help="revoke a key by its id (see `keys list`)")
    revoke.add_argument("id", help="the key's id")
    for sub in (create, listing, revoke):
        sub.add_argument("--config", default=None, help="TOML configuration file (as for serve)")


def _keys(args: argparse.Namespace) -> int:
    """``optiserve keys``: edit the keys file named by the configuration."""
    import os

    from optiserve.auth_keys import KeysFileError, create_key, default_keys_path, revoke_key
    from optiserve.auth_keys import read_keys_file as read
    from optiserve.config import ConfigError, load_config

    try:
        config = load_config(args.config, os.environ)
    except ConfigError as exc:
        print(f"optiserve: configuration error: {exc}", file=sys.stderr)
        return 2
    path = default_keys_path(config.auth, config.resolved_data_dir())
    try:
        if args.keys_command == "create":
            try:
                limits = {
                    name: value
                    for name in ("requests_per_s", "burst", "tokens_per_min", "max_streams")
                    if (value := getattr(args, name)) is not None
                }
                record, key = create_key(path, args.tenant, tuple(args.scope), args.name, limits)
            except ValueError as exc:
                print(f"optiserve: {exc}", file=sys.stderr)
                return 2
            scopes = ", ".join(record.scopes) or "none"
            own = _limits_text(record.limits)
            print(key)
            print(
                f"created key {record.id} for tenant {record.tenant} (scopes: {scopes}; "
                f"limits: {own}) in "
                f"{path}. The key is printed above once and is not stored; keep it now. "
                f"Clients send it as `authorization: Bearer <key>`.",
                file=sys.stderr,
            )
            if not config.auth.required:
                print(
                    "note: auth.required is false in this configuration, so the server also "
                    "serves calls without a key (and does not check scopes)",
                    file=sys.stderr,
                )
        elif args.keys_command == "list":
            records = read(path).keys
            if args.json:
                rows = [{k: v for k, v in r.to_json().items() if k != "hash"} for r in records]
                print(json.dumps(rows, indent=2))
            else:
                for r in records:
                    status = f"revoked {r.revoked_at}" if r.revoked else "active"
                    row = (
                        r.id,
                        r.tenant,
                        ",".join(r.scopes) or "-",
                        _limits_text(r.limits),
                        r.created_at,
                        status,
                        r.name,
                    )
                    print("\t".join(row).rstrip())
        else:
            try:
                record = revoke_key(path, args.id)
            except KeyError:
                print(
                    f"optiserve: no key with id {args.id!r} in {path}; `optiserve keys list` "
                    "shows the ids",
                    file=sys.stderr,
                )
                return 1
            print(f"revoked key {record.id} (tenant {record.tenant}) on {record.revoked_at}")
    except KeysFileError as exc:
        print(f"optiserve: {exc}", file=sys.stderr)
        return 1
    return 0


def _limits_text(limits: Mapping[str, float]) -> str:
    """A key's own limits as ``requests_per_s=5,tokens_per_min=1000`` ("defaults": none)."""
    return ",".join(f"{k}={v:g}" for k, v in limits.items()) or "defaults"


def _quantize_args(parser: argparse.ArgumentParser) -> None:
    from optiserve_client import QUANT_METHODS

    _client_args(parser)
    parser.add_argument("model", help="a local model's name (see `optiserve models`)")
    parser.add_argument("method", choices=sorted(QUANT_METHODS))
    parser.add_argument("--bits", type=int, default=0, help="gptq: 4 or 8 (0 = default)")
    parser.add_argument("--group-size", type=int, default=0, help="gptq group size")
    parser.add_argument("--sparsity", type=float, default=0.0, help="pruning: zero fraction")
    parser.add_argument("--name", default="", help="the variant's name (a directory name)")
    parser.add_argument("--serve", action="store_true", help="serve the variant when built")
    parser.add_argument(
        "--calibration-file", default="", help="gptq: calibration texts, one per line"
    )
    parser.add_argument("--eval-file", default="", help="text the fidelity figures are measured on")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


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
    from optiserve.auth_keys import KeysFileError, UnsafeListenAddress, check_listen_address

    try:
        check_listen_address(config.server.host, config.auth)
    except UnsafeListenAddress as exc:
        print(f"optiserve: refusing to start: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.logging)
    from optiserve.accounting.ledger import LedgerWriteError
    from optiserve.app import OptiserveApp

    try:
        asyncio.run(OptiserveApp(config).serve_until_signal())
    except (OSError, LedgerWriteError, KeysFileError) as exc:
        # A taken port, an unwritable data directory or ledger: say what, not a traceback.
        print(f"optiserve: cannot start: {exc}", file=sys.stderr)
        return 1
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
        "max_cost_usd": args.max_cost,
        "min_quality": args.min_quality,
        "compression": args.compress,
        "json_schema": args.json_schema,
    }


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _empty_answer_note(done: Completion, args: argparse.Namespace) -> str | None:
    """What to print on stderr when the answer has no visible text (None when it has).

    An empty answer is a successful call (the exit code stays 0): the note says why it is
    empty and what to try, so the command never ends silently with nothing printed.
    """
    if done.text.strip():
        return None
    what = "empty answer" if not done.text else "blank answer (whitespace only)"
    reason = done.finish_reason
    tokens = done.usage.cached_tokens if reason == "cached" else done.usage.completion_tokens
    if reason == "eos":
        hint = (
            "try a larger --min-new-tokens or another prompt"
            if args.min_new_tokens
            else "try --min-new-tokens 1 or another prompt"
        )
    elif reason == "stop_sequence":
        hint = "a stop string matched at once; try other --stop strings"
    elif reason == "length":
        hint = "try a larger --max-new-tokens"
    elif reason == "cached":
        hint = "the cache holds an empty answer; try --cache refresh"
    else:
        hint = "try another prompt"
    return (
        f"optiserve: {what} (finish reason: {reason} after {_plural(tokens, 'token')}, "
        f"prompt {_plural(done.usage.prompt_tokens, 'token')}); {hint}"
    )


def _call(args: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToJson

    from optiserve_client import Client

    with Client(args.target, **client_options(args)) as client:
        done: Completion | None = None
        if args.command == "generate":
            done = client.generate(args.prompt, **_generation_kwargs(args))
            print(json.dumps(asdict(done), indent=2) if args.json else done.text)
        elif args.command == "stream":
            for chunk in client.stream(args.prompt, **_generation_kwargs(args)):
                if not args.json:
                    print(chunk.text, end="", flush=True)
                elif chunk.completion is not None:
                    print(json.dumps(asdict(chunk.completion), indent=2))
                done = chunk.completion or done
            if not args.json:
                print()
        elif args.command == "models":
            for m in client.list_models():
                flags = " ".join(f for f, on in (("default", m.default), ("demo", m.demo)) if on)
                quant = m.quantization if m.quantization != "none" else ""
                row = (m.name, m.provider, m.source, m.context_length, quant, flags)
                print("\t".join(str(x) for x in row).rstrip())
        elif args.command == "health":
            print(client.health())
        elif args.command == "usage":
            report = client.usage(args.model)
            print(MessageToJson(report, indent=2, always_print_fields_with_no_presence=True))
        elif args.command == "quantize":
            return _quantize(client, args)
        if done is not None and not args.json:  # JSON already carries finish reason and usage
            note = _empty_answer_note(done, args)
            if note:
                print(note, file=sys.stderr)
    return 0


def _quantize(client: Any, args: argparse.Namespace) -> int:
    """Run a Quantize job: a progress bar on stderr, the report on stdout."""
    from google.protobuf.json_format import MessageToJson

    from optiserve.quantize_report import format_progress, format_report
    from optiserve_client import build_quantize_request

    def read(path: str) -> str:
        with open(path, encoding="utf-8") as f:
            return f.read()

    request = build_quantize_request(
        args.model,
        args.method,
        bits=args.bits,
        group_size=args.group_size,
        sparsity=args.sparsity,
        calibration_texts=[t for t in read(args.calibration_file).splitlines() if t.strip()]
        if args.calibration_file
        else (),
        variant_name=args.name,
        serve=args.serve,
        evaluation_text=read(args.eval_file) if args.eval_file else "",
    )
    tty = sys.stderr.isatty()
    report = None
    for event in client.quantize(request):
        if event.HasField("progress"):
            line = format_progress(event.progress)
            print(f"\r{line}" if tty else line.rstrip(), end="" if tty else "\n", file=sys.stderr)
        else:
            report = event.report
    if tty:
        print(file=sys.stderr)
    if report is None:
        print("optiserve: the server ended the job without a report", file=sys.stderr)
        return 1
    if args.json:
        print(MessageToJson(report, indent=2, always_print_fields_with_no_presence=True))
    else:
        print(format_report(report, color=sys.stdout.isatty()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``optiserve`` command."""
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "keys":
        return _keys(args)
    from optiserve_client import OptiserveClientError, TLSOptionError

    try:
        if args.command == "bench":
            from optiserve.bench_cli import run_bench

            return run_bench(args)
        return _call(args)
    except OptiserveClientError as exc:
        print(f"optiserve: {exc}", file=sys.stderr)
        return 1
    except TLSOptionError as exc:
        print(f"optiserve: {exc}", file=sys.stderr)
        return 2
