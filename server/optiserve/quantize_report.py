"""How ``optiserve quantize`` shows a job: a one-line progress bar and the report as a table.

A variant slower than its source is marked in red (on a terminal) and with the word
SLOWER, so nobody mistakes a smaller model for a faster one.
"""

from __future__ import annotations

from optiserve_client.v1 import optiserve_pb2 as pb

_RED = "\033[31m"
_RESET = "\033[0m"
_BAR = 24


def format_progress(p: pb.Progress) -> str:
    """``[#####......] quantizing 3/8  41.2 s  message`` (fixed width, for ``\\r``)."""
    filled = round(p.fraction * _BAR)
    steps = f" {p.step}/{p.steps}" if p.steps else ""
    line = f"[{'#' * filled}{'.' * (_BAR - filled)}] {p.stage}{steps} {p.elapsed_s:6.1f} s"
    if p.message:
        line += f"  {p.message}"
    return line[:110].ljust(110)


def format_report(r: pb.QuantizeReport, *, color: bool) -> str:
    """The report as a two-column table (before / after), then its notes."""

    def mark(slower: bool, text: str) -> str:
        if not slower:
            return text
        return f"{_RED}{text} SLOWER{_RESET}" if color else f"{text} SLOWER"

    rows = [
        ("variant", r.variant_name, ""),
        ("method", f"{r.kernel}", f"{r.bits} bits"),
        ("path", r.path, "served" if r.serving else "not served"),
        ("", "source", "variant"),
        (
            "size on disk",
            _mb(r.size_bytes_before),
            f"{_mb(r.size_bytes_after)} ({r.size_ratio:.2f}x smaller)",
        ),
        ("load", f"{r.load_s_before:.2f} s", f"{r.load_s_after:.2f} s"),
        (
            "tokens/s batch 1",
            f"{r.tokens_per_s_before:.1f}",
            mark(r.tokens_per_s_after < r.tokens_per_s_before, f"{r.tokens_per_s_after:.1f}"),
        ),
        (
            "tokens/s batch 8",
            f"{r.tokens_per_s_b8_before:.1f}",
            mark(
                r.tokens_per_s_b8_after < r.tokens_per_s_b8_before,
                f"{r.tokens_per_s_b8_after:.1f}",
            ),
        ),
        (
            "time to first token",
            f"{r.time_to_first_token_ms_before:.1f} ms",
            f"{r.time_to_first_token_ms_after:.1f} ms",
        ),
        ("perplexity", f"{r.perplexity_before:.3f}", f"{r.perplexity_after:.3f}"),
        ("mean KL (nats)", "", f"{r.kl_divergence:.5f}"),
        ("greedy agreement", "", f"{r.token_agreement:.1%}"),
        ("evaluation tokens", str(r.evaluation_tokens), ""),
        *([("zero weights", "", f"{r.weight_sparsity:.1%}")] if r.weight_sparsity else []),
        *(
            [
                (
                    "embedding cosine",
                    f"{r.embedding_sentences} sentences",
                    f"mean {r.embedding_cosine_mean:.4f}, min {r.embedding_cosine_min:.4f}",
                )
            ]
            if r.embedding_sentences
            else []
        ),
        ("took", f"{r.duration_s:.1f} s", ""),
    ]
    width = max(len(name) for name, _, _ in rows)
    lines = [f"{name:<{width}}  {a:<24} {b}".rstrip() for name, a, b in rows]
    lines += [f"note: {n}" for n in r.notes]
    return "\n".join(lines)


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"
