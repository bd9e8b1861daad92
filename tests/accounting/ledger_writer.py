"""A child process for the ledger's durability tests: ``python ledger_writer.py MODE PATH``.

- ``crash``: records rows ``r0, r1, ...`` forever, printing ``N`` once ``record`` returned
  for row N (the parent SIGKILLs it at some point).
- ``full``: records a row, then caps the size of any file this process writes
  (RLIMIT_FSIZE, a disk that is full for it alone), records until ``LedgerWriteError``
  (prints ``refused <i>``), lifts the cap and records one more row (prints ``recorded``).
"""

from __future__ import annotations

import resource
import signal
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from optiserve.accounting.ledger import Ledger, LedgerRow, LedgerWriteError
from optiserve.domain.pricing import TokenCounts


def row(i: int) -> LedgerRow:
    return LedgerRow(
        at=datetime.now(UTC),
        request_id=f"r{i}",
        tenant="acme",
        route="auto",
        model="claude",
        provider="anthropic",
        counts=TokenCounts(input_tokens=i, output_tokens=1),
        cost_usd=Decimal("0.000001") * i,
        cost_saved_usd=Decimal(0),
        cache_layer="",
        latency_ms=1.0,
        status="OK",
        usage_estimated=False,
    )


def crash(ledger: Ledger) -> None:
    i = 0
    while True:
        ledger.record(row(i))
        print(i, flush=True)
        i += 1


def full(ledger: Ledger, path: Path) -> None:
    ledger.record(row(0))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the cap fails with EFBIG
    biggest = max(p.stat().st_size for p in path.parent.iterdir())
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (biggest + 4096, hard))
    for i in range(1, 1000):
        try:
            ledger.record(row(i))
        except LedgerWriteError as exc:
            print(f"refused {i} {exc}", flush=True)
            break
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    ledger.record(row(1000))
    print("recorded", flush=True)
    ledger.close()


if __name__ == "__main__":
    mode, where = sys.argv[1], Path(sys.argv[2])
    opened = Ledger(where)
    crash(opened) if mode == "crash" else full(opened, where)
