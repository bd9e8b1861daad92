"""How ``optiserve bench`` shows a report: table, comparisons, JSON and plots, from
hand-built ``BenchmarkReport`` messages (no server)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from optiserve.bench_report import (
    format_comparison,
    format_progress,
    format_table,
    report_to_json,
    write_json,
    write_plots,
)
from optiserve_client.v1 import optiserve_pb2 as pb

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _point(model: str, cache: bool, concurrency: int, **extra: object) -> pb.BenchmarkPoint:
    """A point whose figures follow from its configuration, so ratios are easy to check:
    the int8 model is 1.5x as fast, the cache 8x, concurrency 4 2x more throughput."""
    speed = (1.5 if model == "tiny-int8" else 1.0) * (8.0 if cache else 1.0)
    load = 2.0 if concurrency == 4 else 1.0
    latency = 100.0 * concurrency / speed
    fields: dict[str, object] = dict(
        model=model,
        cache=cache,
        concurrency=concurrency,
        batch_size=8,
        prompt_length=64,
        max_new_tokens=32,
        requests=32,
        latency_p50_ms=latency,
        latency_p90_ms=latency * 1.5,
        latency_p95_ms=latency * 1.8,
        latency_p99_ms=latency * 2.25,
        latency_mean_ms=latency * 1.1,
        ttft_p50_ms=latency / 4,
        ttft_p90_ms=latency / 3,
        ttft_p99_ms=latency / 2,
        tpot_p50_ms=3.0 / speed,
        itl_p99_ms=7.0 / speed,
        tokens_per_s=200.0 * speed * load,
        requests_per_s=6.25 * speed * load,
        goodput_rps=6.0 * speed * load,
        prompt_tokens=2048,
        completion_tokens=1024,
        cost_usd=0.0 if cache else 0.0125,
        cache_hits=28 if cache else 0,
        cache_hit_rate=0.875 if cache else 0.0,
        cost_saved_usd=0.011 if cache else 0.0,
        duration_s=5.0,
    )
    fields.update(extra)
    return pb.BenchmarkPoint(**fields)


MODELS = ("tiny", "tiny-int8")


@pytest.fixture
def report() -> pb.BenchmarkReport:
    """Two models x cache off/on x concurrency 1 and 4 (8 points, in that nesting)."""
    points = [
        _point(model, cache, concurrency)
        for model in MODELS
        for cache in (False, True)
        for concurrency in (1, 4)
    ]
    # Point #4 (tiny, cache on, concurrency 4) lost two requests.
    points[3].errors = 3
    points[3].errors_by_status["UNAVAILABLE"] = 2
    points[3].errors_by_status["DEADLINE_EXCEEDED"] = 1
    points[6].warnings.append("pinned output length not reached")
    r = pb.BenchmarkReport(points=points, duration_s=42.5)
    r.recommendation.point_index = 7
    r.recommendation.reason = "most throughput with p99 latency within 500 ms"
    return r


def _table_rows(table: str) -> list[list[str]]:
    """The rows of the table's blocks that start with a point number."""
    return [line.split() for line in table.splitlines() if re.match(r"\s*\d+  \S", line)]


# ---------------------------------------------------------------------------
# Table
# ---------------------------------------------------------------------------


def test_table_has_a_row_per_point_in_each_block(report: pb.BenchmarkReport) -> None:
    table = format_table(report)
    rows = _table_rows(table)
    assert len(rows) == 2 * len(report.points)  # two blocks
    assert [int(r[0]) for r in rows] == [*range(1, 9), *range(1, 9)]
    assert [r[1] for r in rows[:8]] == [p.model for p in report.points]
    assert table.startswith("8 points in 42.5 s")


def test_table_shows_percentiles_throughput_and_cost(report: pb.BenchmarkReport) -> None:
    table = format_table(report)
    first_block, second_block = _table_rows(table)[:8], _table_rows(table)[8:]
    for p, row, row2 in zip(report.points, first_block, second_block, strict=True):
        # cache, batch, conc, in, out, reqs, errs, p50, p90, p95, p99
        assert row[2] == ("on" if p.cache else "off")
        assert row[3:8] == ["8", str(p.concurrency), "64", "32", "32"]
        assert row[8] == str(p.errors)
        assert float(row[12]) == pytest.approx(p.latency_p99_ms, rel=0.01)
        assert float(row[9]) == pytest.approx(p.latency_p50_ms, rel=0.01)
        # ttft p50, ttft p99, tpot p50, itl p99, req/s, tok/s, goodput, cost, hit %, saved
        assert float(row2[3]) == pytest.approx(p.ttft_p99_ms, rel=0.01)
        assert float(row2[7]) == pytest.approx(p.tokens_per_s, rel=0.01)
        assert float(row2[9]) == pytest.approx(p.cost_usd, rel=0.01)
        assert float(row2[10]) == pytest.approx(p.cache_hit_rate * 100)
    headers = [line for line in table.splitlines() if line.startswith("#")]
    assert "p99 ms" in headers[0] and "ttft p99" in headers[1] and "itl p99" in headers[1]


