"""Quantize benchmark: every method through the Quantize RPC on a model whose linear layers
dominate its size, each variant measured against the fp32 source in the same run.

    .venv/bin/python benchmarks/quantize.py          # ~10 min on 2 cores, + training once
    .venv/bin/python benchmarks/quantize.py --quick  # a small model, a smoke run

The model: Llama architecture, hidden 768, 8 layers, 12 heads, MLP 2304 (every linear
layer's sizes a multiple of 128, as GPTQ's int4 CPU kernel needs), vocabulary 8000 (a BPE
tokenizer trained on local text), tied embeddings; trained briefly on local text (the
standard library's docstrings) so its weights are not random. It is built once and cached
in ``~/.cache/optiserve-bench/<settings>`` (built in a scratch directory and renamed into
place, so an interrupted or concurrent build never leaves a half model there).

The code path is the user's: a real server (``ServerThread``) with the model as a
``[[models]]`` entry, and ``Client.quantize`` for each method. Every figure but one comes
from the report, which the server measures on the variant as reloaded from disk in a fresh
process against the fp32 source (same prompts, interleaved rounds).

``size_ratio_vs_ideal`` is ``size_ratio`` over the ratio of the ideal encoding: every
weight the method quantized at exactly its bit width, everything else fp32. Which weights
a method quantized, and at what width, is read from the variant it wrote (the safetensors
headers of its files, see :func:`stored_bits`), not assumed: each source weight's payload
(the tensor itself when cast or kept, ``.int8`` for the int8-per-row embedding, ``.qdata``
for torchao, ``.qweight`` for torch's int8 and GPTQ's packed int32) divided into the
source weight's element count gives its bits per weight. Scales, zero points and group
indices are the variant's overhead over the ideal.

Threads: training runs alone before anything is measured and uses both cores
(``TRAIN_THREADS``); the server runs at one torch thread (``[engine] torch_threads = 1``)
and the measuring child process pins itself to one thread, so what is timed never
competes with itself on this 2-core machine.

One JSON line last on stdout: ``{"methods": {NAME: {size_ratio, size_ratio_vs_ideal,
tps_ratio_b1, tps_ratio_b8, kl, ppl_delta_pct, seconds, ...}}, "targets": {...},
"model": {...}}``; progress and the targets met or missed on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Before torch is imported (here and in the measuring child, which inherits it).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# gptqmodel's per-layer progress bars: progress comes from the RPC's events instead.
os.environ.setdefault("TQDM_DISABLE", "1")

#: (name in the JSON, method, bits) in the order they run.
ALL_METHODS: tuple[tuple[str, str, int], ...] = (
    ("fp16", "fp16", 0),
    ("bf16", "bf16", 0),
    ("int8_dynamic", "int8_dynamic", 0),
    ("int8_weight_only", "int8_weight_only", 0),
    ("gptq4", "gptq", 4),
    ("gptq8", "gptq", 8),
)
#: torch threads while training (nothing else of this benchmark runs then).
TRAIN_THREADS = 2


@dataclass(frozen=True)
class ModelSpec:
    """The benchmark model's shape and training."""

    hidden: int = 768
    layers: int = 8
    heads: int = 12
    vocab: int = 8000
    context: int = 512
    train_steps: int = 300
    seq_len: int = 64
    batch_size: int = 4
    lr: float = 3e-3

    @property
    def key(self) -> str:
        """The cache directory's name (the settings that change the weights)."""
        return f"llama-h{self.hidden}-l{self.layers}-v{self.vocab}-s{self.train_steps}" + (
            ""
            if (self.seq_len, self.batch_size, self.lr) == (64, 4, 3e-3)
            else f"-q{self.seq_len}-b{self.batch_size}-lr{self.lr:g}"
        )


QUICK = ModelSpec(hidden=256, layers=2, heads=4, vocab=2048, train_steps=20)


def log(message: str) -> None:
    """A progress line on stderr."""
    print(message, file=sys.stderr, flush=True)


