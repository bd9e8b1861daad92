"""The usage ledger: round trip, exact totals, schema version, write errors, kill -9."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from optiserve.accounting.ledger import MIGRATIONS, Ledger, LedgerTotal, LedgerWriteError
from optiserve.domain.pricing import TokenCounts

from .helpers import ledger_row

WRITER = Path(__file__).with_name("ledger_writer.py")
DAY1 = datetime(2026, 12, 1, 23, 59, 59, 999_999, tzinfo=UTC)
DAY2 = datetime(2026, 12, 2, 0, 0, tzinfo=UTC)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    opened = Ledger(tmp_path / "data" / "ledger.sqlite3")
    yield opened
    opened.close()


def test_a_row_comes_back_as_it_was_written(ledger: Ledger) -> None:
    counts = TokenCounts(
        input_tokens=11, output_tokens=7, cache_read_tokens=5, cache_write_5m_tokens=3,
        cache_write_1h_tokens=2,
    )  # fmt: skip
    written = ledger_row(
        datetime(2026, 12, 2, 9, 30, 1, 123_456, tzinfo=UTC),
        "0.012345678912",
        request_id="req-1",
        counts=counts,
        status="UNAVAILABLE",
        estimated=True,
    )
    ledger.record(written)
    assert ledger.rows() == [written]
    assert ledger.path.parent.is_dir()  # the data directory was created
    (mode,) = sqlite3.connect(ledger.path).execute("PRAGMA journal_mode").fetchone()
    assert mode == "wal"


def test_totals_by_day_model_and_tenant_are_exact(ledger: Ledger) -> None:
    # 0.1 + 0.2 is not 0.3 in floats; in the ledger it is.
    ledger.record(ledger_row(DAY1, "0.1", tenant="acme", model="claude"))
    ledger.record(ledger_row(DAY2, "0.2", tenant="acme", model="gpt", status="CANCELLED"))
    ledger.record(ledger_row(DAY2, "0.000000000001", tenant="bob", model="gpt", estimated=True))
    ledger.record(ledger_row(DAY2, "0", tenant="bob", model="gpt", saved="0.2", layer="exact"))
    # Every row has 10 prompt and 5 completion tokens.
    assert ledger.totals("day") == [
        LedgerTotal("2026-12-01", 1, 0, 10, 5, 0, 0, Decimal("0.1"), Decimal(0), 0),
        LedgerTotal("2026-12-02", 3, 1, 30, 15, 0, 0, Decimal("0.200000000001"),
                    Decimal("0.2"), 1),
    ]  # fmt: skip
    assert [(t.key, t.cost_usd, t.requests) for t in ledger.totals("model")] == [
        ("claude", Decimal("0.1"), 1),
        ("gpt", Decimal("0.200000000001"), 3),
    ]
    assert [(t.key, t.cost_usd, t.errors) for t in ledger.totals("tenant")] == [
        ("acme", Decimal("0.3"), 1),
        ("bob", Decimal("0.000000000001"), 0),
    ]
    assert ledger.saved_by_layer() == {"exact": Decimal("0.2"), "semantic": Decimal(0)}
    assert ledger.spent(DAY2) == Decimal("0.200000000001")
    assert ledger.spent(DAY1) == Decimal("0.300000000001")
    assert ledger.spent(DAY2, tenant="acme") == Decimal("0.2")
    assert ledger.spent(DAY2 + timedelta(days=1)) == 0
    assert ledger.spent_by_tenant(DAY2) == {
        "acme": Decimal("0.2"),
        "bob": Decimal("0.000000000001"),
    }


def test_sums_stay_exact_past_64_bits_of_pico_dollars(ledger: Ledger) -> None:
    # 2**63 pico-dollars is about $9.2 million: three $4 million rows pass it.
    for i in range(3):
        ledger.record(ledger_row(DAY2, "4000000.000000000001", request_id=f"big{i}"))
    assert ledger.spent(DAY2) == Decimal("12000000.000000000003")
    assert ledger.totals("tenant")[0].cost_usd == Decimal("12000000.000000000003")


def test_reopening_keeps_rows_and_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    first = Ledger(path)
    first.record(ledger_row(DAY2, "1.5"))
    first.close()
    again = Ledger(path)
    assert again.spent(DAY1) == Decimal("1.5")
    again.close()
    with sqlite3.connect(path) as db:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        assert version == len(MIGRATIONS)
        db.execute(f"PRAGMA user_version = {version + 1}")
    with pytest.raises(LedgerWriteError, match="newer than this optiserve"):
        Ledger(path)


def test_naive_times_are_refused(ledger: Ledger) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        ledger.record(ledger_row(datetime(2026, 12, 2), "1"))


def test_an_unwritable_place_is_a_ledger_write_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with pytest.raises(LedgerWriteError, match=r"\[ledger\] path"):
        Ledger(blocker / "ledger.sqlite3")


def test_a_read_only_ledger_is_refused_with_ledger_write_error(tmp_path: Path) -> None:
    # Refused when opened (WAL mode needs to write); a disk that fills up later fails the
    # row instead (the full-disk test).
    path = tmp_path / "ro" / "ledger.sqlite3"
    Ledger(path).close()
    path.chmod(0o444)
    path.parent.chmod(0o555)
    try:
        if os.access(path, os.W_OK):
            pytest.skip("this user writes read-only files anyway (root); CI runs as a user")
        with pytest.raises(LedgerWriteError, match="readonly"):
            Ledger(path)
    finally:
        path.parent.chmod(0o755)


def _writer(mode: str, path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WRITER), mode, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_full_disk_refuses_the_row_and_the_ledger_carries_on(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    proc = _writer("full", path)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    refused, recorded = out.splitlines()
    assert refused.startswith("refused ")
    assert "not written" in refused
    assert recorded == "recorded"
    ledger = Ledger(path)
    failed = int(refused.split()[1])
    ids = [row.request_id for row in ledger.rows()]
    assert ids == [f"r{i}" for i in range(failed)] + ["r1000"]  # nothing half-written
    ledger.close()


def test_kill_9_right_after_record_loses_no_row(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    proc = _writer("crash", path)
    assert proc.stdout is not None
    printed = []
    for line in proc.stdout:
        printed.append(int(line))
        if len(printed) == 40:
            os.kill(proc.pid, signal.SIGKILL)  # right after row 39's record returned
            break
    printed += [int(line) for line in proc.stdout]  # any printed before the kill landed
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert (tmp_path / "ledger.sqlite3-wal").exists()  # not checkpointed: the WAL holds them
    ledger = Ledger(path)
    found = {row.request_id for row in ledger.rows()}
    assert {f"r{i}" for i in printed} <= found
    assert printed == list(range(len(printed)))
    ledger.close()
