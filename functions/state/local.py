"""`LocalStateStore`: the embedded state store (one SQLite file), the default of `make dev` without Azurite.

The same semantics as `TableStateStore` (see `functions.state`): ETags, `if_not_exists`, TTLs that read
as absent and are deleted lazily, the 32,768 UTF-16 code unit limit on a value's JSON (so that a bot that
works here also fits a table entity). Every write is one `BEGIN IMMEDIATE` transaction, so several
processes sharing the file (the dev stack's functions host and a CLI) see one order of writes. SQLite runs
in a worker thread; the connection opens on first use (the folder is created then).
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from functions.state import (
    TTL,
    ConflictError,
    Entry,
    StateError,
    check_key,
    check_put,
    decode_value,
    encode_value,
    ttl_seconds,
)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    partition TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    etag TEXT NOT NULL,
    expires_at REAL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (partition, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entries_expiry ON entries (expires_at) WHERE expires_at IS NOT NULL;
"""


def _now() -> datetime:
    return datetime.now(UTC)


def _new_etag() -> str:
    return f'W/"{secrets.token_hex(10)}"'


class LocalStateStore:
    def __init__(self, path: str | Path, *, clock: Callable[[], datetime] = _now, busy_timeout: float = 10.0) -> None:
        self.path = Path(path)
        self._clock = clock
        self._busy_timeout = busy_timeout
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LocalStateStore({str(self.path)!r})"

    # --- the store ---

    async def get(self, partition: str, key: str) -> Entry | None:
        check_key(partition, key)
        return await self._run(self._get, partition, key)

    async def put(
        self,
        partition: str,
        key: str,
        value: Mapping[str, Any],
        *,
        etag: str | Literal["*"] | None = None,
        if_not_exists: bool = False,
        ttl: TTL | None = None,
    ) -> str:
        check_key(partition, key)
        check_put(etag, if_not_exists)
        text = encode_value(partition, key, value)
        seconds = ttl_seconds(ttl)
        return await self._run(self._put, partition, key, text, etag, if_not_exists, seconds)

    async def delete(self, partition: str, key: str, *, etag: str | None = None) -> None:
        check_key(partition, key)
        await self._run(self._delete, partition, key, etag)

    async def purge_expired(self) -> int:
        return await self._run(self._purge)

    async def aclose(self) -> None:
        await asyncio.to_thread(self._close)

    # --- in the worker thread ---

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(self._locked, fn, *args)

    def _locked(self, fn: Callable[..., T], *args: Any) -> T:
        with self._lock:
            try:
                return fn(self._connection(), *args)
            except sqlite3.Error as exc:
                raise StateError(f"local state store {self.path}: {type(exc).__name__}: {exc}") from exc

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StateError(f"local state store {self.path}: cannot create its folder ({exc})") from exc
            db = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False)
            try:
                self._wal(db)
                db.execute("PRAGMA synchronous=NORMAL")
                db.executescript(_SCHEMA)
            except sqlite3.Error:
                db.close()
                raise
            self._db = db
        return self._db

    def _wal(self, db: sqlite3.Connection) -> None:
        """`PRAGMA journal_mode=WAL`, retried: two first opens of a new file at once can find it locked, and
        SQLite's busy handler does not cover a journal-mode change."""
        deadline = time.monotonic() + self._busy_timeout
        delay = 0.005
        while True:
            try:
                db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.1)

    def _close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _epoch(self) -> float:
        return self._clock().timestamp()

    def _get(self, db: sqlite3.Connection, partition: str, key: str) -> Entry | None:
        row = db.execute(
            "SELECT value, etag, expires_at FROM entries WHERE partition = ? AND key = ?", (partition, key)
        ).fetchone()
        if row is None:
            return None
        text, etag, expires_at = row
        if expires_at is not None and expires_at <= self._epoch():
            # lazily: only the version that expired (a write that just replaced it stays)
            db.execute("DELETE FROM entries WHERE partition = ? AND key = ? AND etag = ?", (partition, key, etag))
            return None
        expires = datetime.fromtimestamp(expires_at, UTC) if expires_at is not None else None
        return Entry(decode_value(partition, key, text), etag, expires)

    def _put(
        self,
        db: sqlite3.Connection,
        partition: str,
        key: str,
        text: str,
        etag: str | None,
        if_not_exists: bool,
        ttl: float | None,
    ) -> str:
        now = self._epoch()
        expires_at = now + ttl if ttl is not None else None
        new = _new_etag()
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute(
                "SELECT etag, expires_at FROM entries WHERE partition = ? AND key = ?", (partition, key)
            ).fetchone()
            live = row is not None and (row[1] is None or row[1] > now)
            where = f"state {partition}/{key}"
            if if_not_exists and live:
                raise ConflictError(f"{where} already exists")
            if etag == "*" and not live:
                raise ConflictError(f"{where} does not exist (put with etag='*' replaces an existing entry)")
            if etag not in (None, "*") and (row is None or row[0] != etag):
                raise ConflictError(f"{where} changed since it was read (its etag no longer matches)")
            db.execute(
                "INSERT INTO entries (partition, key, value, etag, expires_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (partition, key) DO UPDATE SET value = excluded.value, etag = excluded.etag,"
                " expires_at = excluded.expires_at, updated_at = excluded.updated_at",
                (partition, key, text, new, expires_at, now),
            )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return new

    def _delete(self, db: sqlite3.Connection, partition: str, key: str, etag: str | None) -> None:
        if etag is None:
            db.execute("DELETE FROM entries WHERE partition = ? AND key = ?", (partition, key))
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT etag FROM entries WHERE partition = ? AND key = ?", (partition, key)).fetchone()
            if row is not None and row[0] != etag:
                raise ConflictError(f"state {partition}/{key} changed since it was read (its etag no longer matches)")
            db.execute("DELETE FROM entries WHERE partition = ? AND key = ?", (partition, key))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _purge(self, db: sqlite3.Connection) -> int:
        cursor = db.execute("DELETE FROM entries WHERE expires_at IS NOT NULL AND expires_at <= ?", (self._epoch(),))
        return max(cursor.rowcount, 0)
