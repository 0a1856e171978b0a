"""The local durable queue: SQLite in WAL mode with the Service Bus semantics handlers rely on.

Two layers:

- `LocalQueueStore`: synchronous, one SQLite connection, every queue operation as one transaction.
  The CLI and tests use it directly; several processes may open the same file at once (claims and
  settlements run under `BEGIN IMMEDIATE`, readers wait up to `busy_timeout`).
- `LocalQueueBackend`: the asyncio `QueueBackend` the worker publishes to, plus the async receiver API
  the local functions host uses. Disk I/O never runs on the event loop: sends go to one writer thread,
  receives and settlements to one reader thread, each with its own connection.

Group commit: `send()` appends the message to a pending list and waits; the writer thread takes
everything pending (up to `max_batch`) and commits it in one transaction, then resolves every waiting
`send()`. While one commit is on disk, the next batch collects, so the cost of a commit is shared by
all the publishers waiting on it.

Durability: the writer connection runs `synchronous=FULL`. In WAL mode that fsyncs the WAL on every
commit, so a returned `send()` survives a process crash *and* a power loss: `send()` returning is the
moment the worker acks the platform, and the platform will not redeliver after that. Group commit
makes FULL affordable (one fsync per batch, not per message). The reader connection (receive,
complete, abandon, dead-letter) runs `synchronous=NORMAL`: WAL + NORMAL is still safe against a process
crash, and a settlement lost to a power cut only causes a redelivery, which consumers must tolerate
anyway (at-least-once).

Semantics, per queue (`QueueConfig`, built from the route table's `Route`):

- duplicate detection on MessageId: a repeat within `duplicate_detection_window` of the first send is
  accepted and silently dropped; the window is not extended by duplicates;
- peek-lock: `receive()` locks messages until now + `lock_duration` and returns a lock token;
  `complete()` deletes, `abandon()` makes the message available again, `dead_letter()` moves it to the
  dead-letter sub-queue with a reason and description, `renew_lock()` extends the lock. Settling with
  an expired or unknown lock raises `LockLostError` (Service Bus' MessageLockLost);
- `delivery_count` counts deliveries (1 on the first receive). A message whose lock expires or that is
  abandoned after `max_delivery_count` deliveries is dead-lettered with reason `MaxDeliveryCountExceeded`;
- sessions: on session queues every message needs a SessionId. `accept_next_session()` locks the
  oldest available session for one consumer (a session lock with expiry, renewed by
  `renew_session_lock()` and by every receive in it); `receive_from_session()` returns that session's
  messages strictly in order, one in flight at a time. Messages received in a session are locked by the
  session lock: when it expires or the session is released, they return to the queue;
- scheduled messages (`schedule()`, or a `QueueMessage.scheduled_enqueue_time`) become available at
  their time;
- time to live: a message expires `time_to_live` seconds after it became available (its own
  `QueueMessage.time_to_live`, at most the queue's `QueueConfig.time_to_live`). An expired message is
  never delivered: sweeps (every receive applies them to its queue) dead-letter it with reason
  `TTLExpiredException` when the queue has `dead_letter_on_expiration`, else delete it, and count it in
  `expired`. A locked message does not expire until its lock ends (as on Service Bus);
- request/reply: `correlation_id`, `reply_to` and `reply_to_session_id` are stored and returned as they
  were sent (`StoredMessage`). The reply queue (`shared.routes.REPLIES`) is in every store built from
  the route table (`queue_configs`): sessions on, a short TTL, expired replies deleted.

Inspection (`stats`, `peek`, `messages`, `dead_letters`, `resubmit`) works on any store file; it first
applies pending lock expiries so that the figures are current.

Files that are not queues: a store never writes into a file that is not a relaybus queue. Opening
checks the file first (`check_store_file`, read-only: no byte of it and no `-wal`/`-shm` next to it
changes) and raises `NotAQueueError` for a directory, an empty file (when not creating), a file that is
not SQLite, or another application's SQLite database. A queue file carries `PRAGMA application_id`
"RBLQ"; one written by an earlier version (id 0, relaybus' tables) opens and gets the id. Creating
(`create=True`) also accepts an SQLite database with no schema at all (what a crash during the very first
open leaves).

Errors: `LocalQueueError` (a `RelaybusError`) and its subclasses `QueueNotFoundError`,
`LockLostError`, `StoreMissingError`, `NotAQueueError`. Sends raise `PermanentPublishError` (unknown queue, no SessionId
on a session queue, too large) or `TransientPublishError` (SQLite busy, disk full, backend closed).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum, IntEnum
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar

from shared.errors import PermanentPublishError, RelaybusError
from shared.jsonfmt import compact
from shared.queue_message import QueueMessage
from shared.routes import REPLIES, ROUTES, ReplyQueue, Route, RouteTable

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

SCHEMA_VERSION = 2
"""1: the first release; 2: request/reply fields, time to live, scheduled time (added in place to older files)."""
APPLICATION_ID = 0x52424C51
"""`PRAGMA application_id` of a relaybus queue file ("RBLQ"); files of earlier versions carry 0."""
_QUEUE_TABLES = frozenset({"queues", "messages", "dedupe", "sessions"})
_MESSAGE_COLUMNS = frozenset({"seq", "queue", "message_id", "session_id", "properties", "body", "state"})
MAX_DELIVERY_COUNT_EXCEEDED = "MaxDeliveryCountExceeded"
TTL_EXPIRED = "TTLExpiredException"
"""Service Bus' dead-letter reason for an expired message."""
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024
"""Service Bus Standard tier's message size limit."""
_MAX_DEAD_LETTER_TEXT = 4096

