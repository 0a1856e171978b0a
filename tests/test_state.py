"""The state store (functions.state): one behaviour suite run against both backends.

`table` is `TableStateStore` against a real Azurite (azurite@3.35.0 from npm, started once per session on a
loopback port, tests/azurite.py); `local` is `LocalStateStore` on an SQLite file. Both take the same fake
clock, so TTLs are tested without waiting. Concurrency is tested with two independent stores (two table
clients, two SQLite connections) racing over the same entries.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from devstack.azurite import (
    ACCOUNT_KEY,
    Azurite,
    AzuriteError,
    NodeMissing,
    install,
    installed,
    node_tools,
    start_for_dev,
)
from functions.settings import FunctionSettings
from functions.state import (
    MAX_VALUE_CHARS,
    ConflictError,
    EntryTooLarge,
    StateError,
    StateStore,
    describe,
    state_store,
)
from functions.state.helpers import ConversationState, State, UserState
from functions.state.local import LocalStateStore
from functions.state.references import ConversationReference
from shared.envelope import Platform
from shared.errors import ConfigurationError
from tests.azurite import running_azurite

ROOT = Path(__file__).resolve().parent.parent

# the first test that needs Azurite installs it (npm ci, once per cache) inside its own timeout
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    yield from running_azurite()


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Backend:
    """Makes stores of one backend over one shared place (a table, a file), so tests can race two."""

    def __init__(self, kind: str, tmp_path: Path, clock: Clock, azurite: Azurite | None) -> None:
        self.kind = kind
        self.clock = clock
        self.azurite = azurite
        self.table = "t" + secrets.token_hex(8)
        self.path = tmp_path / "state" / "state.db"
        self.stores: list[StateStore] = []

    def store(self) -> StateStore:
        store: StateStore
        if self.kind == "table":
            from functions.state.table import TableStateStore

            assert self.azurite is not None
            store = TableStateStore.from_connection_string(self.azurite.connection_string, self.table, clock=self.clock)
        else:
            store = LocalStateStore(self.path, clock=self.clock)
        self.stores.append(store)
        return store

    async def raw_exists(self, partition: str, key: str) -> bool:
        """Whether the entry is still stored (expired or not), looked at beneath the store."""
        if self.kind == "table":
            from azure.core.exceptions import ResourceNotFoundError
            from azure.data.tables.aio import TableClient

            from functions.state.table import table_key

            assert self.azurite is not None
            async with TableClient.from_connection_string(self.azurite.connection_string, self.table) as client:
                try:
                    await client.get_entity(table_key(partition), table_key(key))
                except ResourceNotFoundError:
                    return False
                return True
        with sqlite3.connect(self.path) as db:
            row = db.execute("SELECT 1 FROM entries WHERE partition = ? AND key = ?", (partition, key)).fetchone()
        return row is not None

    async def close(self) -> None:
        for store in self.stores:
            await store.aclose()


@pytest.fixture(params=["local", "table"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    azurite = request.getfixturevalue("azurite") if request.param == "table" else None
    made = Backend(request.param, tmp_path, Clock(), azurite)
    try:
        yield made
    finally:
        await made.close()


# --- CRUD and ETags ------------------------------------------------------------------------------------


async def test_put_get_delete_round_trip(backend: Backend) -> None:
    store = backend.store()
    assert await store.get("p", "k") is None
    value = {"text": "héllo 😀", "n": 3, "nested": {"list": [1, 2.5, None, True]}}
    etag = await store.put("p", "k", value)
    entry = await store.get("p", "k")
    assert entry is not None
    assert entry.value == value and entry.etag == etag and entry.expires_at is None
    second = await store.put("p", "k", {"n": 4})
    assert second != etag
    entry = await store.get("p", "k")
    assert entry is not None and entry.value == {"n": 4} and entry.etag == second
    await store.delete("p", "k")
    assert await store.get("p", "k") is None
    await store.delete("p", "k")  # deleting nothing is no error


async def test_a_stale_etag_conflicts_and_the_current_one_wins(backend: Backend) -> None:
    store = backend.store()
    first = await store.put("p", "k", {"v": 1})
    second = await store.put("p", "k", {"v": 2}, etag=first)
    with pytest.raises(ConflictError, match="changed since it was read"):
        await store.put("p", "k", {"v": 3}, etag=first)
    entry = await store.get("p", "k")
    assert entry is not None and entry.value == {"v": 2} and entry.etag == second
    with pytest.raises(ConflictError):
        await store.put("p", "gone", {"v": 1}, etag=first)  # an etag for an entry that does not exist
    assert await store.get("p", "gone") is None


async def test_if_not_exists_creates_once(backend: Backend) -> None:
    store = backend.store()
    await store.put("p", "k", {"v": 1}, if_not_exists=True)
    with pytest.raises(ConflictError, match="already exists"):
        await store.put("p", "k", {"v": 2}, if_not_exists=True)
    entry = await store.get("p", "k")
    assert entry is not None and entry.value == {"v": 1}
    with pytest.raises(ValueError, match="exclude"):
        await store.put("p", "k", {"v": 2}, if_not_exists=True, etag=entry.etag)


async def test_star_replaces_any_version_of_an_existing_entry_only(backend: Backend) -> None:
    store = backend.store()
    with pytest.raises(ConflictError, match="does not exist"):
        await store.put("p", "k", {"v": 1}, etag="*")
    assert await store.get("p", "k") is None
    await store.put("p", "k", {"v": 1})
    await store.put("p", "k", {"v": 2})
    await store.put("p", "k", {"v": 3}, etag="*")
    entry = await store.get("p", "k")
    assert entry is not None and entry.value == {"v": 3}


async def test_delete_with_an_etag_deletes_only_that_version(backend: Backend) -> None:
    store = backend.store()
    old = await store.put("p", "k", {"v": 1})
    current = await store.put("p", "k", {"v": 2})
    with pytest.raises(ConflictError):
        await store.delete("p", "k", etag=old)
    assert await store.get("p", "k") is not None
    await store.delete("p", "k", etag=current)
    assert await store.get("p", "k") is None


async def test_partitions_and_keys_with_any_characters_stay_distinct(backend: Backend) -> None:
    store = backend.store()
    keys = ["a/b", "a%2Fb", "a#b?c", "back\\slash", "tab\tnew\nline", "del\x7f", "quote'", "ü€😀", "k" * 1000, "%H00"]
    for i, key in enumerate(keys):
        await store.put(f"part/{key}", key, {"i": i})
    for i, key in enumerate(keys):
        entry = await store.get(f"part/{key}", key)
        assert entry is not None and entry.value == {"i": i}, key
    with pytest.raises(StateError, match="non-empty"):
        await store.put("", "k", {})
    with pytest.raises(StateError, match="at most"):
        await store.get("p", "k" * 1025)


# --- values -------------------------------------------------------------------------------------------------


async def test_entry_size_limit_is_one_table_property(backend: Backend) -> None:
    store = backend.store()
    overhead = len(json.dumps({"v": ""}, separators=(",", ":")))
    await store.put("p", "max", {"v": "x" * (MAX_VALUE_CHARS - overhead)})  # exactly 32,768: stored
    entry = await store.get("p", "max")
    assert entry is not None and len(entry.value["v"]) == MAX_VALUE_CHARS - overhead
    with pytest.raises(EntryTooLarge) as raised:
        await store.put("p", "big", {"v": "secret-ish " + "x" * MAX_VALUE_CHARS})
    assert raised.value.size > MAX_VALUE_CHARS
    assert "secret-ish" not in str(raised.value) and "p/big" in str(raised.value)
    # Table Storage counts UTF-16 code units: an emoji is two
    emoji = (MAX_VALUE_CHARS - overhead) // 2
    await store.put("p", "emoji", {"v": "😀" * emoji})
    with pytest.raises(EntryTooLarge):
        await store.put("p", "emoji", {"v": "😀" * (emoji + 1)})
    entry = await store.get("p", "emoji")
    assert entry is not None and len(entry.value["v"]) == emoji  # the refused write changed nothing
    assert await store.get("p", "big") is None


async def test_values_must_be_json_objects(backend: Backend) -> None:
    store = backend.store()
    for bad in [{"when": datetime.now(UTC)}, {"x": float("nan")}, {"s": {1, 2}}]:
        with pytest.raises(StateError, match="JSON"):
            await store.put("p", "k", bad)
    with pytest.raises(StateError, match="a value is a dict"):
        await store.put("p", "k", [1, 2])  # type: ignore[arg-type]
    assert await store.get("p", "k") is None


# --- TTL ------------------------------------------------------------------------------------------------------


async def test_an_expired_entry_reads_as_absent_and_is_deleted_lazily(backend: Backend) -> None:
    store = backend.store()
    await store.put("p", "k", {"v": 1}, ttl=60)
    backend.clock.advance(59)
    entry = await store.get("p", "k")
    assert entry is not None and entry.expires_at is not None
    assert abs((entry.expires_at - backend.clock.now).total_seconds() - 1) < 0.01
    backend.clock.advance(2)
    assert await backend.raw_exists("p", "k")  # expired, not yet deleted
    assert await store.get("p", "k") is None
    assert not await backend.raw_exists("p", "k")  # the read deleted it


async def test_expired_entries_count_as_absent_for_conditional_writes(backend: Backend) -> None:
    store = backend.store()
    await store.put("p", "k", {"v": 1}, ttl=timedelta(seconds=10))
    backend.clock.advance(11)
    with pytest.raises(ConflictError, match="does not exist"):
        await store.put("p", "k", {"v": 2}, etag="*")
    await store.put("p", "k", {"v": 3}, if_not_exists=True)  # over the expired one, not yet deleted
    entry = await store.get("p", "k")
    assert entry is not None and entry.value == {"v": 3} and entry.expires_at is None
    backend.clock.advance(10**6)
    assert await store.get("p", "k") is not None  # written without a ttl: never expires
    with pytest.raises(ValueError, match="ttl"):
        await store.put("p", "k", {}, ttl=0)


async def test_purge_expired_deletes_only_what_expired(backend: Backend) -> None:
    store = backend.store()
    assert await store.purge_expired() == 0
    await store.put("a", "1", {"v": 1}, ttl=5)
    await store.put("b", "2", {"v": 2}, ttl=5)
    await store.put("a", "3", {"v": 3}, ttl=500)
    await store.put("a", "4", {"v": 4})
    backend.clock.advance(6)
    assert await store.purge_expired() == 2
    assert not await backend.raw_exists("a", "1") and not await backend.raw_exists("b", "2")
    assert await store.get("a", "3") is not None and await store.get("a", "4") is not None


# --- concurrent writers -------------------------------------------------------------------------------------


async def test_two_writers_racing_on_one_etag_exactly_one_wins_each_round(backend: Backend) -> None:
    left, right = backend.store(), backend.store()  # independent clients / connections
    await left.put("race", "k", {"round": 0, "by": None})
    for round_ in range(1, 9):
        a, b = await asyncio.gather(left.get("race", "k"), right.get("race", "k"))
        assert a is not None and b is not None and a.etag == b.etag
        results = await asyncio.gather(
            left.put("race", "k", {"round": round_, "by": "left"}, etag=a.etag),
            right.put("race", "k", {"round": round_, "by": "right"}, etag=b.etag),
            return_exceptions=True,
        )
        won = [r for r in results if isinstance(r, str)]
        lost = [r for r in results if isinstance(r, ConflictError)]
        assert len(won) == 1 and len(lost) == 1, results
        winner = "left" if isinstance(results[0], str) else "right"
        final = await right.get("race", "k")
        assert final is not None and final.value == {"round": round_, "by": winner} and final.etag == won[0]


async def test_two_writers_racing_to_create_one_wins(backend: Backend) -> None:
    left, right = backend.store(), backend.store()
    for i in range(5):
        results = await asyncio.gather(
            left.put("create", str(i), {"by": "left"}, if_not_exists=True),
            right.put("create", str(i), {"by": "right"}, if_not_exists=True),
            return_exceptions=True,
        )
        assert sorted(type(r).__name__ for r in results) == ["ConflictError", "str"], results


async def test_concurrent_updates_through_the_state_helper_lose_nothing(backend: Backend) -> None:
    ref = ConversationReference(Platform.TEAMS, "19:abc@thread.tacv2", user_id="29:u")
    left = ConversationState(backend.store(), ref, max_attempts=50)
    right = ConversationState(backend.store(), ref, max_attempts=50)

    def add(name: str) -> Any:
        def bump(value: dict[str, Any]) -> None:
            value["count"] = value.get("count", 0) + 1
            value.setdefault("by", []).append(name)

        return bump

    async def run(state: ConversationState, name: str) -> None:
        for _ in range(8):
            await state.update(add(name))

    await asyncio.gather(run(left, "left"), run(right, "right"))
    final = await left.get()
    assert final["count"] == 16
    assert sorted(final["by"]) == ["left"] * 8 + ["right"] * 8


# --- the state helpers ----------------------------------------------------------------------------------


async def test_conversation_and_user_state(backend: Backend) -> None:
    store = backend.store()
    ref = ConversationReference(Platform.SLACK, "C1", user_id="U1")
    conversation, user = ConversationState(store, ref), UserState(store, ref)
    assert await conversation.get() == {} and await user.get() == {}
    await conversation.set({"topic": "billing"})
    assert await conversation.update(lambda d: {**d, "n": 1}) == {"topic": "billing", "n": 1}

    async def later(d: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"visits": d.get("visits", 0) + 1}

    assert await user.update(later) == {"visits": 1}
    assert await user.update(later) == {"visits": 2}
    # the same user in another conversation shares the user state, not the conversation's
    other = ConversationReference(Platform.SLACK, "C2", user_id="U1")
    assert await UserState(store, other).get() == {"visits": 2}
    assert await ConversationState(store, other).get() == {}
    await conversation.clear()
    assert await conversation.get() == {}
    with pytest.raises(ValueError, match="names no user"):
        UserState(store, ConversationReference(Platform.SLACK, "C1"))


async def test_state_helper_ttl(backend: Backend) -> None:
    store = backend.store()
    state = State(store, "ephemeral", "k", ttl=30)
    await state.update(lambda d: {"n": 1})
    backend.clock.advance(31)
    assert await state.get() == {}


async def test_update_gives_up_after_max_attempts_with_a_conflict(backend: Backend) -> None:
    store, intruder = backend.store(), backend.store()
    await store.put("busy", "k", {"n": 0})
    calls = 0

    async def meddle(value: dict[str, Any]) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        await intruder.put("busy", "k", {"n": -calls})  # someone else writes between our read and write
        return {"n": value["n"] + 1}

    pauses: list[float] = []

    async def sleep(delay: float) -> None:
        pauses.append(delay)

    with pytest.raises(ConflictError, match="3 times"):
        await State(store, "busy", "k", max_attempts=3, sleep=sleep).update(meddle)
    assert calls == 3 and len(pauses) == 2
    entry = await store.get("busy", "k")
    assert entry is not None and entry.value == {"n": -3}  # none of the lost updates landed


# --- table specifics ------------------------------------------------------------------------------------------


async def test_table_is_created_on_first_write_and_not_on_read(azurite: Azurite) -> None:
    from azure.data.tables.aio import TableServiceClient

    from functions.state.table import TableStateStore

    name = "auto" + secrets.token_hex(6)
    left = TableStateStore.from_connection_string(azurite.connection_string, name)
    right = TableStateStore.from_connection_string(azurite.connection_string, name)
    async with TableServiceClient.from_connection_string(azurite.connection_string) as service:

        async def tables() -> set[str]:
            return {t.name async for t in service.list_tables()}

        try:
            assert await left.get("p", "k") is None
            await left.delete("p", "k")
            assert name not in await tables()
            # two first writers at once: both create the table (one finds it made), both writes land
            await asyncio.gather(left.put("p", "a", {"v": 1}), right.put("p", "b", {"v": 2}))
            assert name in await tables()
            assert (await right.get("p", "a")) is not None and (await left.get("p", "b")) is not None
        finally:
            await left.aclose()
            await right.aclose()


async def test_table_errors_are_state_errors_without_secrets(azurite: Azurite) -> None:
    from functions.state.table import TableStateStore

    wrong_key = azurite.connection_string.replace(ACCOUNT_KEY, "d3Jvbmcga2V5" * 7 + "AA==")
    store = TableStateStore.from_connection_string(wrong_key, "relaybusstate")
    try:
        with pytest.raises(StateError) as refused:
            await store.put("p", "k", {"v": 1})
        assert "refused" in str(refused.value) and "Storage Table Data Contributor" in str(refused.value)
        assert "d3Jvbmcga2V5" not in str(refused.value)
    finally:
        await store.aclose()
    # nothing listens there: the SDK's retries are bounded, then a StateError naming the endpoint
    closed = azurite.connection_string.replace(str(azurite.port), "1")
    store = TableStateStore.from_connection_string(closed, "relaybusstate", retry_total=0)
    try:
        with pytest.raises(StateError, match=r"127\.0\.0\.1:1/devstoreaccount1") as failed:
            await store.get("p", "k")
        assert ACCOUNT_KEY not in str(failed.value)
    finally:
        await store.aclose()


async def test_table_store_survives_a_new_event_loop(azurite: Azurite) -> None:
    # the functions host may run invocations on another loop: the client is rebuilt there
    from functions.state.table import TableStateStore

    store = TableStateStore.from_connection_string(azurite.connection_string, "loops")
    await store.put("p", "k", {"v": 1})

    def elsewhere() -> dict[str, Any] | None:
        async def read() -> dict[str, Any] | None:
            entry = await store.get("p", "k")
            return None if entry is None else entry.value

        return asyncio.run(read())

    assert await asyncio.to_thread(elsewhere) == {"v": 1}
    await store.aclose()


# --- choosing the backend -----------------------------------------------------------------------------------


async def test_the_settings_choose_the_backend(tmp_path: Path, azurite: Azurite) -> None:
    from functions.state.table import TableStateStore

    local = FunctionSettings.from_env({"RELAYBUS_STATE_PATH": str(tmp_path / "s.db")})
    store = state_store(local)
    assert isinstance(store, LocalStateStore) and store.path == tmp_path / "s.db"
    assert describe(local).startswith("embedded SQLite store")
    assert isinstance(state_store(FunctionSettings.from_env({})), LocalStateStore)

    settings = FunctionSettings.from_env(
        {"RELAYBUS_STATE_CONNECTION": azurite.connection_string, "RELAYBUS_STATE_TABLE": "chosen"}
    )
    table = state_store(settings)
    assert isinstance(table, TableStateStore) and table.table == "chosen"
    try:
        await table.put("p", "k", {"v": 1})
        assert (await table.get("p", "k")) is not None
    finally:
        await table.aclose()
    line = describe(settings)
    assert azurite.table_endpoint in line and "chosen" in line and ACCOUNT_KEY not in line
    dev = describe(FunctionSettings.from_env({"RELAYBUS_STATE_CONNECTION": "UseDevelopmentStorage=true"}))
    assert "http://127.0.0.1:10002/devstoreaccount1" in dev

    azure = FunctionSettings.from_env(
        {"RELAYBUS_STATE_TABLE_ENDPOINT": "https://acct.table.core.windows.net/", "RELAYBUS_STATE_CLIENT_ID": "cid"}
    )
    identity = state_store(azure)
    assert isinstance(identity, TableStateStore)
    assert identity.endpoint == "https://acct.table.core.windows.net" and identity.table == "relaybusstate"
    assert "managed identity" in describe(azure)
    await identity.aclose()  # never connected: nothing to close


@pytest.mark.parametrize(
    ("env", "setting", "needle"),
    [
        ({"RELAYBUS_STATE_CONNECTION": "not a connection string"}, "RELAYBUS_STATE_CONNECTION", "connection string"),
        ({"RELAYBUS_STATE_CONNECTION": "AccountName=a;TableEndpoint=https://a/"}, "RELAYBUS_STATE_CONNECTION", "Key"),
        (
            {"RELAYBUS_STATE_CONNECTION": "AccountName=a;AccountKey=SECRETKEY;TableEndpoint=http://a.example/"},
            "RELAYBUS_STATE_CONNECTION",
            "TableEndpoint must use https",
        ),
        (
            {"RELAYBUS_STATE_TABLE_ENDPOINT": "http://acct.table.core.windows.net"},
            "RELAYBUS_STATE_TABLE_ENDPOINT",
            "https",
        ),
        (
            {"RELAYBUS_STATE_CONNECTION": "UseDevelopmentStorage=true", "RELAYBUS_STATE_TABLE_ENDPOINT": "https://a.b"},
            "RELAYBUS_STATE_TABLE_ENDPOINT",
            "not both",
        ),
        ({"RELAYBUS_STATE_TABLE": "state-table"}, "RELAYBUS_STATE_TABLE", "letters and digits"),
        ({"RELAYBUS_STATE_TABLE": "tables"}, "RELAYBUS_STATE_TABLE", "letters and digits"),
    ],
)
def test_wrong_state_settings_name_the_setting(env: dict[str, str], setting: str, needle: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        FunctionSettings.from_env(env)
    assert raised.value.setting == setting and needle in str(raised.value)
    assert "SECRETKEY" not in str(raised.value)


def test_local_store_refuses_an_unusable_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    store = LocalStateStore(blocker / "state.db")
    with pytest.raises(StateError, match="cannot create its folder"):
        asyncio.run(store.get("p", "k"))


def test_importing_the_function_app_loads_no_table_sdk(tmp_path: Path) -> None:
    # cold start: azure-data-tables (and the store) load on first use of the state store, not at import
    code = (
        "import sys, function_app, functions.state; "
        "print(sorted(m for m in sys.modules if m.startswith(('azure.data', 'functions.state.table'))))"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "RELAYBUS_STATE_CONNECTION": "UseDevelopmentStorage=true"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout


# --- Azurite itself, and what the function app installs -----------------------------------------------------


def test_azurite_for_dev_keeps_its_data_across_restarts(tmp_path: Path, azurite: Azurite) -> None:
    from functions.state.table import TableStateStore

    async def write_then_read(connection: str, write: bool) -> dict[str, Any] | None:
        store = TableStateStore.from_connection_string(connection, "devdata")
        try:
            if write:
                await store.put("p", "k", {"kept": True})
            entry = await store.get("p", "k")
            return None if entry is None else entry.value
        finally:
            await store.aclose()

    for write in (True, False):
        started, line = start_for_dev(tmp_path / "azurite-data", install_if_missing=False)
        assert started is not None, line
        try:
            assert "data in" in line and started.table_endpoint in line
            assert asyncio.run(write_then_read(started.connection_string, write)) == {"kept": True}
        finally:
            started.stop()


def test_only_a_missing_node_skips_and_a_failing_npm_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    node = shutil.which("node")
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(NodeMissing, match="node and npm not found"):
        node_tools()
    with pytest.raises(pytest.skip.Exception, match="Azurite cannot run here"):
        next(running_azurite())
    if node is None:
        return
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "node").symlink_to(node)
    npm = tools / "npm"
    npm.write_text("#!/bin/sh\necho 'npm ERR! code E404 (a registry that says no)' >&2\nexit 1\n")
    npm.chmod(0o755)
    monkeypatch.setenv("PATH", str(tools))
    with pytest.raises(AzuriteError, match=r"npm ci of azurite@3\.35\.0 .* failed \(exit 1\):\n.*E404") as failed:
        install(tmp_path / "cache")
    assert not isinstance(failed.value, NodeMissing)  # a failure, not a reason to skip
    assert not installed(tmp_path / "cache")


def test_the_function_app_requirements_pin_what_the_state_store_needs() -> None:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        requirement = line.split("#")[0].strip()
        if requirement:
            name, _, version = requirement.partition("==")
            pins[name.lower()] = version
    assert pins["azure-data-tables"] and pins["azure-identity"]
    # azure.data.tables.aio and azure.identity.aio send through azure-core's aiohttp transport: without
    # aiohttp installed every Teams token request and table call raises "aiohttp package is not installed"
    uses_aio = [
        path
        for folder in ("functions", "shared")
        for path in (ROOT / folder).rglob("*.py")
        if re.search(r"from azure\.[a-z.]+\.aio import|import azure\.[a-z.]+\.aio", path.read_text())
    ]
    assert uses_aio
    assert pins.get("aiohttp"), f"{[str(p.relative_to(ROOT)) for p in uses_aio]} need aiohttp in requirements.txt"