def test_table_names_errors_by_status_warnings_and_the_recommendation(
    report: pb.BenchmarkReport,
) -> None:
    table = format_table(report)
    assert "#4 errors: DEADLINE_EXCEEDED 1, UNAVAILABLE 2" in table
    assert "#7 warning: pinned output length not reached" in table
    last = table.splitlines()[-1]
    assert last.startswith("recommendation: #8 tiny-int8 (cache on, batch 8, conc 4, in 64")
    assert last.endswith("most throughput with p99 latency within 500 ms")


def test_table_columns_stay_aligned_and_narrow(report: pb.BenchmarkReport) -> None:
    report.points[0].model = "a-rather-long-model-name-for-a-table-cell"
    report.points[1].latency_p99_ms = 123456.0
    table = format_table(report)
    blocks = table.split("\n\n")[1:3]
    for block in blocks:
        lines = block.splitlines()
        assert len(lines) == 9
        assert len({len(line) for line in lines}) == 1  # every row ends on the last column
    assert max(len(line) for line in table.splitlines() if not line.startswith("recomm")) <= 160
    assert "a-rather-long-model-nam…" in table


def test_table_without_a_recommendation_or_with_none_met(report: pb.BenchmarkReport) -> None:
    report.ClearField("recommendation")
    assert "recommendation" not in format_table(report)
    report.recommendation.point_index = -1
    report.recommendation.reason = "no point had p99 latency within 10 ms"
    assert format_table(report).splitlines()[-1] == (
        "recommendation: none. no point had p99 latency within 10 ms"
    )


def test_open_loop_points_show_their_rate() -> None:
    r = pb.BenchmarkReport(points=[_point("tiny", False, 16, rate=2.5)])
    assert _table_rows(format_table(r))[0][4] == "2.5/s"


def test_empty_report() -> None:
    assert format_table(pb.BenchmarkReport()) == "0 points in 0.0 s"
    assert format_comparison(pb.BenchmarkReport()) == ""


# ---------------------------------------------------------------------------
# Comparison
# ---------------------------------------------------------------------------


def test_comparison_ratios_against_the_first_point_of_each_pair(
    report: pb.BenchmarkReport,
) -> None:
    text = format_comparison(report)
    lines = text.splitlines()
    assert lines[0].startswith("compared")
    # 4 model pairs and 4 cache pairs; batch never varies. Each is a heading and a line.
    assert len(lines) == 1 + 2 * 8
    p = report.points
    # tiny, cache on vs off at concurrency 1: points #3 vs #1.
    head = "cache on vs cache off (#3 vs #1; tiny, batch 8, conc 1, in 64, out 32):"
    figures = lines[lines.index(head) + 1]
    latency = p[2].latency_p50_ms / p[0].latency_p50_ms
    tokens = p[2].tokens_per_s / p[0].tokens_per_s
    assert f"latency p50 ×{latency:.2f}" in figures  # ×0.12
    assert f"tok/s ×{tokens:.2f}" in figures  # ×8.00
    assert "cost ×0.00" in figures
    assert latency == pytest.approx(0.125) and tokens == pytest.approx(8.0)
    # tiny-int8 vs tiny, cache off, concurrency 4: points #6 vs #2.
    head = "tiny-int8 vs tiny (#6 vs #2; cache off, batch 8, conc 4, in 64, out 32):"
    figures = lines[lines.index(head) + 1]
    tokens = p[5].tokens_per_s / p[1].tokens_per_s
    p99 = p[5].latency_p99_ms / p[1].latency_p99_ms
    assert f"tok/s ×{tokens:.2f}" in figures  # ×1.50
    assert f"p99 ×{p99:.2f}" in figures  # ×0.67
    assert "cost ×1.00" in figures
    # With cache on both cost nothing: no ratio to give.
    head = "tiny-int8 vs tiny (#7 vs #3; cache on, batch 8, conc 1, in 64, out 32):"
    assert lines[lines.index(head) + 1].endswith("cost n/a")


