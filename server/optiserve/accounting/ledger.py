"""The usage ledger: one SQLite row per request, committed before the RPC returns.

Durability. The file is in WAL mode; :meth:`Ledger.record_many` returns only after its rows'
commit is in the write-ahead log. With ``synchronous="normal"`` (the default) that write is
in the operating system when the call returns, so a committed row survives the process
being killed (kill -9); the WAL is fsynced at checkpoints, so the last commits may be lost
if the machine itself loses power. ``synchronous="full"`` fsyncs every commit (survives
power loss too), at about 1 ms a commit on this machine's disk. Rows arriving together are
committed together (one transaction, one sync: see :mod:`optiserve.accounting.spend`).

Money is stored exactly, as integer **pico-dollars** (1e-12 USD). A price with at most six
decimals per million tokens (every provider's price list) costs a whole number of
pico-dollars per token, so a row's cost is exactly :meth:`Prices.cost`; a cost with more
decimals than that is rounded half-even to the pico-dollar. Sums are taken in SQL as a sum
of whole micro-dollars plus a sum of the pico-dollar remainders, both far from SQLite's
64-bit limit, and joined in Python: exact however large the ledger grows.

Threads. The service records from worker threads (``asyncio.to_thread`` or its own
executor), so the connections are opened with ``check_same_thread=False`` and each is used
under its own lock: one connection writes, another reads, and in WAL mode a long GetUsage
query never holds up a commit.

The schema's version is SQLite's ``user_version``; opening a ledger applies the migrations
it has not seen yet, and refuses a file written by a newer optiserve.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any, Literal

from optiserve.domain.pricing import ZERO, TokenCounts

#: How hard a commit is synced: "normal" (survives the process dying) or "full" (also the
#: machine losing power).
Synchronous = Literal["normal", "full"]

#: One ledger money unit in US dollars.
PICO = Decimal("1e-12")
_PICO_PER_MICRO = 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

#: Schema migrations: entry ``i`` takes the file from version ``i`` to ``i + 1``.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE requests (
        id INTEGER PRIMARY KEY,
        at_us INTEGER NOT NULL,              -- microseconds since 1970-01-01T00:00:00Z
        request_id TEXT NOT NULL,
        tenant TEXT NOT NULL,
        route TEXT NOT NULL,
        model TEXT NOT NULL,
        provider TEXT NOT NULL,
        input_tokens INTEGER NOT NULL,       -- prompt tokens that touched no cache
        output_tokens INTEGER NOT NULL,
        cache_read_tokens INTEGER NOT NULL,
        cache_write_5m_tokens INTEGER NOT NULL,
        cache_write_1h_tokens INTEGER NOT NULL,
        cost_pico INTEGER NOT NULL,          -- pico-dollars (1e-12 USD)
        saved_pico INTEGER NOT NULL,
        cache_layer TEXT NOT NULL,           -- '' | 'exact' | 'semantic'
        latency_ms REAL NOT NULL,
        status TEXT NOT NULL,                -- 'OK' or a gRPC status code name
        usage_estimated INTEGER NOT NULL     -- 1: usage not reported, cost is the worst case
    );
    CREATE INDEX requests_by_time ON requests (at_us);
    """,
)

_COLUMNS = (
    "at_us, request_id, tenant, route, model, provider, input_tokens, output_tokens, "
    "cache_read_tokens, cache_write_5m_tokens, cache_write_1h_tokens, cost_pico, saved_pico, "
    "cache_layer, latency_ms, status, usage_estimated"
)

#: The SQL expression each grouping of :meth:`Ledger.totals` groups by.
_GROUP_KEYS = {
    "day": "date(at_us / 1000000, 'unixepoch')",
    "model": "model",
    "tenant": "tenant",
}

#: ``SUM`` of a pico-dollar column, split so that neither part can overflow 64 bits.
_SPLIT_SUM = "SUM({col} / 1000000), SUM({col} % 1000000)"


class LedgerWriteError(Exception):
    """The ledger cannot be opened for writing or a row could not be committed (read-only
    file or directory, disk full, I/O error). The service logs and counts it and still
    answers the request: the answer is not lost for a missing ledger row."""