Synchronous = Literal["FULL", "NORMAL"]


class LocalQueueError(RelaybusError):
    """Root of the local queue's own errors."""


class QueueNotFoundError(LocalQueueError):
    """The queue is not configured in this store."""


class LockLostError(LocalQueueError):
    """The message or session lock expired or is unknown: the message was (or will be) redelivered."""


class StoreMissingError(LocalQueueError):
    """The store file does not exist (and the caller asked not to create it)."""


class NotAQueueError(LocalQueueError):
    """The file exists but is not a relaybus queue (empty, another SQLite database, not SQLite at all)."""


class MessageState(IntEnum):
    ACTIVE = 0
    LOCKED = 1
    DEAD_LETTERED = 2


class Disposition(Enum):
    """What `abandon()` did with a message."""

    ABANDONED = "abandoned"
    DEAD_LETTERED = "dead_lettered"


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """How one queue behaves (durations in seconds)."""

    name: str
    sessions: bool = False
    max_delivery_count: int = 10
    lock_duration: float = 60.0
    duplicate_detection_window: float = 600.0
    time_to_live: float | None = None
    """The queue's default (and longest) message time to live in seconds; None: messages live until consumed."""
    dead_letter_on_expiration: bool = True
    """Expired messages go to the dead-letter sub-queue (True) or are deleted (False, the reply queue)."""

    @classmethod
    def from_route(cls, route: Route, name: str | None = None) -> QueueConfig:
        return cls(
            name=name or route.queue,
            sessions=route.sessions,
            max_delivery_count=route.max_delivery_count,
            lock_duration=route.lock_duration.total_seconds(),
            duplicate_detection_window=route.duplicate_detection_window.total_seconds(),
        )

    @classmethod
    def from_reply_queue(cls, replies: ReplyQueue = REPLIES, name: str | None = None) -> QueueConfig:
        """The reply queue: sessions (one per waiting worker process), replies expire after the TTL and vanish."""
        ttl = replies.time_to_live.total_seconds()
        return cls(
            name=name or replies.queue,
            sessions=True,
            max_delivery_count=replies.max_delivery_count,
            lock_duration=replies.lock_duration.total_seconds(),
            duplicate_detection_window=max(ttl, 20.0),
            time_to_live=ttl,
            dead_letter_on_expiration=False,
        )


