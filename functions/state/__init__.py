"""State for handlers: a small key-value store with ETags and TTLs, on Azure Table Storage or SQLite.

    store = state_store(settings)                      # the backend the settings name (see below)
    entry = await store.get("counters", "C123")        # Entry(value, etag, expires_at) or None
    etag = await store.put("counters", "C123", {"n": 1}, if_not_exists=True)
    etag = await store.put("counters", "C123", {"n": 2}, etag=etag)   # only over that version
    await store.delete("counters", "C123")
    await store.aclose()

Backends (`state_store(settings)` picks one, `describe(settings)` says which):

- `RELAYBUS_STATE_CONNECTION` set (Azurite's `UseDevelopmentStorage=true` or a connection string):
  `TableStateStore` over that account, table `RELAYBUS_STATE_TABLE` (default `relaybusstate`);
- `RELAYBUS_STATE_TABLE_ENDPOINT` set (`https://<account>.table.core.windows.net`, what Azure uses):
  `TableStateStore` with `DefaultAzureCredential` (the user-assigned identity `RELAYBUS_STATE_CLIENT_ID`);
- neither: `LocalStateStore`, an SQLite file (`RELAYBUS_STATE_PATH`, default `.relaybus/state.db`): the
  embedded default of `make dev`. One machine only: never what a function app in Azure should use.

Semantics, the same in every backend (a behaviour suite runs against each, Azurite included):

- a value is a JSON object (a dict of JSON-serialisable values), stored as compact JSON; at most
  `MAX_VALUE_CHARS` (32,768) UTF-16 code units of it, which is Table Storage's 64 KiB limit for one string
  property (an entity holds 1 MiB, but relaybus keeps a value in one property), else `EntryTooLarge`;
- `put(etag=None)` writes whatever is stored (create or replace); `put(etag="*")` replaces the stored
  entry, whatever its version, and raises `ConflictError` when there is none; `put(etag=<etag>)` replaces
  only that version (`ConflictError` when the entry changed or went away); `put(if_not_exists=True)`
  creates the entry (`ConflictError` when one exists);
- `ttl` (seconds or a timedelta) sets `expires_at`: an expired entry reads as absent (`get` returns None,
  `if_not_exists` may create over it) and is deleted lazily, on the read that finds it, or by
  `purge_expired()` (for a timer-triggered function). An etag names a version: writing over that version
  succeeds while it is stored, even if it expired after it was read. A put without `ttl` never expires;
- `delete(etag=...)` deletes only that version (`ConflictError` otherwise); deleting nothing is no error.

Exception tree (all `RelaybusError`):

    StateError                 the store failed (unreachable, refused, not permitted), with the reason
    ├── ConflictError          a conditional write or delete lost: the entry changed, exists, or is gone
    └── EntryTooLarge          the value does not fit one table property (64 KiB, 32,768 UTF-16 units)

Everything is imported on first use: `import functions.state` loads no Azure SDK.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, Protocol

from functions.settings import DEFAULT_STATE_PATH, FunctionSettings
from shared.errors import RelaybusError

if TYPE_CHECKING:
    from functions.state.helpers import ConversationState, UserState
    from functions.state.local import LocalStateStore
    from functions.state.table import TableStateStore

MAX_VALUE_CHARS = 32_768
"""UTF-16 code units of a value's JSON: Table Storage's limit for one string property (64 KiB)."""
MAX_KEY_LENGTH = 1024
"""Characters of a partition or key (the table backend hashes what it cannot store as a key)."""


class StateError(RelaybusError):
    """The state store failed; the message says which entry and why (never the value)."""


class ConflictError(StateError):
    """A conditional write or delete lost: the entry changed since it was read, already exists, or is gone."""


class EntryTooLarge(StateError):
    """A value whose JSON is longer than one Table Storage string property can hold."""

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


@dataclass(frozen=True, slots=True)
class Entry:
    """One stored value, its version (`etag`, for `put(etag=...)`) and when it expires (None: never)."""

    value: dict[str, Any]
    etag: str
    expires_at: datetime | None = None


TTL = float | int | timedelta


class StateStore(Protocol):
    async def get(self, partition: str, key: str) -> Entry | None:
        """The entry, or None when there is none (or it expired)."""
        ...

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
        """Write `value`; returns the new etag. See the module docstring for `etag` and `if_not_exists`."""
        ...

    async def delete(self, partition: str, key: str, *, etag: str | None = None) -> None: ...

    async def purge_expired(self) -> int:
        """Delete every expired entry now; returns how many."""
        ...

    async def aclose(self) -> None: ...


# --- what every backend checks the same way ------------------------------------------------------------


def check_key(partition: object, key: object) -> None:
    for what, text in (("partition", partition), ("key", key)):
        if not isinstance(text, str) or not text:
            raise StateError(f"state {what} must be a non-empty string (got {type(text).__name__})")
        if len(text) > MAX_KEY_LENGTH:
            raise StateError(f"state {what} is {len(text)} characters long (at most {MAX_KEY_LENGTH})")


def encode_value(partition: str, key: str, value: Mapping[str, Any]) -> str:
    """The value as compact JSON; `StateError` when it is no JSON object, `EntryTooLarge` when too long."""
    if not isinstance(value, Mapping):
        raise StateError(f"state {partition}/{key}: a value is a dict (got {type(value).__name__})")
    try:
        text = json.dumps(dict(value), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise StateError(f"state {partition}/{key}: the value is not JSON-serialisable ({exc})") from None
    size = utf16_length(text)
    if size > MAX_VALUE_CHARS:
        raise EntryTooLarge(
            f"state {partition}/{key}: the value is {size:,} UTF-16 code units of JSON; one entry holds at most "
            f"{MAX_VALUE_CHARS:,} (a Table Storage string property, 64 KiB): store less, or split it over keys",
            size,
        )
    return text


def decode_value(partition: str, key: str, text: object) -> dict[str, Any]:
    if not isinstance(text, str):
        raise StateError(f"state {partition}/{key}: the stored value is not text (written by something else?)")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise StateError(
            f"state {partition}/{key}: the stored value is not JSON (written by something else?)"
        ) from None
    if not isinstance(value, dict):
        raise StateError(f"state {partition}/{key}: the stored value is not a JSON object")
    return value


def utf16_length(text: str) -> int:
    """Length in UTF-16 code units (what Table Storage measures): characters beyond the BMP count twice."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def ttl_seconds(ttl: TTL | None) -> float | None:
    if ttl is None:
        return None
    seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else ttl
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"ttl must be a positive number of seconds or a timedelta (got {ttl!r})")
    return float(seconds)


