"""How ``optiserve bench`` shows a benchmark: a progress line, the report as a table, the
points compared side by side, and the same report as JSON and PNG plots.

Everything here reads the wire messages (``pb.BenchmarkReport``, ``pb.Progress``) only, so
the same code shows a server-side run and a client-side one. Points are numbered from 1
(``#``) in every view; ``BenchmarkRecommendation.point_index`` counts from 0.

A comparison puts two points side by side only when they differ in exactly one dimension
(the model, the cache, or the batch size) and are equal in every other part of the
workload, and gives each figure as a ratio to the first point of its group: ``×0.50`` is
half the first point's value.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from google.protobuf import json_format

from optiserve_client.v1 import optiserve_pb2 as pb

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_BAR = 20
_PROGRESS_WIDTH = 110
_MODEL_WIDTH = 24

# ---------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------


def format_progress(p: pb.Progress) -> str:
    """``[#####.....] point 2/8  12/32 req  14.1 req/s  903 tok/s  41.2 s  message``.

    Always ``_PROGRESS_WIDTH`` characters (padded or cut), for ``\\r`` redraws.
    """
    fraction = min(1.0, max(0.0, p.fraction))
    filled = round(fraction * _BAR)
    point = f"point {p.step}/{p.steps}" if p.steps else (p.stage or "starting")
    line = (
        f"[{'#' * filled}{'.' * (_BAR - filled)}] {point:<13}"
        f" {f'{p.done}/{p.total}':>11} req"
        f" {p.requests_per_s:8.1f} req/s {p.output_tokens_per_s:9.1f} tok/s"
        f" {p.elapsed_s:7.1f} s"
    )
    if p.message:
        line += f"  {p.message}"
    return line[:_PROGRESS_WIDTH].ljust(_PROGRESS_WIDTH)


# ---------------------------------------------------------------------------
# Table
# ---------------------------------------------------------------------------

# (header, right-aligned, cell of point i) per column; two blocks keep each narrow.
_Column = tuple[str, bool, Callable[[int, pb.BenchmarkPoint], str]]

_KEY_COLUMNS: list[_Column] = [
    ("#", True, lambda i, p: str(i + 1)),
    ("model", False, lambda i, p: _model(p.model)),
]

_WORKLOAD_BLOCK: list[_Column] = [
    *_KEY_COLUMNS,
    ("cache", False, lambda i, p: "on" if p.cache else "off"),
    ("batch", True, lambda i, p: str(p.batch_size) if p.batch_size else "-"),
    ("conc/rate", True, lambda i, p: _load(p)),
    ("in", True, lambda i, p: str(p.prompt_length)),
    ("out", True, lambda i, p: str(p.max_new_tokens)),
    ("reqs", True, lambda i, p: str(p.requests)),
    ("errs", True, lambda i, p: str(p.errors)),
    ("lat p50", True, lambda i, p: _ms(p.latency_p50_ms)),
    ("p90", True, lambda i, p: _ms(p.latency_p90_ms)),
    ("p95", True, lambda i, p: _ms(p.latency_p95_ms)),
    ("p99 ms", True, lambda i, p: _ms(p.latency_p99_ms)),
]

_SPEED_BLOCK: list[_Column] = [
    *_KEY_COLUMNS,
    ("ttft p50", True, lambda i, p: _ms(p.ttft_p50_ms)),
    ("ttft p99", True, lambda i, p: _ms(p.ttft_p99_ms)),
    ("tpot p50", True, lambda i, p: _ms(p.tpot_p50_ms)),
    ("itl p99", True, lambda i, p: _ms(p.itl_p99_ms)),
    ("req/s", True, lambda i, p: _rate(p.requests_per_s)),
    ("out tok/s", True, lambda i, p: _rate(p.tokens_per_s)),
    ("goodput", True, lambda i, p: _rate(p.goodput_rps)),
    ("cost $", True, lambda i, p: _usd(p.cost_usd)),
    ("hit %", True, lambda i, p: f"{p.cache_hit_rate * 100:.1f}"),
    ("saved $", True, lambda i, p: _usd(p.cost_saved_usd)),
]


def format_table(report: pb.BenchmarkReport) -> str:
    """One row per point, in two blocks (workload and latency; speed and cost), then each
    point's errors by status and warnings, then the recommendation when there is one.

    Latencies are in ms (ttft: time to first token, tpot: time per output token after the
    first, itl: inter-token latency), rates per second, goodput in requests/s that met
    every SLO, ``conc/rate`` the concurrency of a closed loop or the arrival rate of an open
    one (``2.5/s``).
    """
    points = list(report.points)
    plural = "s" if len(points) != 1 else ""
    lines = [f"{len(points)} point{plural} in {report.duration_s:.1f} s"]
    if points:
        lines += ["", *_block(_WORKLOAD_BLOCK, points), "", *_block(_SPEED_BLOCK, points)]
    notes: list[str] = []
    for i, p in enumerate(points):
        if p.errors_by_status:
            statuses = ", ".join(f"{name} {n}" for name, n in sorted(p.errors_by_status.items()))
            notes.append(f"#{i + 1} errors: {statuses}")
        notes += [f"#{i + 1} warning: {w}" for w in p.warnings]
    if notes:
        lines += ["", *notes]
    if report.HasField("recommendation"):
        lines += ["", _recommendation(report)]
    return "\n".join(lines)


def _block(columns: Sequence[_Column], points: Sequence[pb.BenchmarkPoint]) -> list[str]:
    cells = [[cell(i, p) for _, _, cell in columns] for i, p in enumerate(points)]
    widths = [
        max(len(header), *(len(row[c]) for row in cells))
        for c, (header, _, _) in enumerate(columns)
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if right else v.ljust(w)
            for v, w, (_, right, _) in zip(values, widths, columns, strict=True)
        )

    return [line([header for header, _, _ in columns]), *(line(row) for row in cells)]


def _recommendation(report: pb.BenchmarkReport) -> str:
    r = report.recommendation
    if not 0 <= r.point_index < len(report.points):
        return f"recommendation: none. {r.reason}".rstrip()
    p = report.points[r.point_index]
    return (
        f"recommendation: #{r.point_index + 1} {p.model} ({_describe(p, skip=0)}):"
        f" {_rate(p.tokens_per_s)} out tok/s, latency p99 {_ms(p.latency_p99_ms)} ms."
        f" {r.reason}"
    ).rstrip()


# ---------------------------------------------------------------------------
# Comparison
# ---------------------------------------------------------------------------

# The dimensions a comparison varies: name, how to read it from a point, how to say a value.
_DIMENSIONS: list[tuple[str, Callable[[pb.BenchmarkPoint], object], Callable[[object], str]]] = [
    ("model", lambda p: p.model, str),
    ("cache", lambda p: p.cache, lambda v: "cache on" if v else "cache off"),
    ("batch", lambda p: p.batch_size, lambda v: f"batch {v}" if v else "batch (configured)"),
]

# The figures compared: (name, value).
_RATIOS: list[tuple[str, Callable[[pb.BenchmarkPoint], float]]] = [
    ("latency p50", lambda p: p.latency_p50_ms),
    ("p99", lambda p: p.latency_p99_ms),
    ("TTFT p50", lambda p: p.ttft_p50_ms),
    ("tok/s", lambda p: p.tokens_per_s),
    ("req/s", lambda p: p.requests_per_s),
    ("cost", lambda p: p.cost_usd),
]


def _identity(p: pb.BenchmarkPoint) -> tuple[object, ...]:
    """Everything that defines a point's workload; the first three are ``_DIMENSIONS``."""
    return (
        p.model,
        p.cache,
        p.batch_size,
        p.prompt_length,
        p.max_new_tokens,
        p.concurrency,
        p.rate,
    )


def format_comparison(report: pb.BenchmarkReport) -> str:
    """Points that differ in exactly one dimension (model, cache, batch size), every other
    part of the workload equal, as ratios to the first point of each such group::

        cache on vs cache off (#3 vs #1; tiny, batch 8, conc 1, in 64, out 32):
          latency p50 ×0.12, p99 ×0.12, TTFT p50 ×0.12, tok/s ×8.00, req/s ×8.00, cost ×0.00

    A ratio is "n/a" when the first point's figure is 0. "" when no two points are
    comparable.
    """
    points = list(report.points)
    lines: list[str] = []
    for d, (_, value, name) in enumerate(_DIMENSIONS):
        groups: dict[tuple[object, ...], list[int]] = {}
        for i, p in enumerate(points):
            key = tuple(v for k, v in enumerate(_identity(p)) if k != d)
            groups.setdefault(key, []).append(i)
        for members in groups.values():
            base = points[members[0]]
            for i in members[1:]:
                other = points[i]
                if value(other) == value(base):
                    continue  # the same workload measured twice: not a comparison
                ratios = ", ".join(
                    f"{label} {_ratio(get(other), get(base))}" for label, get in _RATIOS
                )
                lines.append(
                    f"{name(value(other))} vs {name(value(base))}"
                    f" (#{i + 1} vs #{members[0] + 1}; {_describe(base, skip=d)}):"
                )
                lines.append(f"  {ratios}")
    if not lines:
        return ""
    return "\n".join(["compared (ratios to the first point of each pair):", *lines])


def _describe(p: pb.BenchmarkPoint, *, skip: int) -> str:
    """The point's workload in words, without dimension ``skip`` (the one being named)."""
    parts = [name(value(p)) for d, (_, value, name) in enumerate(_DIMENSIONS) if d != skip]
    load = f"rate {p.rate:g}/s" if p.rate else f"conc {p.concurrency}"
    parts += [load, f"in {p.prompt_length}", f"out {p.max_new_tokens}"]
    return ", ".join(parts)


def _ratio(value: float, base: float) -> str:
    if base == 0:
        return "n/a"
    r = value / base
    if r < 10:
        return f"×{r:.2f}"
    if r < 100:
        return f"×{r:.1f}"
    return f"×{r:.0f}"


# ---------------------------------------------------------------------------
# JSON
# ---------------------------------------------------------------------------


def report_to_json(report: pb.BenchmarkReport) -> dict[str, Any]:
    """The report as plain JSON values, with the proto's field names as keys and every
    field present (zeros included), 64-bit integers as numbers."""
    return json_format.MessageToDict(
        report,
        always_print_fields_with_no_presence=True,
        preserving_proto_field_name=True,
        unquote_int64_if_possible=True,
    )


def write_json(report: pb.BenchmarkReport, path: Path) -> None:
    """Write :func:`report_to_json` to ``path`` (its folder made if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report_to_json(report), indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------

_FIGSIZE = (6.0, 4.0)
_DPI = 100
_PERCENTILES: list[tuple[str, Literal["-", "--", ":"], Callable[[pb.BenchmarkPoint], float]]] = [
    ("p50", "-", lambda p: p.latency_p50_ms),
    ("p90", "--", lambda p: p.latency_p90_ms),
    ("p99", ":", lambda p: p.latency_p99_ms),
]


def write_plots(report: pb.BenchmarkReport, directory: Path) -> list[Path]:
    """Write three PNGs to ``directory`` (made if missing) and return their paths:

    - ``latency.png``: latency p50/p90/p99 (ms) against concurrency (or arrival rate for
      open-loop points, in a panel of their own), one colour per model/configuration, one
      line style per percentile;
    - ``throughput.png``: output tokens/s against concurrency (or rate), and against the
      batch size in another panel when the report has more than one;
    - ``ttft.png``: time to first token p50/p90/p99 (ms) per point, as grouped bars.

    All three are written whatever the report holds (one point, or none). Figures are
    drawn on their own Agg canvas (no pyplot, no global backend switch).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    directory.mkdir(parents=True, exist_ok=True)
    points = list(report.points)
    drawings: list[tuple[str, int, Callable[[Figure, list[Axes], list[pb.BenchmarkPoint]], None]]]
    drawings = [
        ("latency.png", _panels(points), _plot_latency),
        (
            "throughput.png",
            _panels(points) + (len({p.batch_size for p in points}) > 1),
            _plot_throughput,
        ),
        ("ttft.png", 1, _plot_ttft),
    ]
    written = []
    for name, panels, draw in drawings:
        fig = Figure(figsize=(_FIGSIZE[0] * panels**0.8, _FIGSIZE[1]), dpi=_DPI)
        FigureCanvasAgg(fig)
        axes = list(fig.subplots(1, panels, squeeze=False)[0])
        if points:
            draw(fig, axes, points)
        else:
            for ax in axes:
                ax.text(0.5, 0.5, "no points measured", ha="center", va="center")
                ax.set_axis_off()
            fig.suptitle(name.removesuffix(".png"))
        fig.tight_layout()
        path = directory / name
        fig.savefig(path, dpi=_DPI)
        written.append(path)
    return written


def _panels(points: Sequence[pb.BenchmarkPoint]) -> int:
    """One panel for closed-loop points, one for open-loop points (their x differs)."""
    return max(1, len({p.rate > 0 for p in points}))


def _loops(points: Sequence[pb.BenchmarkPoint]) -> list[tuple[bool, list[pb.BenchmarkPoint]]]:
    """(open loop?, its points) for closed then open loop, those present."""
    return [
        (open_loop, [p for p in points if (p.rate > 0) == open_loop])
        for open_loop in (False, True)
        if any((p.rate > 0) == open_loop for p in points)
    ]


def _series(
    points: Iterable[pb.BenchmarkPoint], *, without: str
) -> dict[str, list[pb.BenchmarkPoint]]:
    """Points grouped into lines by configuration (every setting but the x axis
    ``without``), each named by the settings that vary among them. Open-loop points keep
    their concurrency (the cap on requests in flight) as part of the configuration."""
    fields: list[tuple[str, Callable[[pb.BenchmarkPoint], str]]] = [
        ("model", lambda p: p.model),
        ("cache", lambda p: "cache on" if p.cache else "cache off"),
        ("batch", lambda p: f"batch {p.batch_size}" if p.batch_size else "batch -"),
        ("in", lambda p: f"in {p.prompt_length}"),
        ("out", lambda p: f"out {p.max_new_tokens}"),
        ("conc", lambda p: f"conc {p.concurrency}"),
    ]
    fields = [(key, get) for key, get in fields if key != without]
    pts = list(points)
    varying = [(key, get) for key, get in fields if len({get(p) for p in pts}) > 1]
    shown = varying or fields[:1]
    groups: dict[str, list[pb.BenchmarkPoint]] = {}
    for p in pts:
        groups.setdefault(", ".join(get(p) for _, get in shown), []).append(p)
    return groups


def _x(p: pb.BenchmarkPoint) -> float:
    return p.rate if p.rate > 0 else float(p.concurrency)


def _x_axis(ax: Axes, xs: Iterable[float], label: str) -> None:
    values = sorted(set(xs))
    if values and values[0] > 0 and values[-1] / values[0] >= 8:
        ax.set_xscale("log", base=2)
    ax.set_xticks(values, [f"{v:g}" for v in values])
    ax.minorticks_off()
    ax.set_xlabel(label)
    if len(values) == 1:  # one point: centre it rather than let matplotlib pick a range
        v = values[0]
        low, high = (v * 0.5, v * 1.5) if v > 0 else (v - 1, v + 1)
        ax.set_xlim(low, high)


def _load_label(open_loop: bool) -> str:
    return "arrival rate (requests/s)" if open_loop else "concurrency (requests in flight)"


def _plot_latency(fig: Figure, axes: list[Axes], points: list[pb.BenchmarkPoint]) -> None:
    from matplotlib.lines import Line2D

    for ax, (open_loop, pts) in zip(axes, _loops(points), strict=False):
        handles = []
        series = _series(pts, without="" if open_loop else "conc")
        for n, (label, group) in enumerate(series.items()):
            group.sort(key=_x)
            color = f"C{n % 10}"
            for _, style, get in _PERCENTILES:
                ax.plot(
                    [_x(p) for p in group],
                    [get(p) for p in group],
                    linestyle=style,
                    marker="o",
                    color=color,
                )
            handles.append(Line2D([], [], color=color, marker="o", label=label))
        handles += [
            Line2D([], [], color="grey", linestyle=style, label=pct)
            for pct, style, _ in _PERCENTILES
        ]
        _x_axis(ax, (_x(p) for p in pts), _load_label(open_loop))
        ax.set_ylabel("latency (ms)")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(handles=handles, fontsize="small")
        ax.set_title(f"vs {'arrival rate' if open_loop else 'concurrency'}", fontsize="medium")
    fig.suptitle("Request latency percentiles")


def _plot_throughput(fig: Figure, axes: list[Axes], points: list[pb.BenchmarkPoint]) -> None:
    loops = _loops(points)
    for ax, (open_loop, pts) in zip(axes, loops, strict=False):
        for label, group in _series(pts, without="" if open_loop else "conc").items():
            group.sort(key=_x)
            ax.plot(
                [_x(p) for p in group], [p.tokens_per_s for p in group], marker="o", label=label
            )
        _x_axis(ax, (_x(p) for p in pts), _load_label(open_loop))
        ax.set_title(f"vs {'arrival rate' if open_loop else 'concurrency'}", fontsize="medium")
    if len(axes) > len(loops):
        ax = axes[len(loops)]
        batched = [p for p in points if p.batch_size > 0]
        for label, group in _series(batched, without="batch").items():
            group.sort(key=lambda p: p.batch_size)
            ax.plot(
                [p.batch_size for p in group],
                [p.tokens_per_s for p in group],
                marker="s",
                label=label,
            )
        _x_axis(ax, (float(p.batch_size) for p in batched), "max batch size (requests)")
        ax.set_title("vs batch size", fontsize="medium")
    for ax in axes:
        ax.set_ylabel("output tokens/s")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    fig.suptitle("Output token throughput")


def _plot_ttft(fig: Figure, axes: list[Axes], points: list[pb.BenchmarkPoint]) -> None:
    ax = axes[0]
    bars: list[tuple[str, Callable[[pb.BenchmarkPoint], float]]] = [
        ("p50", lambda p: p.ttft_p50_ms),
        ("p90", lambda p: p.ttft_p90_ms),
        ("p99", lambda p: p.ttft_p99_ms),
    ]
    width = 0.8 / len(bars)
    xs = range(len(points))
    for k, (label, get) in enumerate(bars):
        ax.bar(
            [x + (k - (len(bars) - 1) / 2) * width for x in xs],
            [get(p) for p in points],
            width=width,
            label=label,
        )
    many = len(points) > 12
    ax.set_xticks(
        list(xs),
        [f"#{i + 1}" for i in xs],
        rotation=90 if many else 0,
        fontsize="x-small" if many else "medium",
    )
    ax.set_xlabel("point (# as in the table)")
    ax.set_ylabel("time to first token (ms)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    fig.suptitle("Time to first token by point")


# ---------------------------------------------------------------------------
# Cells
# ---------------------------------------------------------------------------


def _model(name: str) -> str:
    return name if len(name) <= _MODEL_WIDTH else name[: _MODEL_WIDTH - 1] + "…"


def _load(p: pb.BenchmarkPoint) -> str:
    return f"{p.rate:g}/s" if p.rate > 0 else str(p.concurrency)


def _ms(x: float) -> str:
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def _rate(x: float) -> str:
    return f"{x:.0f}" if x >= 1000 else f"{x:.1f}"


def _usd(x: float) -> str:
    if x == 0:
        return "0"
    if x < 0.001:
        return f"{x:.1e}"
    if x < 10:
        return f"{x:.4f}"
    return f"{x:.2f}"