def build_model(spec: ModelSpec, cache: Path) -> Path:
    """The trained benchmark model's directory (built on first use, then reused)."""
    path = cache / spec.key
    if (path / ".complete").exists():
        return path
    import torch

    from optiserve.tools import tinymodels

    log(f"building and training {path} ({spec.train_steps} steps, {TRAIN_THREADS} threads)")
    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)
    cache.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{spec.key}-", dir=cache))
    try:
        corpus = tinymodels.local_corpus()
        tinymodels.build_tokenizer(corpus, spec.vocab, scratch)
        tiny = tinymodels.TinySpec(
            arch="llama",
            vocab_size=spec.vocab,
            hidden_size=spec.hidden,
            layers=spec.layers,
            heads=spec.heads,
            context_length=spec.context,
        )
        model = tinymodels.build_model(tiny, scratch)
        loss = tinymodels.train_briefly(
            model,
            scratch,
            corpus,
            spec.train_steps,
            seq_len=spec.seq_len,
            batch_size=spec.batch_size,
            lr=spec.lr,
        )
        model.save_pretrained(scratch)
        took = time.perf_counter() - started
        info = {"loss": round(loss, 4), "train_s": round(took, 1), "threads": TRAIN_THREADS}
        (scratch / ".complete").write_text(json.dumps(info) + "\n")
        if (path / ".complete").exists():  # another run finished it meanwhile
            shutil.rmtree(scratch)
        else:
            shutil.rmtree(path, ignore_errors=True)  # a half directory of an older build
            scratch.rename(path)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    finally:
        torch.set_num_threads(threads)
    log(f"trained {spec.train_steps} steps, loss {loss:.3f}, {took:.0f} s")
    return path


# -- what a variant stores -------------------------------------------------------------------

#: Bits per element of each safetensors dtype.
_DTYPE_BITS = {
    "F64": 64,
    "I64": 64,
    "U64": 64,
    "F32": 32,
    "I32": 32,
    "U32": 32,
    "F16": 16,
    "BF16": 16,
    "I16": 16,
    "U16": 16,
    "I8": 8,
    "U8": 8,
    "BOOL": 8,
    "F8_E4M3": 8,
    "F8_E5M2": 8,
}


@dataclass(frozen=True)
class Stored:
    """One tensor of a safetensors file, from its header."""

    dtype: str
    elements: int
    nbytes: int


def safetensors_table(directory: Path) -> dict[str, Stored]:
    """Every tensor of every ``*.safetensors`` file in ``directory``, by name (headers only:
    8 bytes of header length, then the JSON header)."""
    table: dict[str, Stored] = {}
    for path in sorted(directory.glob("*.safetensors")):
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header: dict[str, Any] = json.loads(f.read(length))
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            elements = 1
            for d in entry["shape"]:
                elements *= int(d)
            start, end = entry["data_offsets"]
            table[name] = Stored(str(entry["dtype"]), elements, int(end) - int(start))
    if not table:
        raise ValueError(f"{directory} holds no safetensors weights")
    return table


def payload_names(key: str) -> tuple[str, ...]:
    """Where a variant may hold source weight ``key``: quantized forms first, then the
    tensor itself (cast, or kept)."""
    layer = key.removesuffix(".weight")
    return (key + ".int8", key + ".qdata", layer + ".qweight", key)


def stored_bits(source: dict[str, Stored], variant: dict[str, Stored]) -> dict[str, int]:
    """The bits per weight the variant stores each floating-point source tensor at: its
    payload's bytes over the source tensor's elements (ValueError when none is found)."""
    bits: dict[str, int] = {}
    for key, tensor in source.items():
        if tensor.dtype not in ("F32", "F16", "BF16", "F64"):
            continue
        found = next((n for n in payload_names(key) if n in variant), None)
        if found is None:
            raise ValueError(
                f"the variant stores no tensor for source weight {key} "
                f"(looked for {', '.join(payload_names(key))})"
            )
        bits[key] = round(variant[found].nbytes * 8 / tensor.elements)
    return bits


@dataclass(frozen=True)
class Ideal:
    """The ideal encoding of one variant."""

    fp32_bytes: int
    ideal_bytes: float
    #: Source elements by the bits per weight the variant stores them at.
    elements_by_bits: dict[int, int]
    #: The variant's bytes beyond the payloads (scales, zero points, indices, headers).
    overhead_bytes: int

    @property
    def ratio(self) -> float:
        """fp32 bytes over the ideal encoding's bytes."""
        return self.fp32_bytes / self.ideal_bytes