def utc_now() -> datetime:
    """The current time in UTC (the ledger's and the budgets' clock)."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class LedgerRow:
    """One request (one attempt on one model) as the ledger keeps it."""

    #: When the request was charged, timezone-aware (stored in UTC to the microsecond).
    at: datetime
    request_id: str
    tenant: str
    #: The route the request named; "" when it named a model.
    route: str
    model: str
    provider: str
    counts: TokenCounts
    cost_usd: Decimal
    #: What a cache hit saved (the cost of the answer it replayed).
    cost_saved_usd: Decimal
    #: "" (no cache hit), "exact" or "semantic".
    cache_layer: str
    latency_ms: float
    #: "OK" or the gRPC status code name the request ended with ("UNAVAILABLE", ...).
    status: str
    #: True when the provider reported no usage and the cost is the reserved worst case.
    usage_estimated: bool


@dataclass(frozen=True)
class LedgerTotal:
    """The sums over one group of rows (a UTC day, a model or a tenant)."""

    key: str
    requests: int
    #: Rows whose status is not "OK".
    errors: int
    prompt_tokens: int
    completion_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_usd: Decimal
    cost_saved_usd: Decimal
    #: Rows charged at the worst case because usage was not reported.
    estimated: int


def _to_pico(usd: Decimal) -> int:
    return int((usd / PICO).to_integral_value(rounding=ROUND_HALF_EVEN))


def _usd(micros: int | None, picos: int | None) -> Decimal:
    """Dollars from a split sum (see ``_SPLIT_SUM``); SQL's SUM of no rows is NULL."""
    total = (micros or 0) * _PICO_PER_MICRO + (picos or 0)
    return total * PICO if total else ZERO


def _to_us(at: datetime) -> int:
    if at.tzinfo is None:
        raise ValueError(f"ledger times must be timezone-aware, got {at!r}")
    return (at - _EPOCH) // _MICROSECOND


class Ledger:
    """The SQLite usage ledger at ``path`` (created with its directory when missing)."""

    def __init__(self, path: Path, *, synchronous: Synchronous = "normal") -> None:
        self.path = path
        self._synchronous = synchronous
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = self._connect()
            self._migrate()
            self._reader = self._connect()
        except (OSError, sqlite3.Error) as exc:
            raise LedgerWriteError(
                f"cannot open the usage ledger {str(path)!r} for writing ({exc}); point "
                "[ledger] path at a writable file or set [ledger] enabled = false"
            ) from exc
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute(f"PRAGMA synchronous = {self._synchronous.upper()}")
        db.execute("PRAGMA busy_timeout = 5000")
        return db

    def _migrate(self) -> None:
        (version,) = self._writer.execute("PRAGMA user_version").fetchone()
        if version > len(MIGRATIONS):
            raise sqlite3.DatabaseError(
                f"schema version {version} is newer than this optiserve's {len(MIGRATIONS)}"
            )
        for target, script in enumerate(MIGRATIONS[version:], start=version + 1):
            # executescript commits first, so the script and its version bump run as one
            # explicit transaction.
            self._writer.executescript(
                f"BEGIN IMMEDIATE; {script}; PRAGMA user_version = {target}; COMMIT;"
            )

    def record(self, row: LedgerRow) -> None:
        """Insert ``row`` and commit it (blocking: returns once the commit is durable).

        Raises LedgerWriteError when the row could not be committed.
        """
        self.record_many([row])

    def record_many(self, rows: Sequence[LedgerRow]) -> None:
        """Insert ``rows`` in one transaction (a group commit: one WAL sync for all) and
        commit; either every row is committed or none, and LedgerWriteError says so."""
        values = [_values(row) for row in rows]
        with self._write_lock:
            try:
                with self._writer:  # BEGIN ... COMMIT, or ROLLBACK on an error
                    self._writer.execute("BEGIN IMMEDIATE")
                    self._writer.executemany(
                        f"INSERT INTO requests ({_COLUMNS}) VALUES ({', '.join('?' * 17)})",
                        values,
                    )
            except sqlite3.Error as exc:
                ids = ", ".join(repr(r.request_id) for r in rows[:3])
                more = f" and {len(rows) - 3} more" if len(rows) > 3 else ""
                raise LedgerWriteError(
                    f"ledger {str(self.path)!r}: rows for requests {ids}{more} not written ({exc})"
                ) from exc

    def _query(self, sql: str, params: tuple[object, ...] = ()) -> list[Any]:
        with self._read_lock:
            return self._reader.execute(sql, params).fetchall()

    def totals(self, by: Literal["day", "model", "tenant"]) -> list[LedgerTotal]:
        """Sums per UTC day (``YYYY-MM-DD``), model or tenant, ordered by key."""
        key = _GROUP_KEYS[by]
        sql = f"""
            SELECT {key} AS k, COUNT(*), SUM(status != 'OK'),
                   SUM(input_tokens + cache_read_tokens + cache_write_5m_tokens
                       + cache_write_1h_tokens),
                   SUM(output_tokens), SUM(cache_read_tokens),
                   SUM(cache_write_5m_tokens + cache_write_1h_tokens),
                   {_SPLIT_SUM.format(col="cost_pico")}, {_SPLIT_SUM.format(col="saved_pico")},
                   SUM(usage_estimated)
            FROM requests GROUP BY k ORDER BY k
        """
        return [_total_of(values) for values in self._query(sql)]

    def saved_by_layer(self) -> dict[str, Decimal]:
        """What each cache layer ("exact", "semantic") saved, over the whole ledger."""
        saved = {"exact": ZERO, "semantic": ZERO}
        sql = (
            f"SELECT cache_layer, {_SPLIT_SUM.format(col='saved_pico')} FROM requests "
            "WHERE cache_layer != '' GROUP BY cache_layer"
        )
        for layer, micros, picos in self._query(sql):
            saved[str(layer)] = _usd(micros, picos)
        return saved

    def spent(self, since: datetime, tenant: str | None = None) -> Decimal:
        """What was charged from ``since`` on (all tenants, or ``tenant``'s)."""
        sql = f"SELECT {_SPLIT_SUM.format(col='cost_pico')} FROM requests WHERE at_us >= ?"
        params: tuple[object, ...] = (_to_us(since),)
        if tenant is not None:
            sql += " AND tenant = ?"
            params += (tenant,)
        ((micros, picos),) = self._query(sql, params)
        return _usd(micros, picos)

    def spent_by_tenant(self, since: datetime) -> dict[str, Decimal]:
        """What each tenant was charged from ``since`` on (tenants with rows only)."""
        sql = (
            f"SELECT tenant, {_SPLIT_SUM.format(col='cost_pico')} FROM requests "
            "WHERE at_us >= ? GROUP BY tenant"
        )
        return {
            str(tenant): _usd(micros, picos)
            for tenant, micros, picos in self._query(sql, (_to_us(since),))
        }

    def rows(self, since: datetime | None = None) -> list[LedgerRow]:
        """The rows from ``since`` on (all rows when None), in the order they were written."""
        start = _to_us(since) if since is not None else -(2**63)
        found = self._query(
            f"SELECT {_COLUMNS} FROM requests WHERE at_us >= ? ORDER BY id", (start,)
        )
        return [_row_of(values) for values in found]

    def close(self) -> None:
        """Close both connections (the WAL is checkpointed into the file)."""
        with self._read_lock:
            self._reader.close()
        with self._write_lock:
            self._writer.close()