def test_comparison_by_batch_size() -> None:
    r = pb.BenchmarkReport(
        points=[
            _point("tiny", False, 4, batch_size=1),
            _point("tiny", False, 4, batch_size=8, tokens_per_s=1660.0),
        ]
    )
    text = format_comparison(r)
    assert "batch 8 vs batch 1 (#2 vs #1; tiny, cache off, conc 4, in 64, out 32):" in text
    assert f"tok/s ×{1660.0 / r.points[0].tokens_per_s:.2f}" in text  # ×4.15


def test_nothing_comparable_is_empty() -> None:
    one = pb.BenchmarkReport(points=[_point("tiny", False, 1)])
    assert format_comparison(one) == ""
    # Two dimensions differ at once (model and cache), and concurrency differs too.
    two = pb.BenchmarkReport(points=[_point("tiny", False, 1), _point("tiny-int8", True, 1)])
    assert format_comparison(two) == ""
    only_load = pb.BenchmarkReport(points=[_point("tiny", False, 1), _point("tiny", False, 4)])
    assert format_comparison(only_load) == ""
    repeated = pb.BenchmarkReport(points=[_point("tiny", False, 1), _point("tiny", False, 1)])
    assert format_comparison(repeated) == ""


# ---------------------------------------------------------------------------
# JSON
# ---------------------------------------------------------------------------


def test_json_round_trips_with_stable_keys(report: pb.BenchmarkReport, tmp_path: Path) -> None:
    data = report_to_json(report)
    assert data["duration_s"] == 42.5
    assert data["recommendation"] == {
        "point_index": 7,
        "reason": "most throughput with p99 latency within 500 ms",
    }
    first = data["points"][0]
    # Proto field names, and zero values present.
    for key in ("latency_p99_ms", "ttft_p50_ms", "tokens_per_s", "errors", "rate", "cache"):
        assert key in first
    assert first["errors"] == 0 and first["cache"] is False
    assert first["prompt_tokens"] == 2048  # a number, not a string
    assert data["points"][3]["errors_by_status"] == {"UNAVAILABLE": 2, "DEADLINE_EXCEEDED": 1}

    path = tmp_path / "out" / "report.json"
    write_json(report, path)
    loaded = json.loads(path.read_text())
    assert loaded == data
    back = pb.BenchmarkReport()
    from google.protobuf import json_format

    json_format.ParseDict(loaded, back)
    assert back == report


# ---------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------


def _check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert 1_000 < len(data) < 500_000
    from matplotlib import image

    pixels = image.imread(path)
    assert pixels.shape[0] > 0 and pixels.shape[1] > 0


def test_plots_are_written_as_pngs(report: pb.BenchmarkReport, tmp_path: Path) -> None:
    paths = write_plots(report, tmp_path / "plots")
    assert [p.name for p in paths] == ["latency.png", "throughput.png", "ttft.png"]
    for path in paths:
        _check_png(path)


@pytest.mark.parametrize(
    "points",
    [
        [],
        [_point("tiny", False, 1)],
        # Closed and open loop, and batch sizes that vary: extra panels.
        [
            _point("tiny", False, 1, batch_size=1),
            _point("tiny", False, 1, batch_size=8),
            _point("tiny", False, 4, rate=2.0),
            _point("tiny", False, 4, rate=8.0),
        ],
    ],
    ids=["empty", "one-point", "mixed"],
)
def test_plots_handle_few_or_mixed_points(points: list[pb.BenchmarkPoint], tmp_path: Path) -> None:
    paths = write_plots(pb.BenchmarkReport(points=points), tmp_path)
    assert len(paths) == 3
    for path in paths:
        _check_png(path)


# ---------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------


def test_progress_line_is_fixed_width() -> None:
    lines = [
        format_progress(pb.Progress()),
        format_progress(
            pb.Progress(
                stage="point 2/8",
                fraction=0.5,
                step=2,
                steps=8,
                done=16,
                total=32,
                requests_per_s=14.125,
                output_tokens_per_s=903.0,
                elapsed_s=41.25,
            )
        ),
        format_progress(pb.Progress(step=12, steps=120, done=9999, total=10000, message="x" * 300)),
    ]
    assert len({len(line) for line in lines}) == 1
    line = lines[1]
    assert line.startswith("[" + "#" * 10 + "." * 10 + "] point 2/8")
    for part in ("16/32", "14.1 req/s", "903.0 tok/s", "41.2 s"):
        assert part in line
    assert "point 12/120" in lines[2]
