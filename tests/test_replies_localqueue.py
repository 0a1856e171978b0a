"""The local queue's request/reply fields, time to live, scheduled sends, the reply queue and schema 2."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from localqueue import (
    TTL_EXPIRED,
    LocalQueueBackend,
    LocalQueueStore,
    LockLostError,
    QueueConfig,
    queue_configs,
)
from localqueue.store import SCHEMA_VERSION
from shared.queue_message import QueueMessage
from shared.routes import REPLIES, ROUTES
from tests.conftest_local import ORDERED, PLAIN, FakeClock, test_queues

ROOT = Path(__file__).resolve().parent.parent
REPLY_QUEUE = QueueConfig.from_reply_queue()


def queues_with_replies() -> dict[str, QueueConfig]:
    return {**test_queues(), REPLIES.queue: REPLY_QUEUE}


def reply_message(message_id: str, session: str = "worker-1", ttl: float | None = None) -> QueueMessage:
    return QueueMessage(
        REPLIES.queue,
        message_id,
        b'{"correlation_id":"Ev1"}',
        session_id=session,
        correlation_id="Ev1",
        time_to_live=ttl,
    )


def test_request_reply_fields_are_stored_and_returned(tmp_path: Path) -> None:
    clock = FakeClock()
    with LocalQueueStore(tmp_path / "q.db", queues_with_replies(), clock=clock) as store:
        store.send(
            QueueMessage(
                PLAIN,
                "m1",
                b"{}",
                correlation_id="corr-1",
                reply_to=REPLIES.queue,
                reply_to_session_id="worker-7",
                time_to_live=12.5,
            )
        )
        (message,) = store.receive(PLAIN)
    assert (message.correlation_id, message.reply_to, message.reply_to_session_id) == (
        "corr-1",
        REPLIES.queue,
        "worker-7",
    )
    assert message.time_to_live == 12.5
    assert message.expires_at == clock.now + 12.5
    assert message.scheduled_enqueue_time is None


def test_the_dump_shows_the_new_fields(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    at = datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC)
    with LocalQueueStore(path, queues_with_replies()) as store:
        store.send(QueueMessage(PLAIN, "m1", b"{}", correlation_id="c", reply_to="r", reply_to_session_id="s"))
        store.send(QueueMessage(PLAIN, "m2", b"{}", scheduled_enqueue_time=at, time_to_live=60))
    proc = subprocess.run(
        [sys.executable, "-m", "worker", "queue", "--path", str(path), "dump"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    first, second = (json.loads(line) for line in proc.stdout.splitlines())
    assert (first["correlation_id"], first["reply_to"], first["reply_to_session_id"]) == ("c", "r", "s")
    assert "time_to_live" not in first and "scheduled_enqueue_time" not in first
    assert second["scheduled_enqueue_time"] == at.isoformat() == second["scheduled_for"]
    assert second["time_to_live"] == 60
    assert second["expires_at"] == (at + timedelta(seconds=60)).isoformat()  # from when it becomes available


def test_an_expired_message_is_never_delivered_and_the_reply_queue_deletes_it(tmp_path: Path) -> None:
    clock = FakeClock()
    with LocalQueueStore(tmp_path / "q.db", queues_with_replies(), clock=clock) as store:
        store.send(reply_message("r1"))  # the queue's TTL (30 s) applies
        store.send(reply_message("r2", ttl=5))
        store.send(reply_message("r3", ttl=3600))  # at most the queue's 30 s
        lease = store.accept_session(REPLIES.queue, "worker-1")
        assert lease is not None
        clock.advance(6)
        got = store.receive_from_session(lease)
        assert got is not None and got.message_id == "r1"  # r2 expired first and was skipped
        assert got.time_to_live == REPLIES.time_to_live.total_seconds()
        store.complete(got.lock_token or "")
        clock.advance(25)  # 31 s after the sends, within the session lock the receive renewed
        assert store.receive_from_session(lease) is None  # r3 expired too (the queue's 30 s won)
        assert store.messages(REPLIES.queue) == []
        assert store.dead_letters(REPLIES.queue) == []
        assert store.expired == 2


def test_an_expired_message_of_a_route_queue_is_dead_lettered_as_service_bus_does(tmp_path: Path) -> None:
    clock = FakeClock()
    with LocalQueueStore(tmp_path / "q.db", test_queues(), clock=clock) as store:
        store.send(QueueMessage(PLAIN, "m1", b"{}", time_to_live=10))
        store.send(QueueMessage(PLAIN, "m2", b"{}"))
        clock.advance(11)
        (got,) = store.receive(PLAIN, 10)
        assert got.message_id == "m2"
        (dead,) = store.dead_letters(PLAIN)
    assert dead.message_id == "m1" and dead.dead_letter_reason == TTL_EXPIRED


def test_a_locked_message_does_not_expire_until_its_lock_ends(tmp_path: Path) -> None:
    clock = FakeClock()
    with LocalQueueStore(tmp_path / "q.db", test_queues(lock_duration=30), clock=clock) as store:
        store.send(QueueMessage(PLAIN, "m1", b"{}", time_to_live=5))
        (got,) = store.receive(PLAIN)
        clock.advance(10)
        store.sweep()
        store.complete(got.lock_token or "")  # still held: settles normally
        assert store.expired == 0


def test_inspection_applies_expiry(tmp_path: Path) -> None:
    clock = FakeClock()
    with LocalQueueStore(tmp_path / "q.db", queues_with_replies(), clock=clock) as store:
        store.send(reply_message("r1", ttl=1))
        assert [s.total for s in store.stats() if s.queue == REPLIES.queue] == [1]
        clock.advance(2)
        assert [s.total for s in store.stats() if s.queue == REPLIES.queue] == [0]


def test_send_of_a_scheduled_message_schedules_it(tmp_path: Path) -> None:
    async def main() -> tuple[int, int, float | None]:
        clock = FakeClock()
        async with LocalQueueBackend(tmp_path / "q.db", queues=test_queues(), clock=clock) as backend:
            at = datetime.fromtimestamp(clock.now + 60, UTC)
            await backend.send(QueueMessage(PLAIN, "retry~2", b"{}", scheduled_enqueue_time=at))
            before = len(await backend.receive(PLAIN))
            stats = {s.queue: s for s in await backend.stats()}
            clock.advance(61)
            (got,) = await backend.receive(PLAIN)
            return before, stats[PLAIN].scheduled, got.scheduled_at

    before, scheduled, scheduled_at = asyncio.run(main())
    assert (before, scheduled) == (0, 1)
    assert scheduled_at == FakeClock().now + 60


def test_every_store_built_from_the_route_table_has_the_reply_queue() -> None:
    configs = queue_configs()
    reply = configs[REPLIES.queue]
    assert reply.sessions is True
    assert reply.time_to_live == REPLIES.time_to_live.total_seconds()
    assert reply.dead_letter_on_expiration is False
    assert set(configs) == {*(r.queue for r in ROUTES), REPLIES.queue}
    renamed = queue_configs(queue_settings={REPLIES.setting: "my-replies"})
    assert "my-replies" in renamed and REPLIES.queue not in renamed
    with pytest.raises(ValueError, match="also a route's queue"):
        queue_configs(queue_settings={REPLIES.setting: "slack-events"})
    assert REPLIES.queue not in queue_configs(replies=None)


def test_the_file_records_the_reply_queue_for_other_processes(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    with LocalQueueStore(path, queue_configs()):
        pass
    with LocalQueueStore(path, create=False) as reader:  # the CLI: no configuration given
        assert reader.config(REPLIES.queue) == QueueConfig.from_reply_queue()


def test_poll_session_costs_nothing_until_another_connection_writes(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    with LocalQueueStore(path, queues_with_replies()) as poller, LocalQueueStore(path) as sender:
        lease = poller.accept_session(REPLIES.queue, "worker-1")
        assert lease is not None
        version, got = poller.poll_session(lease)
        assert got is None
        assert poller.poll_session(lease, version) == (version, None)
        sender.send(reply_message("r1", session="worker-2"))  # someone else's session
        version2, got = poller.poll_session(lease, version)
        assert version2 != version and got is None
        sender.send(reply_message("r2"))
        _, got = poller.poll_session(lease, version2)
        assert got is not None and got.message_id == "r2" and got.correlation_id == "Ev1"
        poller.release_session(lease)
        with pytest.raises(LockLostError):
            poller.poll_session(lease)


V1_SCHEMA = (
    "CREATE TABLE queues (name TEXT PRIMARY KEY, sessions INTEGER NOT NULL, max_delivery_count INTEGER NOT NULL, "
    "lock_duration REAL NOT NULL, duplicate_detection_window REAL NOT NULL) WITHOUT ROWID",
    "CREATE TABLE messages (seq INTEGER PRIMARY KEY AUTOINCREMENT, queue TEXT NOT NULL, message_id TEXT NOT NULL, "
    "session_id TEXT, properties TEXT NOT NULL, body BLOB NOT NULL, enqueued_at REAL NOT NULL, "
    "visible_at REAL NOT NULL, delivery_count INTEGER NOT NULL DEFAULT 0, state INTEGER NOT NULL DEFAULT 0, "
    "lock_token TEXT, locked_until REAL, session_lock TEXT, dead_letter_reason TEXT, "
    "dead_letter_description TEXT, dead_lettered_at REAL)",
    "CREATE INDEX messages_by_state ON messages(queue, state, seq)",
    "CREATE TABLE dedupe (queue TEXT NOT NULL, message_id TEXT NOT NULL, expires_at REAL NOT NULL, "
    "PRIMARY KEY (queue, message_id)) WITHOUT ROWID",
    "CREATE TABLE sessions (queue TEXT NOT NULL, session_id TEXT NOT NULL, lock_token TEXT NOT NULL, "
    "locked_until REAL NOT NULL, PRIMARY KEY (queue, session_id)) WITHOUT ROWID",
    "INSERT INTO queues VALUES ('plain', 0, 3, 30.0, 60.0)",
    "INSERT INTO messages(queue, message_id, session_id, properties, body, enqueued_at, visible_at) "
    "VALUES ('plain', 'old-1', NULL, '{\"kind\":\"test\"}', X'7B7D', 1700000000.0, 1700000000.0)",
    "PRAGMA user_version=1",
    "PRAGMA application_id=1380076625",
)


def test_a_schema_1_file_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path)
    for statement in V1_SCHEMA:
        conn.execute(statement)
    conn.commit()
    conn.close()
    with LocalQueueStore(path, create=False) as store:  # what the CLI (or an upgraded worker) opens
        (old,) = store.messages(PLAIN)
        assert old.message_id == "old-1" and old.correlation_id is None and old.time_to_live is None
        assert store.config(PLAIN).time_to_live is None and store.config(PLAIN).dead_letter_on_expiration
    with LocalQueueStore(path, queues_with_replies()) as store:
        store.send(QueueMessage(PLAIN, "new-1", b"{}", correlation_id="c", time_to_live=30))
        old, new = store.receive(PLAIN, 5)
        assert (old.message_id, new.message_id, new.correlation_id, new.time_to_live) == ("old-1", "new-1", "c", 30)
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
        columns = {row[1] for row in conn.execute("PRAGMA table_info(messages)")}
        assert {"correlation_id", "reply_to", "reply_to_session_id", "time_to_live", "expires_at"} <= columns
        assert conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 2
    finally:
        conn.close()


def test_a_file_of_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    with LocalQueueStore(path, test_queues()):
        pass
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version=3")
    conn.commit()
    conn.close()
    with pytest.raises(Exception, match="newer than this code"), LocalQueueStore(path, create=False) as store:
        store.messages()


def test_session_queues_still_need_a_session_id_for_replies(tmp_path: Path) -> None:
    from shared.errors import PermanentPublishError

    async def main() -> None:
        async with LocalQueueBackend(tmp_path / "q.db", queues=queues_with_replies()) as backend:
            with pytest.raises(PermanentPublishError, match="requires a SessionId"):
                await backend.send(QueueMessage(REPLIES.queue, "r", b"{}"))
            await backend.send(QueueMessage(ORDERED, "o", b"{}", session_id="s", correlation_id="c"))

    asyncio.run(main())
