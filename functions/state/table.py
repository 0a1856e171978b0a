"""`TableStateStore`: the state store on Azure Table Storage (azure-data-tables, async), Azurite locally.

    TableStateStore.with_identity("https://<account>.table.core.windows.net", "relaybusstate", client_id=…)
    TableStateStore.from_connection_string("UseDevelopmentStorage=true", "relaybusstate")   # Azurite

One entity per entry: `PartitionKey` and `RowKey` (the partition and key, escaped: `%`, `/`, `\\`, `#`, `?`
and control characters are percent-encoded, and a key longer than Table Storage's 1 KiB becomes
`%H` + its SHA-256), `value` (the JSON, a string property: at most 32,768 UTF-16 code units, 64 KiB) and,
with a TTL, `expires_at` (Edm.DateTime). ETags are the service's. Table Storage has no TTL of its own:
`expires_at` is compared on read, and `purge_expired()` deletes what expired.

The table is created on the first write that finds it missing (Bicep creates it in Azure, so the function
app's identity needs no right to create tables). The client (and its credential) is created on first use
in the running event loop, and again if the loop changes (as `functions.context.ReplyClients` does).

Errors are translated here: a lost condition is `ConflictError`, an entity the service refuses as too
large is `EntryTooLarge`, anything else (network, 403 without the data role, throttling after the SDK's
own retries) is `StateError` naming the table, the entry and the status.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import quote

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import TableEntity, UpdateMode
from azure.data.tables.aio import TableClient

from functions.state import (
    TTL,
    ConflictError,
    Entry,
    EntryTooLarge,
    StateError,
    check_key,
    check_put,
    decode_value,
    encode_value,
    ttl_seconds,
    utf16_length,
)

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential

T = TypeVar("T")

MAX_TABLE_KEY = 512
"""UTF-16 code units of a PartitionKey or RowKey (1 KiB)."""
_UNSAFE_KEY_CHARS = frozenset("%/\\#?") | {chr(c) for c in range(0x20)} | {chr(c) for c in range(0x7F, 0xA0)}
_ROLE_HINT = "the identity needs the role Storage Table Data Contributor on the table (or its storage account)"
_DEV_TABLE_ENDPOINT = "http://127.0.0.1:10002/devstoreaccount1"
_ODATA_CODE = re.compile(r'"code"\s*:\s*"([A-Za-z]+)"')


def table_key(text: str) -> str:
    """`text` as a PartitionKey or RowKey: unsafe characters percent-encoded, too long ones hashed (injective:
    a literal `%` is always encoded, so `%H…` only comes from hashing)."""
    if any(ch in _UNSAFE_KEY_CHARS for ch in text):
        text = "".join(quote(ch, safe="") if ch in _UNSAFE_KEY_CHARS else ch for ch in text)
    if utf16_length(text) > MAX_TABLE_KEY:
        return "%H" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return text


def connection_endpoint(connection: str) -> str:
    """The table endpoint a connection string names (for messages: no key in it)."""
    if connection.strip().lower() == "usedevelopmentstorage=true":
        return _DEV_TABLE_ENDPOINT
    parts: dict[str, str] = {}
    for item in connection.split(";"):
        name, _, value = item.partition("=")
        parts[name.strip().lower()] = value.strip()
    if parts.get("tableendpoint"):
        return parts["tableendpoint"].rstrip("/")
    protocol = parts.get("defaultendpointsprotocol") or "https"
    suffix = parts.get("endpointsuffix") or "core.windows.net"
    return f"{protocol}://{parts.get('accountname', '?')}.table.{suffix}"


def _now() -> datetime:
    return datetime.now(UTC)


def _code(exc: AzureError) -> str:
    """The service's error code: decoded by the SDK, or (create_entity re-raises undecoded errors) from the
    `x-ms-error-code` header or the OData error body."""
    code = getattr(exc, "error_code", None)
    if code:
        return str(getattr(code, "value", code))
    response = getattr(exc, "response", None)
    header = getattr(response, "headers", {}).get("x-ms-error-code") if response is not None else None
    if header:
        return str(header)
    match = _ODATA_CODE.search(str(getattr(exc, "message", "") or exc))
    return match.group(1) if match else ""


def _status(exc: AzureError) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


class TableStateStore:
    def __init__(
        self,
        factory: Callable[[], tuple[TableClient, AsyncTokenCredential | None]],
        *,
        table: str,
        endpoint: str,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        """`factory` builds a client (and the credential it owns, closed with it) in the running loop."""
        self.table = table
        self.endpoint = endpoint
        self._factory = factory
        self._clock = clock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: TableClient | None = None
        self._credential: AsyncTokenCredential | None = None

    @classmethod
    def from_connection_string(
        cls, connection: str, table: str, *, clock: Callable[[], datetime] = _now, **client_options: Any
    ) -> TableStateStore:
        """A store over a connection string: Azurite's `UseDevelopmentStorage=true` (or its explicit string)."""

        def factory() -> tuple[TableClient, AsyncTokenCredential | None]:
            try:
                return TableClient.from_connection_string(connection, table_name=table, **client_options), None
            except ValueError as exc:
                raise StateError(f"state table {table}: the connection string cannot be used ({exc})") from None

        return cls(factory, table=table, endpoint=connection_endpoint(connection), clock=clock)

    @classmethod
    def with_identity(
        cls,
        endpoint: str,
        table: str,
        *,
        client_id: str | None = None,
        credential: AsyncTokenCredential | None = None,
        clock: Callable[[], datetime] = _now,
        **client_options: Any,
    ) -> TableStateStore:
        """A store reached with an Entra token: `credential`, else `DefaultAzureCredential` (the managed
        identity `client_id` in Azure; `az login` or environment credentials on a workstation)."""

        def factory() -> tuple[TableClient, AsyncTokenCredential | None]:
            owned: AsyncTokenCredential | None = None
            used = credential
            if used is None:
                from azure.identity.aio import DefaultAzureCredential

                used = owned = DefaultAzureCredential(managed_identity_client_id=client_id)
            return TableClient(endpoint, table_name=table, credential=used, **client_options), owned

        return cls(factory, table=table, endpoint=endpoint.rstrip("/"), clock=clock)

    def __repr__(self) -> str:
        return f"TableStateStore(table={self.table!r}, endpoint={self.endpoint!r})"

    # --- the store ---

    async def get(self, partition: str, key: str) -> Entry | None:
        check_key(partition, key)
        entity = await self._read(partition, key)
        if entity is None:
            return None
        etag = str(entity.metadata.get("etag") or "")
        expires_at = _expiry(entity)
        if expires_at is not None and expires_at <= self._clock():
            await self._delete_version(partition, key, etag)
            return None
        return Entry(decode_value(partition, key, entity.get("value")), etag, expires_at)

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
        entity: dict[str, Any] = {"PartitionKey": table_key(partition), "RowKey": table_key(key), "value": text}
        if seconds is not None:
            entity["expires_at"] = self._clock() + timedelta(seconds=seconds)
        where = f"state {partition}/{key}"
        if if_not_exists:
            return await self._create(partition, key, entity, where)
        if etag is None:
            return await self._call(
                where, "write", lambda c: c.upsert_entity(entity, mode=UpdateMode.REPLACE), create_table=True
            )
        if etag == "*":
            return await self._replace_existing(partition, key, entity, where)
        return await self._replace_version(entity, etag, where)

    async def delete(self, partition: str, key: str, *, etag: str | None = None) -> None:
        check_key(partition, key)
        where = f"state {partition}/{key}"
        pk, rk = table_key(partition), table_key(key)
        if etag is None:
            await self._call(where, "delete", lambda c: c.delete_entity(pk, rk))
            return
        try:
            await self._call(
                where,
                "delete",
                lambda c: c.delete_entity(pk, rk, etag=etag, match_condition=MatchConditions.IfNotModified),
            )
        except ResourceModifiedError:
            raise ConflictError(f"{where} changed since it was read (its etag no longer matches)") from None

    async def purge_expired(self) -> int:
        client = await self._get_client()
        now = self._clock()
        count = 0
        try:
            pages = client.query_entities(
                "expires_at le @now", parameters={"now": now}, select=["PartitionKey", "RowKey", "expires_at"]
            )
            found = [(str(e["PartitionKey"]), str(e["RowKey"]), str(e.metadata.get("etag") or "")) async for e in pages]
        except ResourceNotFoundError:
            return 0
        except AzureError as exc:
            raise self._error(f"state table {self.table}", "purge", exc) from exc
        for pk, rk, etag in found:
            try:
                await client.delete_entity(pk, rk, etag=etag, match_condition=MatchConditions.IfNotModified)
            except ResourceModifiedError:
                continue  # rewritten meanwhile: it lives on
            except AzureError as exc:
                raise self._error(f"state table {self.table}", "purge", exc) from exc
            count += 1
        return count

    async def aclose(self) -> None:
        client, credential, loop = self._client, self._credential, self._loop
        self._client = self._credential = None
        self._loop = None
        if loop is not asyncio.get_running_loop():
            return  # made in another loop, which is gone: its connections went with it
        if client is not None:
            await client.close()
        if credential is not None:
            await credential.close()

    # --- the write paths ---

    async def _create(self, partition: str, key: str, entity: dict[str, Any], where: str) -> str:
        for _ in range(5):
            try:
                return await self._call(where, "create", lambda c: c.create_entity(entity), create_table=True)
            except ResourceExistsError:
                pass
            current = await self._read(partition, key)
            if current is None:
                continue  # deleted meanwhile: create again
            expires_at = _expiry(current)
            if expires_at is None or expires_at > self._clock():
                raise ConflictError(f"{where} already exists") from None
            # expired, so absent: replace exactly that version (another writer may be doing the same)
            try:
                return await self._replace_version(entity, str(current.metadata.get("etag") or ""), where)
            except ConflictError:
                raise ConflictError(f"{where} already exists (written while it expired)") from None
        raise ConflictError(f"{where} is being created and deleted by other writers")

    async def _replace_existing(self, partition: str, key: str, entity: dict[str, Any], where: str) -> str:
        """`etag='*'`: over whatever version is stored, but only while an (unexpired) entry exists."""
        for _ in range(5):
            current = await self._read(partition, key)
            expires_at = _expiry(current) if current is not None else None
            if current is None or (expires_at is not None and expires_at <= self._clock()):
                raise ConflictError(f"{where} does not exist (put with etag='*' replaces an existing entry)")
            try:
                return await self._replace_version(entity, str(current.metadata.get("etag") or ""), where)
            except ConflictError:
                continue  # changed between the read and the write: read it again
        raise ConflictError(f"{where} keeps changing (put with etag='*' lost five times)")

    async def _replace_version(self, entity: dict[str, Any], etag: str, where: str) -> str:
        try:
            return await self._call(
                where,
                "write",
                lambda c: c.update_entity(
                    entity, mode=UpdateMode.REPLACE, etag=etag, match_condition=MatchConditions.IfNotModified
                ),
            )
        except ResourceModifiedError:
            raise ConflictError(f"{where} changed since it was read (its etag no longer matches)") from None
        except ResourceNotFoundError:
            raise ConflictError(f"{where} no longer exists (deleted since it was read)") from None

    # --- transport ---

    async def _get_client(self) -> TableClient:
        loop = asyncio.get_running_loop()
        if self._client is None or loop is not self._loop:
            # a client of another (closed) loop cannot be closed from this one: drop it
            self._client, self._credential = self._factory()
            self._loop = loop
        return self._client

    async def _read(self, partition: str, key: str) -> TableEntity | None:
        where = f"state {partition}/{key}"
        client = await self._get_client()
        try:
            return await client.get_entity(table_key(partition), table_key(key))
        except ResourceNotFoundError:
            return None  # no such entity, or no table yet
        except AzureError as exc:
            raise self._error(where, "read", exc) from exc

    async def _delete_version(self, partition: str, key: str, etag: str) -> None:
        """Lazy expiry: delete the version that expired, not a write that replaced it meanwhile."""
        client = await self._get_client()
        try:
            await client.delete_entity(
                table_key(partition), table_key(key), etag=etag, match_condition=MatchConditions.IfNotModified
            )
        except (ResourceModifiedError, ResourceNotFoundError):
            return
        except AzureError as exc:
            raise self._error(f"state {partition}/{key}", "expire", exc) from exc

    async def _call(
        self,
        where: str,
        what: str,
        operation: Callable[[TableClient], Awaitable[Any]],
        *,
        create_table: bool = False,
    ) -> str:
        """Run `operation`; a missing table is created once (writes only). Returns the new etag ('' for a delete).
        `ResourceExistsError`, `ResourceModifiedError` and an entity's `ResourceNotFoundError` propagate to
        the caller, which knows what they mean; everything else becomes a `StateError`."""
        client = await self._get_client()
        for attempt in range(2):
            try:
                metadata = await operation(client)
            except ResourceNotFoundError as exc:
                if create_table and attempt == 0 and _code(exc) == "TableNotFound":
                    await self._create_table(client)
                    continue
                raise
            except (ResourceExistsError, ResourceModifiedError):
                raise
            except AzureError as exc:
                raise self._error(where, what, exc) from exc
            etag = metadata.get("etag") if isinstance(metadata, Mapping) else None
            return str(etag or "")
        raise StateError(f"{where}: the table {self.table} is missing and could not be created")  # pragma: no cover

    async def _create_table(self, client: TableClient) -> None:
        try:
            await client.create_table()
        except ResourceExistsError:
            return
        except AzureError as exc:
            raise self._error(f"state table {self.table}", "create the table", exc) from exc

    def _error(self, where: str, what: str, exc: AzureError) -> StateError:
        status, code = _status(exc), _code(exc)
        detail = f"{status} {code}".strip() if status is not None or code else type(exc).__name__
        if code in ("EntityTooLarge", "PropertyValueTooLarge", "RequestBodyTooLarge") or status == 413:
            return EntryTooLarge(f"{where}: Table Storage refused the entity as too large ({detail})", 0)
        if isinstance(exc, ClientAuthenticationError) or status == 403:
            return StateError(f"{where}: {what} on table {self.table} was refused ({detail}): {_ROLE_HINT}")
        if isinstance(exc, HttpResponseError):
            return StateError(f"{where}: {what} on table {self.table} failed ({detail})")
        return StateError(f"{where}: {what} on table {self.table} at {self.endpoint} failed ({detail})")


def _expiry(entity: TableEntity) -> datetime | None:
    value = entity.get("expires_at")
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return None