def check_put(etag: str | None, if_not_exists: bool) -> None:
    if if_not_exists and etag is not None:
        raise ValueError("put: if_not_exists and etag exclude each other")
    if etag is not None and (not isinstance(etag, str) or not etag):
        raise ValueError("put: etag is a string from Entry.etag, or '*'")


# --- the backend the settings name ---------------------------------------------------------------------


def state_store(settings: FunctionSettings) -> StateStore:
    """A new store for these settings (the caller owns it: `await store.aclose()`). Connects on first use."""
    if settings.state_connection is not None:
        from functions.state.table import TableStateStore

        return TableStateStore.from_connection_string(
            settings.state_connection.get_secret_value(), settings.state_table
        )
    if settings.state_table_endpoint is not None:
        from functions.state.table import TableStateStore

        return TableStateStore.with_identity(
            settings.state_table_endpoint, settings.state_table, client_id=settings.state_client_id
        )
    from functions.state.local import LocalStateStore

    return LocalStateStore(settings.state_path or DEFAULT_STATE_PATH)


def describe(settings: FunctionSettings) -> str:
    """One line saying which backend `state_store(settings)` uses (no secret in it)."""
    if settings.state_connection is not None:
        from functions.state.table import connection_endpoint

        endpoint = connection_endpoint(settings.state_connection.get_secret_value())
        return f"Azure Table Storage: table {settings.state_table} at {endpoint} (RELAYBUS_STATE_CONNECTION)"
    if settings.state_table_endpoint is not None:
        return (
            f"Azure Table Storage: table {settings.state_table} at {settings.state_table_endpoint} "
            "(managed identity, RELAYBUS_STATE_TABLE_ENDPOINT)"
        )
    return f"embedded SQLite store {settings.state_path or DEFAULT_STATE_PATH} (no RELAYBUS_STATE_CONNECTION set)"


_LAZY = {
    "TableStateStore": "functions.state.table",
    "LocalStateStore": "functions.state.local",
    "ConversationState": "functions.state.helpers",
    "UserState": "functions.state.helpers",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'functions.state' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "MAX_VALUE_CHARS",
    "ConflictError",
    "ConversationState",
    "Entry",
    "EntryTooLarge",
    "LocalStateStore",
    "StateError",
    "StateStore",
    "TableStateStore",
    "UserState",
    "describe",
    "state_store",
]