def queue_configs(
    routes: RouteTable = ROUTES,
    queue_settings: Mapping[str, str] | None = None,
    replies: ReplyQueue | None = REPLIES,
) -> dict[str, QueueConfig]:
    """One `QueueConfig` per route and one for the reply queue (unless `replies` is None), keyed by the queue
    name in effect (app-setting overrides such as `SLACK_EVENTS_QUEUE` or `RELAYBUS_REPLY_QUEUE` applied)."""
    configs: dict[str, QueueConfig] = {}
    for route in routes:
        name = route.queue_name(queue_settings)
        configs[name] = QueueConfig.from_route(route, name)
    if replies is not None:
        name = replies.queue_name(queue_settings)
        if name in configs:
            raise ValueError(f"the reply queue {name!r} is also a route's queue")
        configs[name] = QueueConfig.from_reply_queue(replies, name)
    return configs


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One message as stored (times are epoch seconds from the store's clock)."""

    queue: str
    sequence_number: int
    message_id: str
    session_id: str | None
    application_properties: dict[str, str]
    body: bytes
    enqueued_at: float
    available_at: float
    delivery_count: int
    state: MessageState
    lock_token: str | None = None
    locked_until: float | None = None
    dead_letter_reason: str | None = None
    dead_letter_description: str | None = None
    dead_lettered_at: float | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    reply_to_session_id: str | None = None
    time_to_live: float | None = None
    """Seconds, as in effect (the message's own, at most the queue's default); None: no expiry."""
    expires_at: float | None = None
    scheduled_at: float | None = None
    """The scheduled enqueue time the sender asked for (None: sent for now)."""

    @property
    def enqueued_time(self) -> datetime:
        return datetime.fromtimestamp(self.enqueued_at, UTC)

    @property
    def scheduled_enqueue_time(self) -> datetime | None:
        return None if self.scheduled_at is None else datetime.fromtimestamp(self.scheduled_at, UTC)

    @property
    def expires_at_time(self) -> datetime | None:
        return None if self.expires_at is None else datetime.fromtimestamp(self.expires_at, UTC)

    @property
    def locked_until_time(self) -> datetime | None:
        return None if self.locked_until is None else datetime.fromtimestamp(self.locked_until, UTC)


@dataclass(slots=True)
class SessionLease:
    """A session held by one consumer until `locked_until` (renewed by the store)."""

    queue: str
    session_id: str
    token: str
    locked_until: float


@dataclass(frozen=True, slots=True)
class QueueStats:
    queue: str
    sessions: bool
    active: int
    scheduled: int
    locked: int
    dead_lettered: int
    total: int
    sessions_locked: int


_COLUMNS = (
    "queue, seq, message_id, session_id, properties, body, enqueued_at, visible_at, delivery_count, state, "
    "lock_token, locked_until, dead_letter_reason, dead_letter_description, dead_lettered_at, "
    "correlation_id, reply_to, reply_to_session_id, time_to_live, expires_at, scheduled_at"
)

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS queues (
        name TEXT PRIMARY KEY,
        sessions INTEGER NOT NULL,
        max_delivery_count INTEGER NOT NULL,
        lock_duration REAL NOT NULL,
        duplicate_detection_window REAL NOT NULL,
        time_to_live REAL,
        dead_letter_on_expiration INTEGER NOT NULL DEFAULT 1
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS messages (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        queue TEXT NOT NULL,
        message_id TEXT NOT NULL,
        session_id TEXT,
        properties TEXT NOT NULL,
        body BLOB NOT NULL,
        enqueued_at REAL NOT NULL,
        visible_at REAL NOT NULL,
        delivery_count INTEGER NOT NULL DEFAULT 0,
        state INTEGER NOT NULL DEFAULT 0,
        lock_token TEXT,
        locked_until REAL,
        session_lock TEXT,
        dead_letter_reason TEXT,
        dead_letter_description TEXT,
        dead_lettered_at REAL,
        correlation_id TEXT,
        reply_to TEXT,
        reply_to_session_id TEXT,
        time_to_live REAL,
        expires_at REAL,
        scheduled_at REAL
    )""",
    """CREATE TABLE IF NOT EXISTS dedupe (
        queue TEXT NOT NULL,
        message_id TEXT NOT NULL,
        expires_at REAL NOT NULL,
        PRIMARY KEY (queue, message_id)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS dedupe_by_expiry ON dedupe(expires_at)",
    """CREATE TABLE IF NOT EXISTS sessions (
        queue TEXT NOT NULL,
        session_id TEXT NOT NULL,
        lock_token TEXT NOT NULL,
        locked_until REAL NOT NULL,
        PRIMARY KEY (queue, session_id)
    ) WITHOUT ROWID""",
)
_MIGRATIONS: tuple[tuple[str, str, str], ...] = (
    # (table, column, declaration): columns schema 2 added; ALTER TABLE adds them to a file of schema 1
    ("messages", "correlation_id", "TEXT"),
    ("messages", "reply_to", "TEXT"),
    ("messages", "reply_to_session_id", "TEXT"),
    ("messages", "time_to_live", "REAL"),
    ("messages", "expires_at", "REAL"),
    ("messages", "scheduled_at", "REAL"),
    ("queues", "time_to_live", "REAL"),
    ("queues", "dead_letter_on_expiration", "INTEGER NOT NULL DEFAULT 1"),
)
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS messages_by_state ON messages(queue, state, seq)",
    "CREATE INDEX IF NOT EXISTS messages_by_session ON messages(queue, session_id, seq)",
    "CREATE UNIQUE INDEX IF NOT EXISTS messages_by_lock ON messages(lock_token) WHERE lock_token IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS messages_by_session_lock ON messages(session_lock) WHERE session_lock IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS messages_by_expiry ON messages(queue, expires_at) WHERE expires_at IS NOT NULL",
)

_DEDUPE = (
    "INSERT INTO dedupe(queue, message_id, expires_at) VALUES (?, ?, ?) "
    "ON CONFLICT(queue, message_id) DO UPDATE SET expires_at = excluded.expires_at WHERE dedupe.expires_at <= ?"
)
_INSERT = (
    "INSERT INTO messages(queue, message_id, session_id, properties, body, enqueued_at, visible_at, "
    "correlation_id, reply_to, reply_to_session_id, time_to_live, expires_at, scheduled_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_RANDOM_HEX = "lower(hex(randomblob(16)))"


class LocalQueueStore:
    """Synchronous access to a queue file. Not thread-safe: use one store per thread.

    `queues` configures the queues (and is recorded in the file, so that other processes, such as
    the CLI, can open the store without it). Without `queues`, the configuration recorded in the file
    is used; queues found in the file but not configured behave with Service Bus defaults.
    """

    def __init__(
        self,
        path: str | Path,
        queues: Mapping[str, QueueConfig] | None = None,
        *,
        clock: Callable[[], float] = time.time,
        synchronous: Synchronous = "FULL",
        busy_timeout: float = 10.0,
        create: bool = True,
    ) -> None:
        self.path = Path(path)
        self._given = dict(queues) if queues is not None else None
        self._queues: dict[str, QueueConfig] = dict(queues or {})
        self._clock = clock
        self._synchronous = synchronous
        self._busy_timeout = busy_timeout
        self._create = create
        self._conn: sqlite3.Connection | None = None
        self._next_prune = 0.0
        self.expired = 0
        """Messages this store found expired and removed (dead-lettered or deleted) in its sweeps."""

    # -- connection -------------------------------------------------------------------------------

    def open(self) -> None:
        """Open the file (creating it and the schema when allowed). Called implicitly by every operation."""
        self._connection()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> LocalQueueStore:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def queues(self) -> dict[str, QueueConfig]:
        self._connection()
        return dict(self._queues)

    def config(self, queue: str) -> QueueConfig:
        self._connection()
        try:
            return self._queues[queue]
        except KeyError:
            raise QueueNotFoundError(f"no queue named {queue!r} in {self.path}") from None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        if self.path.exists() and not self.path.is_file():
            what = "a directory" if self.path.is_dir() else "not a regular file"
            raise NotAQueueError(f"{self.path} is {what}, not a relaybus queue file")
        if self._create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.is_file() and self.path.stat().st_size > 0:
                check_store_file(self.path, creating=True)  # never turn someone else's database into a queue
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None)
        else:
            if not self.path.is_file():
                raise StoreMissingError(f"no local queue at {self.path}")
            check_store_file(self.path)
            uri = self.path.resolve().as_uri() + "?mode=rw"
            conn = sqlite3.connect(uri, uri=True, timeout=self._busy_timeout, isolation_level=None)
        try:
            _set_wal(conn, self._busy_timeout)
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            self._conn = conn
            with self._transaction() as tx:
                version = tx.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise LocalQueueError(f"{self.path} has schema {version}, newer than this code ({SCHEMA_VERSION})")
                for statement in _SCHEMA:
                    tx.execute(statement)
                if version < SCHEMA_VERSION:
                    _migrate(tx)
                for statement in _INDEXES:
                    tx.execute(statement)
                # Set only when different: a write here would touch the file on every open, and an
                # inspection that changes nothing should leave the file (and its mtime) alone.
                if version != SCHEMA_VERSION:
                    tx.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                if tx.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
                    tx.execute(f"PRAGMA application_id={APPLICATION_ID}")
                if self._given is not None:
                    tx.executemany(
                        "INSERT OR REPLACE INTO queues(name, sessions, max_delivery_count, lock_duration, "
                        "duplicate_detection_window, time_to_live, dead_letter_on_expiration) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [
                            (
                                q.name,
                                int(q.sessions),
                                q.max_delivery_count,
                                q.lock_duration,
                                q.duplicate_detection_window,
                                q.time_to_live,
                                int(q.dead_letter_on_expiration),
                            )
                            for q in self._given.values()
                        ],
                    )
                else:
                    self._queues = _load_queues(tx)
        except BaseException:
            self._conn = None
            conn.close()
            raise
        return conn

    @contextmanager
    def _transaction(self, mode: Literal["IMMEDIATE", "DEFERRED"] = "IMMEDIATE") -> Iterator[sqlite3.Connection]:
        conn = self._conn if self._conn is not None else self._connection()
        conn.execute(f"BEGIN {mode}")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _config_for(self, queue: str) -> QueueConfig:
        return self._queues.get(queue) or QueueConfig(queue)

    # -- sending ----------------------------------------------------------------------------------

    def send(self, message: QueueMessage, available_at: float | None = None) -> bool:
        """Store one message; False when it was a duplicate (dropped)."""
        return self.send_batch([(message, available_at)])[0]

    def send_batch(self, items: Sequence[tuple[QueueMessage, float | None]]) -> list[bool]:
        """Store messages in one transaction. Returns per message whether it was stored (False: duplicate).

        A message becomes available at `available_at` (epoch seconds) when given, else at its
        `scheduled_enqueue_time`, else now."""
        results: list[bool] = []
        with self._transaction() as tx:
            now = self._clock()
            for message, available_at in items:
                config = self._queues.get(message.queue)
                if config is None:
                    raise QueueNotFoundError(f"no queue named {message.queue!r}")
                window = config.duplicate_detection_window
                if tx.execute(_DEDUPE, (message.queue, message.message_id, now + window, now)).rowcount == 0:
                    results.append(False)
                    continue
                scheduled = message.scheduled_enqueue_time
                if available_at is None and scheduled is not None:
                    available_at = scheduled.timestamp()
                visible = now if available_at is None else max(now, available_at)
                ttl = _effective_ttl(message.time_to_live, config.time_to_live)
                tx.execute(
                    _INSERT,
                    (
                        message.queue,
                        message.message_id,
                        message.session_id,
                        compact(dict(message.application_properties)),
                        message.body,
                        now,
                        visible,
                        message.correlation_id,
                        message.reply_to,
                        message.reply_to_session_id,
                        ttl,
                        None if ttl is None else visible + ttl,
                        available_at,
                    ),
                )
                results.append(True)
            if now >= self._next_prune:
                tx.execute("DELETE FROM dedupe WHERE expires_at <= ?", (now,))
                self._next_prune = now + 1.0
        return results

    # -- receiving (peek-lock) ----------------------------------------------------------------------

    def receive(self, queue: str, max_messages: int = 1) -> list[StoredMessage]:
        """Lock and return up to `max_messages` available messages of a queue without sessions."""
        config = self.config(queue)
        if config.sessions:
            raise LocalQueueError(f"queue {queue!r} requires sessions: use accept_next_session()")
        with self._transaction() as tx:
            now = self._clock()
            self._sweep(tx, config, now)
            rows = tx.execute(
                f"UPDATE messages SET state = 1, lock_token = {_RANDOM_HEX}, locked_until = ?, "  # noqa: S608 - constant fragments
                "delivery_count = delivery_count + 1 WHERE seq IN (SELECT seq FROM messages "
                "WHERE queue = ? AND state = 0 AND visible_at <= ? ORDER BY seq LIMIT ?) "
                f"RETURNING {_COLUMNS}",
                (now + config.lock_duration, queue, now, max_messages),
            ).fetchall()
        return sorted((_message(r) for r in rows), key=lambda m: m.sequence_number)

    def accept_next_session(self, queue: str) -> SessionLease | None:
        """Lock the session holding the oldest available message that no one else holds."""
        config = self._session_config(queue)
        with self._transaction() as tx:
            now = self._clock()
            self._sweep(tx, config, now)
            row = tx.execute(
                "SELECT m.session_id FROM messages m WHERE m.queue = ? AND m.state = 0 AND m.visible_at <= ? "
                "AND m.session_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM sessions s "
                "WHERE s.queue = m.queue AND s.session_id = m.session_id) ORDER BY m.seq LIMIT 1",
                (queue, now),
            ).fetchone()
            if row is None:
                return None
            return self._lock_session(tx, config, row[0], now)

    def accept_session(self, queue: str, session_id: str) -> SessionLease | None:
        """Lock one named session; None while another consumer holds it."""
        config = self._session_config(queue)
        with self._transaction() as tx:
            now = self._clock()
            self._sweep(tx, config, now)
            held = tx.execute(
                "SELECT 1 FROM sessions WHERE queue = ? AND session_id = ?", (queue, session_id)
            ).fetchone()
            if held is not None:
                return None
            return self._lock_session(tx, config, session_id, now)

    def receive_from_session(self, lease: SessionLease) -> StoredMessage | None:
        """The session's next message, in order; None when it has none available or one is in flight."""
        config = self.config(lease.queue)
        with self._transaction() as tx:
            now = self._clock()
            until = now + config.lock_duration
            self._session_held(tx, lease, now)
            self._expire(tx, config, now)
            in_flight = tx.execute(
                "SELECT 1 FROM messages WHERE queue = ? AND session_id = ? AND state = 1 LIMIT 1",
                (lease.queue, lease.session_id),
            ).fetchone()
            if in_flight is not None:
                return None
            tx.execute("UPDATE sessions SET locked_until = ? WHERE lock_token = ?", (until, lease.token))
            lease.locked_until = until
            row = tx.execute(
                f"UPDATE messages SET state = 1, lock_token = {_RANDOM_HEX}, locked_until = ?, session_lock = ?, "  # noqa: S608 - constant fragments
                "delivery_count = delivery_count + 1 WHERE seq = (SELECT seq FROM messages "
                "WHERE queue = ? AND session_id = ? AND state = 0 AND visible_at <= ? ORDER BY seq LIMIT 1) "
                f"RETURNING {_COLUMNS}",
                (until, lease.token, lease.queue, lease.session_id, now),
            ).fetchone()
        return None if row is None else _message(row)

    def renew_session_lock(self, lease: SessionLease) -> float:
        config = self.config(lease.queue)
        with self._transaction() as tx:
            now = self._clock()
            self._session_held(tx, lease, now)
            until = now + config.lock_duration
            tx.execute("UPDATE sessions SET locked_until = ? WHERE lock_token = ?", (until, lease.token))
            tx.execute("UPDATE messages SET locked_until = ? WHERE session_lock = ?", (until, lease.token))
        lease.locked_until = until
        return until

    def release_session(self, lease: SessionLease) -> None:
        """Give the session up; its messages still locked return to the queue (their delivery counted)."""
        config = self.config(lease.queue)
        with self._transaction() as tx:
            now = self._clock()
            self._return(tx, config, now, "session_lock = ?", (lease.token,))
            tx.execute("DELETE FROM sessions WHERE lock_token = ?", (lease.token,))

    # -- settling -------------------------------------------------------------------------------------

    def complete(self, lock_token: str) -> None:
        with self._transaction() as tx:
            seq, _, _ = self._locked(tx, lock_token, self._clock())
            tx.execute("DELETE FROM messages WHERE seq = ?", (seq,))

    def abandon(self, lock_token: str) -> Disposition:
        """Release the lock for a redelivery, or dead-letter when the deliveries are used up."""
        with self._transaction() as tx:
            now = self._clock()
            seq, queue, delivery_count = self._locked(tx, lock_token, now)
            config = self._config_for(queue)
            if delivery_count >= config.max_delivery_count:
                self._dead_letter(tx, seq, MAX_DELIVERY_COUNT_EXCEEDED, _exceeded(config), now)
                return Disposition.DEAD_LETTERED
            tx.execute(
                "UPDATE messages SET state = 0, lock_token = NULL, locked_until = NULL, session_lock = NULL "
                "WHERE seq = ?",
                (seq,),
            )
        return Disposition.ABANDONED

    def dead_letter(self, lock_token: str, reason: str, description: str = "") -> None:
        with self._transaction() as tx:
            now = self._clock()
            seq, _, _ = self._locked(tx, lock_token, now)
            self._dead_letter(tx, seq, reason, description, now)

    def renew_lock(self, lock_token: str) -> float:
        """Extend a message lock (on a session queue: the session lock, which covers the message)."""
        with self._transaction() as tx:
            now = self._clock()
            seq, queue, _ = self._locked(tx, lock_token, now)
            until = now + self._config_for(queue).lock_duration
            session_lock = tx.execute("SELECT session_lock FROM messages WHERE seq = ?", (seq,)).fetchone()[0]
            if session_lock is None:
                tx.execute("UPDATE messages SET locked_until = ? WHERE seq = ?", (until, seq))
            else:
                tx.execute("UPDATE sessions SET locked_until = ? WHERE lock_token = ?", (until, session_lock))
                tx.execute("UPDATE messages SET locked_until = ? WHERE session_lock = ?", (until, session_lock))
        return until

    # -- inspection -----------------------------------------------------------------------------------

    def sweep(self) -> None:
        """Apply lock expiries on every queue (redelivery or dead-letter), as receivers do lazily."""
        with self._transaction() as tx:
            now = self._clock()
            names = {r[0] for r in tx.execute("SELECT DISTINCT queue FROM messages WHERE state = 1")}
            names |= {r[0] for r in tx.execute("SELECT DISTINCT queue FROM sessions")}
            names |= {
                r[0]
                for r in tx.execute(
                    "SELECT DISTINCT queue FROM messages "
                    "WHERE expires_at IS NOT NULL AND expires_at <= ? AND state = 0",
                    (now,),
                )
            }
            for name in sorted(names):
                self._sweep(tx, self._config_for(name), now)

    def queue_names(self) -> list[str]:
        conn = self._connection()
        found = {r[0] for r in conn.execute("SELECT DISTINCT queue FROM messages")}
        return sorted(found | set(self._queues))

    def stats(self) -> list[QueueStats]:
        self.sweep()
        with self._transaction("DEFERRED") as tx:
            now = self._clock()
            counts = {
                row[0]: row[1:]
                for row in tx.execute(
                    "SELECT queue, SUM(state = 0 AND visible_at <= ?), SUM(state = 0 AND visible_at > ?), "
                    "SUM(state = 1), SUM(state = 2), COUNT(*) FROM messages GROUP BY queue",
                    (now, now),
                )
            }
            held = dict(tx.execute("SELECT queue, COUNT(*) FROM sessions GROUP BY queue").fetchall())
        out = []
        for name in sorted(set(counts) | set(self._queues)):
            active, scheduled, locked, dead, total = counts.get(name, (0, 0, 0, 0, 0))
            out.append(
                QueueStats(
                    queue=name,
                    sessions=self._config_for(name).sessions,
                    active=int(active or 0),
                    scheduled=int(scheduled or 0),
                    locked=int(locked or 0),
                    dead_lettered=int(dead or 0),
                    total=int(total or 0),
                    sessions_locked=int(held.get(name, 0)),
                )
            )
        return out

    def peek(self, queue: str | None = None, limit: int | None = 10) -> list[StoredMessage]:
        """Messages not dead-lettered, oldest first, without locking them."""
        return self._select("state != 2", queue, limit)

    def messages(self, queue: str | None = None) -> list[StoredMessage]:
        """Every message not dead-lettered (active, scheduled, locked), oldest first."""
        return self._select("state != 2", queue, None)

    def dead_letters(self, queue: str | None = None, limit: int | None = None) -> list[StoredMessage]:
        return self._select("state = 2", queue, limit)

    def resubmit(self, queue: str | None = None, message_id: str | None = None) -> int:
        """Move dead-lettered messages back to the end of their queue, delivery count reset.

        Like Service Bus Explorer's resubmit, the message gets a new sequence number and enqueue
        time; unlike a fresh send, duplicate detection does not apply. Returns how many moved.
        """
        self.sweep()
        where, params = "state = 2", []
        if queue is not None:
            where += " AND queue = ?"
            params.append(queue)
        if message_id is not None:
            where += " AND message_id = ?"
            params.append(message_id)
        with self._transaction() as tx:
            now = self._clock()
            moved = tx.execute(
                "INSERT INTO messages(queue, message_id, session_id, properties, body, enqueued_at, visible_at, "  # noqa: S608 - constant fragments
                "correlation_id, reply_to, reply_to_session_id, time_to_live, expires_at) "
                "SELECT queue, message_id, session_id, properties, body, ?, ?, correlation_id, reply_to, "
                "reply_to_session_id, time_to_live, CASE WHEN time_to_live IS NULL THEN NULL ELSE ? + time_to_live END "
                f"FROM messages WHERE {where} ORDER BY seq",
                (now, now, now, *params),
            ).rowcount
            tx.execute(f"DELETE FROM messages WHERE {where}", params)  # noqa: S608 - constant fragments
        return moved

    # -- internals --------------------------------------------------------------------------------------

    def _select(self, where: str, queue: str | None, limit: int | None) -> list[StoredMessage]:
        self.sweep()
        params: list[object] = []
        if queue is not None:
            where += " AND queue = ?"
            params.append(queue)
        sql = f"SELECT {_COLUMNS} FROM messages WHERE {where} ORDER BY seq"  # noqa: S608 - constant fragments
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [_message(r) for r in self._connection().execute(sql, params)]

    def _session_config(self, queue: str) -> QueueConfig:
        config = self.config(queue)
        if not config.sessions:
            raise LocalQueueError(f"queue {queue!r} has no sessions: use receive()")
        return config

    def _lock_session(self, tx: sqlite3.Connection, config: QueueConfig, session_id: str, now: float) -> SessionLease:
        until = now + config.lock_duration
        token = tx.execute(
            f"INSERT INTO sessions(queue, session_id, lock_token, locked_until) VALUES (?, ?, {_RANDOM_HEX}, ?) "  # noqa: S608 - constant fragments
            "RETURNING lock_token",
            (config.name, session_id, until),
        ).fetchone()[0]
        return SessionLease(config.name, session_id, token, until)

    def _session_held(self, tx: sqlite3.Connection, lease: SessionLease, now: float) -> None:
        row = tx.execute("SELECT locked_until FROM sessions WHERE lock_token = ?", (lease.token,)).fetchone()
        if row is None or row[0] <= now:
            raise LockLostError(f"session {lease.session_id!r} on {lease.queue!r}: session lock lost")

    def _locked(self, tx: sqlite3.Connection, lock_token: str, now: float) -> tuple[int, str, int]:
        row = tx.execute(
            "SELECT seq, queue, delivery_count, locked_until FROM messages WHERE lock_token = ? AND state = 1",
            (lock_token,),
        ).fetchone()
        if row is None or row[3] <= now:
            raise LockLostError(f"lock {lock_token} expired or unknown")
        return int(row[0]), str(row[1]), int(row[2])

    def _dead_letter(self, tx: sqlite3.Connection, seq: int, reason: str, description: str, now: float) -> None:
        tx.execute(
            "UPDATE messages SET state = 2, lock_token = NULL, locked_until = NULL, session_lock = NULL, "
            "dead_letter_reason = ?, dead_letter_description = ?, dead_lettered_at = ? WHERE seq = ?",
            (reason[:_MAX_DEAD_LETTER_TEXT], description[:_MAX_DEAD_LETTER_TEXT], now, seq),
        )

    def _sweep(self, tx: sqlite3.Connection, config: QueueConfig, now: float) -> None:
        """Expired locks: back to the queue, or to the dead-letter queue when deliveries are used up; then
        expired messages."""
        self._return(tx, config, now, "queue = ? AND state = 1 AND locked_until <= ?", (config.name, now))
        tx.execute("DELETE FROM sessions WHERE queue = ? AND locked_until <= ?", (config.name, now))
        self._expire(tx, config, now)

    def _expire(self, tx: sqlite3.Connection, config: QueueConfig, now: float) -> None:
        """Messages past their time to live (not locked): dead-lettered or deleted, as the queue says."""
        where = "queue = ? AND expires_at IS NOT NULL AND expires_at <= ? AND state = 0"
        if config.dead_letter_on_expiration:
            n = tx.execute(
                "UPDATE messages SET state = 2, dead_letter_reason = ?, dead_letter_description = ?, "  # noqa: S608 - constant fragments
                f"dead_lettered_at = ? WHERE {where}",
                (TTL_EXPIRED, "The message expired and was dead lettered.", now, config.name, now),
            ).rowcount
        else:
            n = tx.execute(f"DELETE FROM messages WHERE {where}", (config.name, now)).rowcount  # noqa: S608
        if n:
            self.expired += n
            log.info("local queue %s: %d message(s) expired on %s", self.path, n, config.name)

    # -- polling (receivers that wait for messages other processes send) -------------------------------

    def data_version(self) -> int:
        """SQLite's `PRAGMA data_version`: changes whenever another connection committed to the file."""
        return int(self._connection().execute("PRAGMA data_version").fetchone()[0])

    def poll_session(self, lease: SessionLease, known_version: int | None = None) -> tuple[int, StoredMessage | None]:
        """`receive_from_session(lease)` when it may find something, without a write lock otherwise.

        Returns the file's data version (read first) and the message, if any. With `known_version` (the
        version an earlier empty poll returned) nothing is read while no other connection committed; then a
        read-only look for an available message comes before the write transaction of a receive. A poller
        thus costs the writers nothing while its session stays empty."""
        conn = self._connection()
        version = int(conn.execute("PRAGMA data_version").fetchone()[0])
        if known_version is not None and version == known_version:
            return version, None
        now = self._clock()
        found = conn.execute(
            "SELECT 1 FROM messages WHERE queue = ? AND session_id = ? AND state = 0 AND visible_at <= ? "
            "AND (expires_at IS NULL OR expires_at > ?) LIMIT 1",
            (lease.queue, lease.session_id, now, now),
        ).fetchone()
        if found is None:
            self._session_held_now(lease)
            return version, None
        return version, self.receive_from_session(lease)

    def _session_held_now(self, lease: SessionLease) -> None:
        row = (
            self._connection()
            .execute("SELECT locked_until FROM sessions WHERE lock_token = ?", (lease.token,))
            .fetchone()
        )
        if row is None or row[0] <= self._clock():
            raise LockLostError(f"session {lease.session_id!r} on {lease.queue!r}: session lock lost")

    def _return(
        self, tx: sqlite3.Connection, config: QueueConfig, now: float, where: str, params: tuple[object, ...]
    ) -> None:
        tx.execute(
            "UPDATE messages SET state = 2, lock_token = NULL, locked_until = NULL, session_lock = NULL, "  # noqa: S608 - constant fragments
            "dead_letter_reason = ?, dead_letter_description = ?, dead_lettered_at = ? "
            f"WHERE state = 1 AND {where} AND delivery_count >= ?",
            (MAX_DELIVERY_COUNT_EXCEEDED, _exceeded(config), now, *params, config.max_delivery_count),
        )
        tx.execute(
            "UPDATE messages SET state = 0, lock_token = NULL, locked_until = NULL, session_lock = NULL "  # noqa: S608 - constant fragments
            f"WHERE state = 1 AND {where}",
            params,
        )


