"""SQLite (WAL) persistence of cache entries.

One row per entry: texts, partition, exact key, metadata and the float32 vector as a blob.
Every write is its own transaction, so a process killed with SIGKILL loses at most the entry
being written and never leaves a half-written one (WAL with ``synchronous=NORMAL`` is safe
against process crashes; an OS crash may additionally lose the last commits, never corrupt).

At start the file is checked (``PRAGMA quick_check`` and the schema); a corrupt or
unreadable file is moved aside to ``<name>.corrupt-<unix time>`` with an ERROR log line and a
fresh store is created, so the server still serves.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np

from optiserve.cache.entry import CacheEntry
from optiserve.domain.types import FinishReason

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY,
    partition TEXT NOT NULL,
    exact_key TEXT NOT NULL,
    query TEXT NOT NULL,
    text TEXT NOT NULL,
    model TEXT NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    finish_reason TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0,
    vector BLOB
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_COLUMNS = (
    "id, partition, exact_key, query, text, model, completion_tokens, cost_usd, "
    "finish_reason, created_at, expires_at, hits, vector"
)


class CacheStore:
    """Entries persisted in one SQLite file. Thread-safe (one connection, one lock)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.moved_aside: Path | None = None
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._conn = self._open(path)
        except sqlite3.DatabaseError as exc:
            self.moved_aside = self._move_aside(path, exc)
            self._conn = self._open(path)

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=5000")
            check = conn.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise sqlite3.DatabaseError(f"quick_check says {check!r}")
            conn.executescript(_SCHEMA)
            conn.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,)
            )
            version = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if int(version[0]) != SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"schema version {version[0]} != {SCHEMA_VERSION}")
            conn.execute(f"SELECT {_COLUMNS} FROM entries LIMIT 1").fetchall()
        except (sqlite3.DatabaseError, ValueError, TypeError) as exc:
            conn.close()
            raise sqlite3.DatabaseError(str(exc)) from exc
        return conn

    @staticmethod
    def _move_aside(path: Path, exc: Exception) -> Path:
        target = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{path}{suffix}")
            if src.exists():
                src.replace(Path(f"{target}{suffix}"))
        logger.error(
            "response cache file %s is corrupt or unreadable (%s): moved it to %s and "
            "started an empty cache",
            path,
            exc,
            target,
        )
        return target

    def put(self, entry: CacheEntry) -> None:
        """Insert or replace ``entry`` in one transaction."""
        vector = None if entry.vector is None else entry.vector.astype(np.float32).tobytes()
        row = (
            entry.entry_id,
            entry.partition,
            entry.exact_key,
            entry.query,
            entry.text,
            entry.model,
            entry.completion_tokens,
            entry.cost_usd,
            entry.finish_reason.value,
            entry.created_at,
            entry.expires_at,
            entry.hits,
            vector,
        )
        with self._lock:
            self._conn.execute(
                f"INSERT OR REPLACE INTO entries({_COLUMNS}) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )

    def delete(self, entry_ids: list[int]) -> None:
        """Delete entries by id in one transaction."""
        if not entry_ids:
            return
        with self._lock:
            try:
                self._conn.execute("BEGIN")
                self._conn.executemany(
                    "DELETE FROM entries WHERE id = ?", [(i,) for i in entry_ids]
                )
                self._conn.execute("COMMIT")
            except sqlite3.Error:
                # SQLite rolls back by itself on an I/O error, not on every error (a
                # statement that meets another writer's lock leaves the transaction open):
                # left open, every later write would join it and never be committed.
                if self._conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK")
                raise

    def load(self) -> list[CacheEntry]:
        """Every stored entry, oldest first; unreadable rows are skipped with a warning."""
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM entries ORDER BY created_at, id"
            ).fetchall()
        out: list[CacheEntry] = []
        for row in rows:
            try:
                vector = None if row[12] is None else np.frombuffer(row[12], dtype=np.float32)
                out.append(
                    CacheEntry(
                        entry_id=int(row[0]),
                        partition=str(row[1]),
                        exact_key=str(row[2]),
                        query=str(row[3]),
                        text=str(row[4]),
                        model=str(row[5]),
                        completion_tokens=int(row[6]),
                        cost_usd=float(row[7]),
                        finish_reason=FinishReason(row[8]),
                        created_at=float(row[9]),
                        expires_at=float(row[10]),
                        hits=int(row[11]),
                        vector=None if vector is None else vector.copy(),
                    )
                )
            except (ValueError, TypeError) as exc:
                logger.warning("skipping unreadable cache row %r: %s", row[0], exc)
        return out

    def max_id(self) -> int:
        """The largest entry id stored (0 when empty)."""
        with self._lock:
            row = self._conn.execute("SELECT COALESCE(MAX(id), 0) FROM entries").fetchone()
        return int(row[0])

    def count(self) -> int:
        """Rows stored."""
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0])

    def close(self) -> None:
        """Checkpoint the WAL and close."""
        with self._lock:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.close()
