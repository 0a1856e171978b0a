"""The durable side of Direct Line: the conversation directory (watermark and lease per conversation), and the
tracker that makes the watermark the ack.

**The ack rule, Direct Line style.** Direct Line cannot be acked; it replays everything after the watermark a
client resumes from. So the watermark is the ack: a conversation's stored watermark advances only once every
activity up to it has been published (`Handoff.deliver` called the tracker's answer action with an ack). After a
restart the conversation resumes from the stored watermark: what was published before the crash but after the
stored watermark is replayed and dropped as a duplicate (the activity id is the MessageId), nothing is lost.

    tracker = AckTracker(stored_watermark)
    frame = tracker.frame(activity_set.watermark, n)   # n activities of this frame to publish
    await handoff.deliver(envelope, tracker.answer(frame), policy=AckPolicy.REDELIVERS)
    tracker.published       # the watermark up to which everything is durable (in memory)
    store.advance(...)      # written in batches by the connector (`DirectLineStore.advance_many`)

**Leases.** Exactly one replica holds a conversation at a time: `claim` takes a conversation whose lease is
free or lapsed (one conditional UPDATE, atomic in SQLite), `renew` extends every lease a replica holds, and a
watermark is written only by the lease holder. A replica that dies stops renewing: its leases lapse after
`lease_seconds` and another replica's scan takes the conversations over. A replica that cannot renew stops its
conversations before its leases lapse (the connector's self-fencing).

`DirectLineStore` is the interface; `SqliteDirectLineStore` the embedded implementation (the directory file
`shared.directline` describes, `.relaybus/directline.db` by default). A Table Storage one keeps the same row
per conversation (PartitionKey `conversation`, RowKey the id) and uses ETags for `claim`/`renew`/`advance`.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from shared.directline import open_directory
from shared.errors import RelaybusError
from worker.directline.protocol import is_ahead
from worker.handoff import Verdict

T = TypeVar("T")


class DirectoryError(RelaybusError):
    """The conversation directory could not be read or written."""


@dataclass(frozen=True, slots=True)
class ConversationRow:
    conversation_id: str
    watermark: str | None
    wanted_at: float
    state: str
    ended_reason: str | None
    owner: str | None
    lease_until: float | None


class DirectLineStore(Protocol):
    async def candidates(self, owner: str, now: float, limit: int) -> list[ConversationRow]:
        """Active conversations nobody holds (no lease, or a lapsed one), oldest wanted first."""
        ...

    async def claim(self, conversation_id: str, owner: str, now: float, lease_seconds: float) -> ConversationRow | None:
        """Take the lease if it is free or lapsed (or already ours); the row, or None when another holds it."""
        ...

    async def renew(self, owner: str, now: float, lease_seconds: float) -> dict[str, float]:
        """Extend every lease `owner` holds; returns {conversation id: wanted_at} of what it still holds."""
        ...

    async def advance_many(self, owner: str, watermarks: Sequence[tuple[str, str]], now: float) -> set[str]:
        """Store watermarks of conversations `owner` holds; returns the ids whose lease it no longer holds."""
        ...

    async def release(self, owner: str, conversation_ids: Iterable[str] | None = None) -> None:
        """Give leases up (at shutdown: another replica takes over at once)."""
        ...

    async def end(self, owner: str, conversation_id: str, reason: str, now: float) -> None: ...

    async def get(self, conversation_id: str) -> ConversationRow | None: ...

    async def aclose(self) -> None: ...


class SqliteDirectLineStore:
    """The directory in one SQLite file (WAL), one connection used from a worker thread."""

    def __init__(self, path: str | Path, *, busy_timeout: float = 10.0) -> None:
        self.path = Path(path)
        self._busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SqliteDirectLineStore({str(self.path)!r})"

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = open_directory(self.path, busy_timeout=self._busy_timeout)
        return self._conn

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            with self._lock:
                try:
                    return fn(self._connection())
                except sqlite3.Error as exc:
                    raise DirectoryError(f"direct line directory {self.path}: {exc}") from None
                except OSError as exc:
                    raise DirectoryError(f"direct line directory {self.path}: {exc.strerror or exc}") from None

        return await asyncio.to_thread(call)

    async def candidates(self, owner: str, now: float, limit: int) -> list[ConversationRow]:
        def fn(conn: sqlite3.Connection) -> list[ConversationRow]:
            rows = conn.execute(
                "SELECT conversation_id, watermark, wanted_at, state, ended_reason, owner, lease_until "
                "FROM conversations WHERE state = 'active' AND (owner IS NULL OR lease_until IS NULL OR "
                "lease_until < ?) ORDER BY wanted_at LIMIT ?",
                (now, limit),
            ).fetchall()
            return [ConversationRow(*row) for row in rows]

        return await self._run(fn)

    async def claim(self, conversation_id: str, owner: str, now: float, lease_seconds: float) -> ConversationRow | None:
        def fn(conn: sqlite3.Connection) -> ConversationRow | None:
            cursor = conn.execute(
                "UPDATE conversations SET owner = ?, lease_until = ?, updated_at = ? WHERE conversation_id = ? "
                "AND state = 'active' AND (owner IS NULL OR owner = ? OR lease_until IS NULL OR lease_until < ?)",
                (owner, now + lease_seconds, now, conversation_id, owner, now),
            )
            if cursor.rowcount != 1:
                return None
            row = conn.execute(
                "SELECT conversation_id, watermark, wanted_at, state, ended_reason, owner, lease_until "
                "FROM conversations WHERE conversation_id = ?",
                (conversation_id,),
            ).fetchone()
            return ConversationRow(*row) if row else None

        return await self._run(fn)

    async def renew(self, owner: str, now: float, lease_seconds: float) -> dict[str, float]:
        def fn(conn: sqlite3.Connection) -> dict[str, float]:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "UPDATE conversations SET lease_until = ? WHERE owner = ? AND state = 'active'",
                    (now + lease_seconds, owner),
                )
                rows = conn.execute(
                    "SELECT conversation_id, wanted_at FROM conversations WHERE owner = ? AND state = 'active'",
                    (owner,),
                ).fetchall()
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return {cid: float(wanted) for cid, wanted in rows}

        return await self._run(fn)

    async def advance_many(self, owner: str, watermarks: Sequence[tuple[str, str]], now: float) -> set[str]:
        def fn(conn: sqlite3.Connection) -> set[str]:
            lost: set[str] = set()
            conn.execute("BEGIN IMMEDIATE")
            try:
                for conversation_id, watermark in watermarks:
                    cursor = conn.execute(
                        "UPDATE conversations SET watermark = ?, updated_at = ? "
                        "WHERE conversation_id = ? AND owner = ?",
                        (watermark, now, conversation_id, owner),
                    )
                    if cursor.rowcount != 1:
                        lost.add(conversation_id)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return lost

        if not watermarks:
            return set()
        return await self._run(fn)

    async def release(self, owner: str, conversation_ids: Iterable[str] | None = None) -> None:
        ids = None if conversation_ids is None else list(conversation_ids)

        def fn(conn: sqlite3.Connection) -> None:
            if ids is None:
                conn.execute("UPDATE conversations SET owner = NULL, lease_until = NULL WHERE owner = ?", (owner,))
                return
            conn.executemany(
                "UPDATE conversations SET owner = NULL, lease_until = NULL WHERE owner = ? AND conversation_id = ?",
                [(owner, cid) for cid in ids],
            )

        await self._run(fn)

    async def end(self, owner: str, conversation_id: str, reason: str, now: float) -> None:
        def fn(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE conversations SET state = 'ended', ended_reason = ?, owner = NULL, lease_until = NULL, "
                "updated_at = ? WHERE conversation_id = ? AND (owner IS NULL OR owner = ?)",
                (reason[:500], now, conversation_id, owner),
            )

        await self._run(fn)

    async def get(self, conversation_id: str) -> ConversationRow | None:
        def fn(conn: sqlite3.Connection) -> ConversationRow | None:
            row = conn.execute(
                "SELECT conversation_id, watermark, wanted_at, state, ended_reason, owner, lease_until "
                "FROM conversations WHERE conversation_id = ?",
                (conversation_id,),
            ).fetchone()
            return ConversationRow(*row) if row else None

        return await self._run(fn)

    async def register(self, conversation_id: str, now: float) -> None:
        """The function side's `shared.directline.want`, for tests and tools that hold a store."""
        from shared.directline import want

        await asyncio.to_thread(want, self.path, conversation_id, now)

    async def aclose(self) -> None:
        def close() -> None:
            with self._lock:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None

        await asyncio.to_thread(close)


