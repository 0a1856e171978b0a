"""`TableDirectLineStore`: the conversation directory (watermarks, leases) in Azure Table Storage, for worker
replicas on several machines (`DIRECTLINE_STORE=table`; the entity layout is `shared.directline_table`).

Every write that decides who holds a conversation is conditional on the entity's ETag (`IfNotModified`):

- `claim`: read the entity; if its lease is free, lapsed or already ours, write `owner`/`lease_until` over that
  version. Two replicas that read the same version: one write wins, the other gets 412 and does not hold it;
- `renew`: for each entity `owner` holds (a query on `owner`), write a later `lease_until` over the version read;
  a 412 (the function side merged a new `wanted_at`, or another replica took a lapsed lease) is re-read: still
  ours → written again, else it is no longer held (the connector lets go of it);
- `advance_many`: the watermark is written over the version last seen (renew's or claim's ETag, re-read on 412)
  only while `owner` is still this replica; otherwise the id is reported lost;
- `release` / `end`: conditional too, so a replica never frees or ends what another one holds.

Failures of the service (network, 5xx, throttling) are `DirectoryError`: the connector keeps its watermarks and
retries, and stops its conversations before its leases could lapse (self-fencing).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from azure.core import MatchConditions
from azure.core.exceptions import AzureError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode

from shared.directline_table import (
    PARTITION,
    DirectoryStoreSettings,
    ensure_table,
    row_key,
    table_client,
    want_in_table,
)
from worker.directline.watermarks import ConversationRow, DirectoryError

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential
    from azure.data.tables.aio import TableClient

T = TypeVar("T")
CONCURRENCY = 32
"""Directory requests in flight at once (renewals and watermark writes of many conversations)."""


class TableDirectLineStore:
    def __init__(self, settings: DirectoryStoreSettings) -> None:
        self.settings = settings
        self._client: TableClient | None = None
        self._credential: AsyncTokenCredential | None = None
        self._etags: dict[str, str] = {}
        self._table_checked = False

    def __repr__(self) -> str:
        return f"TableDirectLineStore(table={self.settings.table_name!r})"

    async def _table(self) -> TableClient:
        if self._client is None:
            self._client, self._credential = table_client(self.settings)
        if not self._table_checked:
            await ensure_table(self._client)
            self._table_checked = True
        return self._client

    async def _run(self, what: str, fn: Callable[[TableClient], Awaitable[T]]) -> T:
        try:
            return await fn(await self._table())
        except (ResourceModifiedError, ResourceNotFoundError):
            raise
        except AzureError as exc:
            message = getattr(exc, "message", None) or type(exc).__name__
            raise DirectoryError(f"direct line directory table {self.settings.table_name}: {what}: {message}") from None

    # --- reads ----------------------------------------------------------------------------------------------

    async def _read(self, conversation_id: str) -> tuple[dict[str, Any], str] | None:
        try:
            entity = await self._run("read", lambda c: c.get_entity(PARTITION, row_key(conversation_id)))
        except ResourceNotFoundError:
            return None
        etag = str(entity.metadata.get("etag") or "")
        self._etags[conversation_id] = etag
        return dict(entity), etag

    async def _query(self, what: str, query: str, parameters: dict[str, Any]) -> list[dict[str, Any]]:
        async def fn(client: TableClient) -> list[dict[str, Any]]:
            found = []
            async for entity in client.query_entities(query, parameters=parameters):
                item = dict(entity)
                item["_etag"] = str(entity.metadata.get("etag") or "")
                found.append(item)
            return found

        return await self._run(what, fn)

    async def get(self, conversation_id: str) -> ConversationRow | None:
        read = await self._read(conversation_id)
        return _row(read[0]) if read is not None else None

    async def candidates(self, owner: str, now: float, limit: int) -> list[ConversationRow]:
        rows = await self._query(
            "candidates",
            "PartitionKey eq @pk and state eq 'active' and lease_until lt @now",
            {"pk": PARTITION, "now": float(now)},
        )
        rows.sort(key=lambda e: float(e.get("wanted_at") or 0.0))
        return [_row(e) for e in rows[:limit]]

    # --- conditional writes -----------------------------------------------------------------------------------

    async def _merge(self, conversation_id: str, etag: str, patch: dict[str, Any]) -> bool:
        """Merge `patch` over the version `etag`; False when the entity changed (412) or is gone."""
        entity = {"PartitionKey": PARTITION, "RowKey": row_key(conversation_id), **patch}
        try:
            answer = await self._run(
                "write",
                lambda c: c.update_entity(
                    entity, mode=UpdateMode.MERGE, etag=etag, match_condition=MatchConditions.IfNotModified
                ),
            )
        except (ResourceModifiedError, ResourceNotFoundError):
            self._etags.pop(conversation_id, None)
            return False
        new = answer.get("etag") if isinstance(answer, dict) else None
        if isinstance(new, str) and new:
            self._etags[conversation_id] = new
        else:
            self._etags.pop(conversation_id, None)
        return True

    async def claim(self, conversation_id: str, owner: str, now: float, lease_seconds: float) -> ConversationRow | None:
        read = await self._read(conversation_id)
        if read is None:
            return None
        entity, etag = read
        holder = str(entity.get("owner") or "")
        free = not holder or holder == owner or float(entity.get("lease_until") or 0.0) < now
        if entity.get("state") != "active" or not free:
            return None
        patch = {"owner": owner, "lease_until": float(now + lease_seconds), "updated_at": float(now)}
        if not await self._merge(conversation_id, etag, patch):
            return None  # another replica (or a want) changed it first: not ours this time
        return _row({**entity, **patch})

    async def renew(self, owner: str, now: float, lease_seconds: float) -> dict[str, float]:
        rows = await self._query(
            "renew", "PartitionKey eq @pk and owner eq @owner and state eq 'active'", {"pk": PARTITION, "owner": owner}
        )
        patch = {"lease_until": float(now + lease_seconds)}

        async def one(entity: dict[str, Any]) -> tuple[str, float] | None:
            cid = str(entity.get("conversation_id") or "")
            if await self._merge(cid, str(entity["_etag"]), patch):
                return cid, float(entity.get("wanted_at") or 0.0)
            again = await self._read(cid)  # a new wanted_at, or taken over: look again, once
            if again is None or str(again[0].get("owner") or "") != owner or again[0].get("state") != "active":
                return None
            if not await self._merge(cid, again[1], patch):
                return None
            return cid, float(again[0].get("wanted_at") or 0.0)

        return dict(item for item in await self._each(rows, one) if item is not None)

    async def advance_many(self, owner: str, watermarks: Sequence[tuple[str, str]], now: float) -> set[str]:
        async def one(pair: tuple[str, str]) -> str | None:
            cid, watermark = pair
            patch = {"watermark": watermark, "updated_at": float(now)}
            etag = self._etags.get(cid)
            for _ in range(3):
                if etag is None:
                    read = await self._read(cid)
                    if read is None or str(read[0].get("owner") or "") != owner:
                        return cid
                    etag = read[1]
                if await self._merge(cid, etag, patch):
                    return None
                etag = None
            return cid

        return {cid for cid in await self._each(list(watermarks), one) if cid is not None}

    async def _each(self, items: Sequence[Any], fn: Callable[[Any], Awaitable[T]]) -> list[T]:
        """`fn` over `items`, at most `CONCURRENCY` requests at a time (one round trip each, not one after another)."""
        gate = asyncio.Semaphore(CONCURRENCY)

        async def gated(item: Any) -> T:
            async with gate:
                return await fn(item)

        return list(await asyncio.gather(*(gated(item) for item in items)))

    async def release(self, owner: str, conversation_ids: Iterable[str] | None = None) -> None:
        if conversation_ids is None:
            rows = await self._query(
                "release", "PartitionKey eq @pk and owner eq @owner", {"pk": PARTITION, "owner": owner}
            )
            ids = [str(e.get("conversation_id") or "") for e in rows]
        else:
            ids = list(conversation_ids)
        for cid in ids:
            read = await self._read(cid)
            if read is not None and str(read[0].get("owner") or "") == owner:
                await self._merge(cid, read[1], {"owner": "", "lease_until": 0.0})

    async def end(self, owner: str, conversation_id: str, reason: str, now: float) -> None:
        read = await self._read(conversation_id)
        if read is None or str(read[0].get("owner") or "") not in ("", owner):
            return
        patch = {"state": "ended", "ended_reason": reason[:500], "owner": "", "lease_until": 0.0, "updated_at": now}
        await self._merge(conversation_id, read[1], patch)

    async def register(self, conversation_id: str, now: float) -> None:
        """The function side's `want` (tests and tools that hold a store)."""
        await self._run("want", lambda c: want_in_table(c, conversation_id, now))

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
        if self._credential is not None:
            await self._credential.close()
            self._credential = None
        await asyncio.sleep(0)


def _row(entity: dict[str, Any]) -> ConversationRow:
    lease = float(entity.get("lease_until") or 0.0)
    owner = str(entity.get("owner") or "") or None
    watermark = entity.get("watermark")
    reason = entity.get("ended_reason")
    return ConversationRow(
        conversation_id=str(entity.get("conversation_id") or ""),
        watermark=watermark if isinstance(watermark, str) and watermark else None,
        wanted_at=float(entity.get("wanted_at") or 0.0),
        state=str(entity.get("state") or "active"),
        ended_reason=reason if isinstance(reason, str) else None,
        owner=owner,
        lease_until=lease if lease else None,
    )