def _set_wal(conn: sqlite3.Connection, busy_timeout: float) -> None:
    """`PRAGMA journal_mode=WAL`, retried: on a new file, two processes (the worker and the functions host)
    opening at once can find it locked, and SQLite's busy handler does not cover a journal-mode change."""
    deadline = time.monotonic() + busy_timeout
    delay = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


def check_store_file(path: Path, *, creating: bool = False) -> None:
    """Raise `NotAQueueError` unless `path` is a relaybus queue file. Read-only: changes nothing.

    A queue file is an SQLite database with relaybus' application id (or, written by an earlier
    version, id 0 with relaybus' tables and schema version). With `creating`, a database with no
    schema at all (application id and user version 0, no tables) is accepted too: the store is
    about to initialise it, and there is nothing in it to lose.

    Nothing is written, not even the `-wal` and `-shm` files a read-only SQLite connection to a WAL
    database creates: when neither exists, no connection has the file open and the main file is the
    whole database, so it is read with `immutable=1` (no locks, no side files)."""
    try:
        if not path.is_file():
            raise NotAQueueError(f"{path} is not a regular file, not a relaybus queue")
        if path.stat().st_size == 0:
            raise NotAQueueError(f"{path} is an empty file, not a relaybus queue")
        with path.open("rb") as f:
            header = f.read(16)
    except OSError as exc:
        raise NotAQueueError(f"{path} cannot be read: {exc.strerror or exc}") from None
    if header != b"SQLite format 3\x00":
        raise NotAQueueError(f"{path} is not an SQLite database, so not a relaybus queue; left unchanged")
    side_files = any(Path(f"{path}{suffix}").exists() for suffix in ("-wal", "-shm", "-journal"))
    uri = path.resolve().as_uri() + ("?mode=ro" if side_files else "?mode=ro&immutable=1")
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=2.0, isolation_level=None)
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            columns = {row[1] for row in conn.execute("PRAGMA table_info(messages)")}
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise NotAQueueError(f"{path} cannot be read as a relaybus queue ({exc}); left unchanged") from None
    if app_id == APPLICATION_ID:
        return
    if app_id == 0 and tables >= _QUEUE_TABLES and columns >= _MESSAGE_COLUMNS and version >= 1:
        return  # written by an earlier version
    if creating and app_id == 0 and version == 0 and not tables:
        return  # a blank database, e.g. left by a crash before the schema's first commit
    if app_id != 0:
        raise NotAQueueError(
            f"{path} is another application's SQLite database (application_id {app_id:#x}): "
            "not a relaybus queue, left unchanged"
        )
    what = "an SQLite database with no tables" if not tables else "an SQLite database without relaybus' queue tables"
    raise NotAQueueError(f"{path} is {what}: not a relaybus queue, left unchanged")


