"""The Direct Line conversation directory in Azure Table Storage: what both sides share when the worker replicas
and the function app run on different machines (Azure), instead of the SQLite file of `shared.directline`.

Selected by `DIRECTLINE_STORE=table` (default `sqlite`), reached with `DIRECTLINE_TABLE_CONNECTION` (a connection
string: Azurite's, or an account key's) or `DIRECTLINE_TABLE_ENDPOINT` (`https://<account>.table.core.windows.net`)
with the managed identity `DIRECTLINE_TABLE_CLIENT_ID` (`DefaultAzureCredential`); table `DIRECTLINE_TABLE`
(default `relaybusdirectline`, created on first use).

One entity per conversation: PartitionKey `conversation`, RowKey the conversation id (`row_key`: characters Table
Storage refuses in keys are percent-encoded), properties as the SQLite row (`shared.directline.DIRECTORY_SCHEMA`):
`conversation_id`, `watermark` (absent: from the start), `wanted_at`, `state` (active | ended), `ended_reason`,
`owner` ('' when free) and `lease_until` (0 when free), `updated_at`. The worker writes its lease and watermark
with ETag conditions (`worker.directline.table`); the function side's `want()` creates the entity or merges a new
`wanted_at` (nothing else), so it never disturbs a lease.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential
    from azure.data.tables.aio import TableClient

PARTITION: Final = "conversation"
DEFAULT_TABLE: Final = "relaybusdirectline"
_FORBIDDEN = {"/": "%2F", "\\": "%5C", "#": "%23", "?": "%3F", "%": "%25"}


class DirectoryStoreSettings(BaseModel):
    """Where the conversation directory lives (both the worker's and the function app's settings have these)."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    store: Literal["sqlite", "table"] = Field(default="sqlite", alias="DIRECTLINE_STORE")
    """`sqlite`: the file `DIRECTLINE_STORE_PATH` (one machine); `table`: Azure Table Storage (replicas)."""
    table_connection: SecretStr | None = Field(default=None, alias="DIRECTLINE_TABLE_CONNECTION")
    table_endpoint: str | None = Field(default=None, alias="DIRECTLINE_TABLE_ENDPOINT")
    table_client_id: str | None = Field(default=None, alias="DIRECTLINE_TABLE_CLIENT_ID")
    table_name: str = Field(
        default=DEFAULT_TABLE, min_length=3, max_length=63, pattern=r"^[A-Za-z][A-Za-z0-9]*$", alias="DIRECTLINE_TABLE"
    )

    @model_validator(mode="after")
    def _table_reachable(self) -> DirectoryStoreSettings:
        if self.store == "table" and self.table_connection is None and not self.table_endpoint:
            raise ValueError(
                "DIRECTLINE_STORE is table: set DIRECTLINE_TABLE_CONNECTION "
                "or DIRECTLINE_TABLE_ENDPOINT (with a managed identity)"
            )
        return self


def row_key(conversation_id: str) -> str:
    return "".join(
        _FORBIDDEN.get(ch, ch) if ch in _FORBIDDEN or ord(ch) >= 32 else f"%{ord(ch):02X}" for ch in conversation_id
    )


def table_client(settings: DirectoryStoreSettings) -> tuple[TableClient, AsyncTokenCredential | None]:
    """A client of the directory table (and the credential it owns, to close with it), in the running loop."""
    from azure.data.tables.aio import TableClient

    if settings.table_connection is not None:
        connection = settings.table_connection.get_secret_value()
        return TableClient.from_connection_string(connection, table_name=settings.table_name), None
    from azure.identity.aio import DefaultAzureCredential

    assert settings.table_endpoint is not None  # the validator guarantees one way in
    credential = DefaultAzureCredential(managed_identity_client_id=settings.table_client_id)
    return TableClient(settings.table_endpoint, table_name=settings.table_name, credential=credential), credential


def new_entity(conversation_id: str, now: float) -> dict[str, Any]:
    return {
        "PartitionKey": PARTITION,
        "RowKey": row_key(conversation_id),
        "conversation_id": conversation_id,
        "wanted_at": float(now),
        "state": "active",
        "owner": "",
        "lease_until": 0.0,
        "updated_at": float(now),
    }


async def ensure_table(client: TableClient) -> None:
    """Create the table if it is missing (Azurite, a first run). In Azure the table exists (Bicep) and the identity
    may hold only a data role on it: a refusal (403) to create tables is fine then."""
    from azure.core.exceptions import HttpResponseError, ResourceExistsError

    try:
        await client.create_table()
    except ResourceExistsError:
        pass
    except HttpResponseError as exc:
        if exc.status_code != 403:
            raise


async def want_in_table(client: TableClient, conversation_id: str, now: float | None = None) -> None:
    """`shared.directline.want` for the table: register the conversation, or merge a new `wanted_at`."""
    from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
    from azure.data.tables import UpdateMode

    if not conversation_id:
        raise ValueError("want(): conversation_id is empty")
    at = time.time() if now is None else now
    for attempt in (1, 2):
        try:
            await client.create_entity(new_entity(conversation_id, at))
            return
        except ResourceExistsError:
            patch = {"PartitionKey": PARTITION, "RowKey": row_key(conversation_id), "wanted_at": float(at)}
            await client.update_entity({**patch, "updated_at": float(at)}, mode=UpdateMode.MERGE)
            return
        except ResourceNotFoundError:  # the table itself is missing: create it, once
            if attempt == 2:
                raise
            await ensure_table(client)