def _total_of(values: tuple[Any, ...]) -> LedgerTotal:
    (key, requests, errors, prompt, completion, read, write, cost_micros, cost_picos,
     saved_micros, saved_picos, estimated) = values  # fmt: skip
    return LedgerTotal(
        key=str(key),
        requests=requests,
        errors=errors,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cache_read_tokens=read,
        cache_write_tokens=write,
        cost_usd=_usd(cost_micros, cost_picos),
        cost_saved_usd=_usd(saved_micros, saved_picos),
        estimated=estimated,
    )


def _values(row: LedgerRow) -> tuple[object, ...]:
    """The column values of ``row``, in ``_COLUMNS`` order."""
    c = row.counts
    return (
        _to_us(row.at),
        row.request_id,
        row.tenant,
        row.route,
        row.model,
        row.provider,
        c.input_tokens,
        c.output_tokens,
        c.cache_read_tokens,
        c.cache_write_5m_tokens,
        c.cache_write_1h_tokens,
        _to_pico(row.cost_usd),
        _to_pico(row.cost_saved_usd),
        row.cache_layer,
        row.latency_ms,
        row.status,
        int(row.usage_estimated),
    )


def _row_of(values: tuple[Any, ...]) -> LedgerRow:
    (at_us, request_id, tenant, route, model, provider, i, o, r, w5, w1, cost, saved, layer,
     latency, status, estimated) = values  # fmt: skip
    return LedgerRow(
        at=_EPOCH + int(at_us) * _MICROSECOND,
        request_id=str(request_id),
        tenant=str(tenant),
        route=str(route),
        model=str(model),
        provider=str(provider),
        counts=TokenCounts(
            input_tokens=int(i),
            output_tokens=int(o),
            cache_read_tokens=int(r),
            cache_write_5m_tokens=int(w5),
            cache_write_1h_tokens=int(w1),
        ),
        cost_usd=_usd(0, cost),
        cost_saved_usd=_usd(0, saved),
        cache_layer=str(layer),
        latency_ms=float(latency),
        status=str(status),
        usage_estimated=bool(estimated),
    )