def check_message(
    queues: Mapping[str, QueueConfig], message: QueueMessage, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> None:
    """Raise `PermanentPublishError` for a message no retry could store (pure)."""
    config = queues.get(message.queue)
    if config is None:
        raise PermanentPublishError(f"local queue {message.queue!r} does not exist (message {message.message_id})")
    if config.sessions and not message.session_id:
        raise PermanentPublishError(f"queue {message.queue!r} requires a SessionId (message {message.message_id})")
    if len(message.body) > max_bytes:
        raise PermanentPublishError(
            f"message {message.message_id} is {len(message.body)} bytes, over the {max_bytes}-byte limit"
        )


def _exceeded(config: QueueConfig) -> str:
    return f"Message could not be consumed after {config.max_delivery_count} delivery attempts."


def _load_queues(tx: sqlite3.Connection) -> dict[str, QueueConfig]:
    return {
        row[0]: QueueConfig(
            row[0],
            bool(row[1]),
            int(row[2]),
            float(row[3]),
            float(row[4]),
            None if row[5] is None else float(row[5]),
            bool(row[6]),
        )
        for row in tx.execute(
            "SELECT name, sessions, max_delivery_count, lock_duration, duplicate_detection_window, time_to_live, "
            "dead_letter_on_expiration FROM queues"
        )
    }


def _migrate(tx: sqlite3.Connection) -> None:
    """Bring a file of an earlier schema to this one in place (columns added, nothing rewritten)."""
    for table, column, declaration in _MIGRATIONS:
        present = {row[1] for row in tx.execute(f"PRAGMA table_info({table})")}
        if column not in present:
            tx.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")


def _effective_ttl(message_ttl: float | None, queue_ttl: float | None) -> float | None:
    """A message lives its own time to live, at most the queue's default (Service Bus' rule)."""
    if message_ttl is not None and message_ttl <= 0:
        message_ttl = None
    if message_ttl is None:
        return queue_ttl
    return message_ttl if queue_ttl is None else min(message_ttl, queue_ttl)


def _properties(raw: Any, seq: Any, queue: Any) -> dict[str, str]:
    """The stored application properties; a row another tool wrote badly reads as {} (and a warning)."""
    try:
        value = json.loads(raw)
    except (TypeError, ValueError, RecursionError):
        value = None
    if not isinstance(value, dict):
        log.warning("message seq=%s queue=%s: application properties are not a JSON object, read as {}", seq, queue)
        return {}
    return {str(k): v if isinstance(v, str) else compact(v) for k, v in value.items()}


def _message(row: Any) -> StoredMessage:
    (queue, seq, message_id, session_id, properties, body, enqueued_at, visible_at, delivery_count, state) = row[:10]
    (lock_token, locked_until, dl_reason, dl_description, dl_at) = row[10:15]
    (correlation_id, reply_to, reply_to_session_id, ttl, expires_at, scheduled_at) = row[15:21]
    return StoredMessage(
        queue=str(queue),
        sequence_number=int(seq),
        message_id=str(message_id),
        session_id=None if session_id is None else str(session_id),
        application_properties=_properties(properties, seq, queue),
        body=body if isinstance(body, bytes) else str(body).encode(),
        enqueued_at=float(enqueued_at),
        available_at=float(visible_at),
        delivery_count=int(delivery_count),
        state=MessageState(state),
        lock_token=None if lock_token is None else str(lock_token),
        locked_until=None if locked_until is None else float(locked_until),
        dead_letter_reason=None if dl_reason is None else str(dl_reason),
        dead_letter_description=None if dl_description is None else str(dl_description),
        dead_lettered_at=None if dl_at is None else float(dl_at),
        correlation_id=_text(correlation_id),
        reply_to=_text(reply_to),
        reply_to_session_id=_text(reply_to_session_id),
        time_to_live=None if ttl is None else float(ttl),
        expires_at=None if expires_at is None else float(expires_at),
        scheduled_at=None if scheduled_at is None else float(scheduled_at),
    )


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