# --- the ack tracker -------------------------------------------------------------------------------------


@dataclass(slots=True)
class TrackedFrame:
    watermark: str | None
    pending: int
    failed: bool = False


class AckTracker:
    """Per conversation: which watermark everything is published up to (pure; no I/O).

    Frames are registered in arrival order; a frame is done when each of its publishable activities was acked
    (published, or a duplicate of a published one) or skipped on purpose. `published` moves to the watermark of
    the last frame that is done with every frame before it done too; a frame whose watermark goes backwards or
    is absent leaves it where it is."""

    def __init__(self, watermark: str | None = None) -> None:
        self.published = watermark
        self.seen = watermark
        """The newest watermark received (ahead of `published` while activities are being published)."""
        self._frames: list[TrackedFrame] = []
        self.failures = 0

    def frame(self, watermark: str | None, pending: int) -> TrackedFrame:
        frame = TrackedFrame(watermark, pending)
        self._frames.append(frame)
        if is_ahead(watermark, self.seen):
            self.seen = watermark
        self._settle()
        return frame

    def done(self, frame: TrackedFrame) -> None:
        """One activity of `frame` is durable (or needs no publishing)."""
        frame.pending -= 1
        self._settle()

    def answer(self, frame: TrackedFrame) -> Callable[[Verdict], bool]:
        """The answer action for `Handoff.deliver`: an ack moves the watermark on; a nack does not."""

        def answer(verdict: Verdict) -> bool:
            if verdict.ack:
                self.done(frame)
            else:
                frame.failed = True
                self.failures += 1
            return True

        return answer

    def _settle(self) -> None:
        frames = self._frames
        while frames and frames[0].pending <= 0:
            frame = frames.pop(0)
            if is_ahead(frame.watermark, self.published):
                self.published = frame.watermark

    @property
    def in_flight(self) -> int:
        return sum(max(0, f.pending) for f in self._frames)