def ideal_of(source_dir: Path, variant_dir: Path) -> Ideal:
    """The ideal encoding of the variant in ``variant_dir``: every source weight at the bits
    per weight the variant stores it at, as read from the files (:func:`stored_bits`)."""
    source = safetensors_table(source_dir)
    variant = safetensors_table(variant_dir)
    bits = stored_bits(source, variant)
    by_bits: dict[int, int] = {}
    for key, width in bits.items():
        by_bits[width] = by_bits.get(width, 0) + source[key].elements
    elements = sum(by_bits.values())
    ideal = sum(width * n / 8 for width, n in by_bits.items())
    payload_bytes = sum(width * source[key].elements // 8 for key, width in bits.items())
    variant_bytes = sum(p.stat().st_size for p in variant_dir.glob("*.safetensors"))
    return Ideal(4 * elements, ideal, dict(sorted(by_bits.items())), variant_bytes - payload_bytes)


# -- the run ---------------------------------------------------------------------------------


@contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send what libraries print to stdout (gptqmodel's banner at import) to stderr, at the
    file-descriptor level, so the JSON line is alone on stdout."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def run(
    model_dir: Path,
    methods: Iterable[tuple[str, str, int]],
    rounds: int,
    new_tokens: int,
) -> dict[str, Any]:
    """Quantize with every method through a real server; the JSON object."""
    from optiserve.app import ServerThread
    from optiserve.config import (
        CacheConfig,
        Config,
        EngineConfig,
        LoggingConfig,
        ModelConfig,
        ServerConfig,
    )
    from optiserve.models.local.quantize.config import QuantizeConfig
    from optiserve.models.local.quantize.methods import method_named
    from optiserve_client import Client, build_quantize_request

    work = Path(tempfile.mkdtemp(prefix="optiserve-qbench-"))
    variants = work / "variants"
    config = Config(
        server=ServerConfig(port=0),
        logging=LoggingConfig(level="WARNING", format="text"),
        engine=EngineConfig(torch_threads=1),
        cache=CacheConfig(enabled=False),
        models=(ModelConfig(name="bench", source=str(model_dir), device="cpu"),),
        quantize=QuantizeConfig(
            models_dir=str(variants), measure_rounds=rounds, measure_new_tokens=new_tokens
        ),
        data_dir=str(work / "data"),
    )
    # gptqmodel writes logs/ into the working directory: keep it in the scratch directory.
    cwd = Path.cwd()
    os.chdir(work)
    server = ServerThread(config)
    server.start()
    results: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    try:
        with Client(server.target, timeout=7200) as client:
            for name, method, bits in methods:
                why = method_named(method).unavailable()
                if why:
                    log(f"{name}: skipped, {why}")
                    skipped[name] = why
                    continue
                results[name] = quantize_one(client, build_quantize_request, name, method, bits)
                results[name].update(variant_figures(model_dir, variants / name, results[name]))
                shutil.rmtree(variants / name, ignore_errors=True)  # ~100 MB each
                log(f"{name}: {json.dumps(results[name])}")
    finally:
        server.stop()
        os.chdir(cwd)
        shutil.rmtree(work, ignore_errors=True)
    source = safetensors_table(model_dir)
    linear = sum(
        s.elements for k, s in source.items() if ".layers." in k and k.endswith("_proj.weight")
    )
    total = sum(s.elements for s in source.values())
    result: dict[str, Any] = {
        "methods": results,
        "model": {
            "dir": str(model_dir),
            "fp32_bytes": 4 * total,
            "params": total,
            "decoder_linear_share": round(linear / total, 4),
            "training": json.loads((model_dir / ".complete").read_text())
            if (model_dir / ".complete").is_file()
            else None,
        },
        "rounds": rounds,
        "new_tokens": new_tokens,
    }
    if skipped:
        result["skipped"] = skipped
    return result


def quantize_one(client: Any, build: Any, name: str, method: str, bits: int) -> dict[str, Any]:
    """One Quantize RPC: its progress on stderr, the report's figures."""
    request = build("bench", method, bits=bits, variant_name=name)
    report = None
    for event in client.quantize(request):
        if event.HasField("progress"):
            p = event.progress
            log(f"  {name}: {p.stage} {p.step}/{p.steps} {p.elapsed_s:.0f} s")
        else:
            report = event.report
    if report is None:
        raise RuntimeError(f"the Quantize call for {name} ended without a report")
    return {
        "size_ratio": round(report.size_ratio, 4),
        "tps_ratio_b1": round(report.tokens_per_s_after / report.tokens_per_s_before, 4),
        "tps_ratio_b8": round(report.tokens_per_s_b8_after / report.tokens_per_s_b8_before, 4),
        "kl": round(report.kl_divergence, 6),
        "ppl_delta_pct": round(report.perplexity_delta_pct, 3),
        "seconds": round(report.duration_s, 1),
        "bits": report.bits,
        "bytes_before": report.size_bytes_before,
        "bytes_after": report.size_bytes_after,
        "tokens_per_s_b1": [
            round(report.tokens_per_s_before, 2),
            round(report.tokens_per_s_after, 2),
        ],
        "tokens_per_s_b8": [
            round(report.tokens_per_s_b8_before, 2),
            round(report.tokens_per_s_b8_after, 2),
        ],
        "perplexity": [round(report.perplexity_before, 4), round(report.perplexity_after, 4)],
        "token_agreement": round(report.token_agreement, 4),
        "kernel": report.kernel,
        "notes": list(report.notes),
    }


def variant_figures(model_dir: Path, variant_dir: Path, figures: dict[str, Any]) -> dict[str, Any]:
    """``size_ratio_vs_ideal`` and what it rests on, read from the variant's files."""
    ideal = ideal_of(model_dir, variant_dir)
    return {
        "size_ratio_vs_ideal": round(figures["size_ratio"] / ideal.ratio, 4),
        "ideal_ratio": round(ideal.ratio, 4),
        "params_by_stored_bits": {str(b): n for b, n in ideal.elements_by_bits.items()},
        "overhead_bytes": ideal.overhead_bytes,
    }


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, each met or not (and by which method)."""
    m: dict[str, dict[str, Any]] = result["methods"]
    met: dict[str, Any] = {}
    met["every_size_ratio_vs_ideal_ge_0.9"] = bool(m) and all(
        v["size_ratio_vs_ideal"] >= 0.9 for v in m.values()
    )
    int8 = {k: v for k, v in m.items() if "int8" in k}
    if int8:
        # The best int8 method: one meeting both figures if any, else the lowest KL.
        both = [k for k, v in int8.items() if v["kl"] <= 0.05 and v["tps_ratio_b8"] >= 1.0]
        best = both[0] if both else min(int8, key=lambda k: int8[k]["kl"])
        met["best_int8"] = best
        met["best_int8_kl_le_0.05"] = int8[best]["kl"] <= 0.05
        met["best_int8_tps_ratio_b8_ge_1"] = int8[best]["tps_ratio_b8"] >= 1.0
    if int8 and "gptq4" in m:
        best_size = max(v["size_ratio"] for v in int8.values())
        met["gptq4_size_ratio_ge_1.7x_best_int8"] = m["gptq4"]["size_ratio"] >= 1.7 * best_size
        met["gptq4_kl_le_0.05"] = m["gptq4"]["kl"] <= 0.05
    return met


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--methods",
        default=",".join(n for n, _, _ in ALL_METHODS),
        help=f"comma-separated, of {', '.join(n for n, _, _ in ALL_METHODS)}",
    )
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per model and batch")
    parser.add_argument("--new-tokens", type=int, default=32, help="new tokens per timed run")
    parser.add_argument("--model-dir", default="", help="use this model instead of building one")
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "optiserve-bench"))
    parser.add_argument("--train-steps", type=int, default=ModelSpec.train_steps)
    parser.add_argument("--quick", action="store_true", help="a small model, a smoke run")
    parser.add_argument("--out-json", default="", help="also write the JSON here")
    args = parser.parse_args()
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    known = {n for n, _, _ in ALL_METHODS}
    if unknown := [n for n in names if n not in known]:
        parser.error(f"unknown methods {unknown}; choose from {sorted(known)}")
    methods = [m for m in ALL_METHODS if m[0] in names]
    started = time.perf_counter()
    spec = QUICK if args.quick else ModelSpec(train_steps=args.train_steps)
    model_dir = (
        Path(args.model_dir).resolve()
        if args.model_dir
        else build_model(spec, Path(args.cache_dir))
    )
    with stdout_to_stderr():
        result = run(model_dir, methods, args.rounds, args.new_tokens)
    result["targets"] = targets(result)
    result["seconds"] = round(time.perf_counter() - started, 1)
    for name, ok in result["targets"].items():
        if isinstance(ok, bool):
            log(f"target {name}: {'met' if ok else 'MISSED'}")
    line = json.dumps(result)
    if args.out_json:
        Path(args.out_json).write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
