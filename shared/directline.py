"""The Direct Line contract both sides share: the bridge's user ids and the conversation directory.

The function side starts Direct Line conversations (for a Slack thread, a Teams conversation) and posts the
chat users' messages; the worker holds each conversation's socket and publishes the agent's answers. What they
share, besides the route `directline_activities`:

- **user ids**: every chat user the bridge speaks for posts as `bridge_user_id(...)` (`relaybus-u-` and a
  stable hash of the platform, team and user: no personal data in the Direct Line conversation). The worker
  publishes only the agent's activities: `from.role == "bot"`, or a sender that is not one of these ids, so the
  bridge's own messages are not echoed back (`is_bridge_user`). Ids starting with `dl_` are reserved by Direct
  Line for ids embedded in tokens, so the prefix is not one of those.
- **the conversation directory** (`DIRECTORY_SCHEMA`): one row per conversation the worker should hold. The
  function side registers a conversation and marks it wanted again on every outgoing message (`want()`), which
  also wakes a parked one; the worker keeps the durable watermark and its lease in the same row. The embedded
  directory is an SQLite file (`DIRECTLINE_STORE_PATH`, default `.relaybus/directline.db`) that both sides
  open on one machine (`make dev`, a single host); across machines the same row lives in a Table Storage
  table (see the worker's `worker.directline.watermarks`).

Pure except `want()`, a single short SQLite transaction (callers in an event loop run it in a thread).
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from pathlib import Path
from typing import Final

USER_ID_PREFIX: Final = "relaybus-u-"
STORE_SETTING: Final = "DIRECTLINE_STORE_PATH"
DEFAULT_STORE_PATH: Final = ".relaybus/directline.db"
DEFAULT_BASE_URL: Final = "https://directline.botframework.com/v3/directline"

DIRECTORY_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS conversations (
    conversation_id TEXT PRIMARY KEY,
    watermark TEXT,
    wanted_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'active',
    ended_reason TEXT,
    owner TEXT,
    lease_until REAL,
    updated_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS conversations_owner ON conversations (owner);
"""
"""`watermark`: the last watermark up to which every activity is durable in the queue (NULL: from the start);
`wanted_at`: the last registration or outgoing message (epoch seconds); `state`: active | ended;
`owner`/`lease_until`: the worker replica holding it and until when (epoch seconds)."""


def bridge_user_id(platform: str, team: str | None, user: str) -> str:
    """The stable Direct Line user id of one chat user (the same user always gets the same id)."""
    digest = hashlib.sha256(f"{platform}|{team or ''}|{user}".encode()).hexdigest()[:32]
    return USER_ID_PREFIX + digest


def is_bridge_user(user_id: object) -> bool:
    return isinstance(user_id, str) and user_id.startswith(USER_ID_PREFIX)


def open_directory(path: str | Path, *, busy_timeout: float = 10.0) -> sqlite3.Connection:
    """A connection to the directory file (created with its folder and schema when missing)."""
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(file, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(DIRECTORY_SCHEMA)
    return conn


def want(path: str | Path, conversation_id: str, now: float | None = None) -> None:
    """Register `conversation_id` with the worker, or mark it wanted again (an outgoing message: a parked
    conversation resumes). An ended conversation stays ended (the service no longer knows it)."""
    if not conversation_id:
        raise ValueError("want(): conversation_id is empty")
    at = time.time() if now is None else now
    conn = open_directory(path)
    try:
        conn.execute(
            "INSERT INTO conversations (conversation_id, wanted_at, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (conversation_id) DO UPDATE SET wanted_at = MAX(wanted_at, excluded.wanted_at), "
            "updated_at = excluded.updated_at",
            (conversation_id, at, at),
        )
    finally:
        conn.close()
