"""The Direct Line directory in Table Storage (`DIRECTLINE_STORE=table`) against a real Azurite: ETag-conditional
claim, renew and advance; the function side's `want` beside the leases; two connectors sharing one table, one of
them dying, the other taking over within the lease time."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.azurite import Azurite
from devstack.sandbox.directline import DirectLineSandbox
from functions.directline import DirectLineBridgeSettings, DirectLineClient
from functions.state.local import LocalStateStore
from shared.directline_table import DirectoryStoreSettings, row_key
from shared.errors import ConfigurationError
from tests.azurite import running_azurite
from tests.directline_helpers import dl_settings, eventually, running, state_of
from worker.directline.settings import DirectLineSettings
from worker.directline.table import TableDirectLineStore
from worker.settings import load_settings


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    yield from running_azurite()


def table_settings(azurite: Azurite) -> dict[str, Any]:
    return {
        "store": "table",
        "table_connection": azurite.connection_string,
        "table_name": "dl" + secrets.token_hex(6),
    }


def test_the_table_store_is_a_setting_and_needs_a_way_in(tmp_path: Path) -> None:
    base = {"DIRECTLINE_SECRET": "s", "RELAYBUS_LOCAL_QUEUE_PATH": str(tmp_path / "q.db")}
    with pytest.raises(ConfigurationError) as info:
        load_settings({**base, "DIRECTLINE_STORE": "table"})
    assert info.value.setting == "DIRECTLINE_STORE"
    with pytest.raises(ConfigurationError) as info:
        load_settings({**base, "DIRECTLINE_STORE": "tables"})
    assert info.value.setting == "DIRECTLINE_STORE"
    settings = load_settings(
        {**base, "DIRECTLINE_STORE": "table", "DIRECTLINE_TABLE_ENDPOINT": "https://acct.table.core.windows.net"}
    )
    assert settings.directline is not None and settings.directline.store == "table"
    assert row_key("a/b#c?d\\e%f\x01") == "a%2Fb%23c%3Fd%5Ce%25f%01"


async def test_claims_renewals_and_watermarks_are_conditional(azurite: Azurite) -> None:
    settings = DirectoryStoreSettings.model_validate(table_settings(azurite))
    a, b = TableDirectLineStore(settings), TableDirectLineStore(settings)
    try:
        now = time.time()
        await a.register("conv/1", now)
        await a.register("conv-2", now + 1)
        assert [r.conversation_id for r in await b.candidates("B", now, 10)] == ["conv/1", "conv-2"]
        claimed = await a.claim("conv/1", "A", now, 5.0)
        assert claimed is not None and claimed.owner == "A"
        assert await b.claim("conv/1", "B", now, 5.0) is None  # held by A
        assert [r.conversation_id for r in await b.candidates("B", now, 10)] == ["conv-2"]
        await b.register("conv/1", now + 2)  # the function side: an outgoing message (merges wanted_at only)
        assert await a.renew("A", now + 1, 5.0) == {"conv/1": now + 2}  # the 412 was re-read: still A's
        assert await a.advance_many("A", [("conv/1", "7")], now + 1) == set()
        assert await b.advance_many("B", [("conv/1", "9")], now + 1) == {"conv/1"}  # not B's
        row = await b.get("conv/1")
        assert row is not None and row.watermark == "7" and row.owner == "A"
        # A stops renewing: after the lease B takes it, and A's next watermark is refused
        later = now + 10
        assert await b.claim("conv/1", "B", later, 5.0) is not None
        assert await a.advance_many("A", [("conv/1", "8")], later) == {"conv/1"}
        assert await a.renew("A", later, 5.0) == {}
        await a.end("A", "conv/1", "not mine", later)  # refused: B holds it
        row = await a.get("conv/1")
        assert row is not None and row.state == "active" and row.owner == "B" and row.watermark == "7"
        await b.end("B", "conv/1", "404 gone", later)
        row = await a.get("conv/1")
        assert row is not None and row.state == "ended" and row.ended_reason == "404 gone" and row.owner is None
        await b.register("conv/1", later)  # an ended conversation stays ended
        assert [r.conversation_id for r in await a.candidates("A", later, 10)] == ["conv-2"]
        await b.claim("conv-2", "B", later, 5.0)
        await b.release("B")
        assert [r.conversation_id for r in await a.candidates("A", later, 10)] == ["conv-2"]
    finally:
        await a.aclose()
        await b.aclose()


async def test_racing_claims_give_each_conversation_to_exactly_one_replica(azurite: Azurite) -> None:
    settings = DirectoryStoreSettings.model_validate(table_settings(azurite))
    stores = [TableDirectLineStore(settings) for _ in range(3)]
    try:
        now = time.time()
        ids = [f"c{i}" for i in range(15)]
        for cid in ids:
            await stores[0].register(cid, now)

        async def claim_all(n: int) -> list[str]:
            got = []
            for cid in ids:
                if await stores[n].claim(cid, f"R{n}", now, 30.0) is not None:
                    got.append(cid)
            return got

        results = await asyncio.gather(*(claim_all(n) for n in range(3)))
        every = [cid for got in results for cid in got]
        assert sorted(every) == sorted(ids)  # each one claimed, none twice
        for n, got in enumerate(results):
            assert set(await stores[n].renew(f"R{n}", now, 30.0)) == set(got)
    finally:
        for store in stores:
            await store.aclose()


async def test_two_connectors_on_one_table_hold_each_conversation_once_and_take_over(
    azurite: Azurite, tmp_path: Path
) -> None:
    async with DirectLineSandbox() as sandbox:
        extra = table_settings(azurite)
        settings: DirectLineSettings = dl_settings(sandbox, tmp_path, lease_seconds=1.5, **extra)
        client = DirectLineClient(
            DirectLineBridgeSettings.model_validate({"secret": sandbox.secret, "base_url": sandbox.base_url, **extra}),
            LocalStateStore(tmp_path / "state.db"),
        )
        try:
            cids = [await client.conversation_for(f"key-{i}") for i in range(6)]  # starts and registers (want)
        finally:
            await client.aclose()
        async with running(settings, owner="A") as a, running(settings, owner="B") as b:
            await eventually(
                lambda: all(state_of(a, c) == "Online" or state_of(b, c) == "Online" for c in cids), within=15
            )
            assert not set(a.connector.conversations) & set(b.connector.conversations)
            assert sandbox.stats.collisions == 0
            survivor, victim = (a, b) if a.connector.conversations else (b, a)
            for cid in cids:
                await sandbox.say(cid, f"before {cid}")
            await eventually(lambda: len(a.texts()) + len(b.texts()) == len(cids), within=10)
            await asyncio.sleep(0.3)  # watermarks flushed
            victim.task.cancel()  # dies: no release, its leases lapse
            with pytest.raises(asyncio.CancelledError):
                await victim.task
            for conversation in list(victim.connector.conversations.values()):
                if conversation._conn is not None:
                    conversation._conn.abort("dead")
            died = time.monotonic()
            await eventually(lambda: len(survivor.connector.conversations) == len(cids), within=10, what="take-over")
            assert time.monotonic() - died < 1.5 + 2.0
            for cid in cids:
                await sandbox.say(cid, f"after {cid}")
            await eventually(lambda: sum(t.startswith("after") for t in survivor.texts()) == len(cids), within=10)
        every = a.texts() + b.texts()
        assert sorted(t for t in every if t.startswith("after")) == sorted(f"after {c}" for c in cids)
