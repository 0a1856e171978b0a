"""Helpers for the Direct Line tests: fast settings, a running connector over a real directory file, and a user
that talks to the sandbox's agent over HTTP (as the function side does)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from devstack.sandbox.directline import DirectLineSandbox
from shared.directline import bridge_user_id, want
from shared.envelope import Envelope
from worker.directline.connector import DirectLineConnector
from worker.directline.settings import DirectLineSettings
from worker.directline.watermarks import SqliteDirectLineStore
from worker.handoff import Handoff
from worker.metrics import Metrics
from worker.publish import EnvelopePublisher
from worker.publish.memory import MemoryBackend

QUEUE = "directline-activities"
USER = bridge_user_id("slack", "T0SANDBOX", "U0SANDBOXUSER")

FAST: dict[str, Any] = {
    "tick_seconds": 0.05,
    "scan_seconds": 0.05,
    "lease_seconds": 1.0,
    "flush_seconds": 0.05,
    "reconnect_min_seconds": 0.01,
    "reconnect_max_seconds": 0.05,
    "backoff_cap_seconds": 0.3,
    "ping_interval": 0.2,
    "liveness_timeout": 0.9,
    "open_timeout": 2.0,
    "http_timeout": 2.0,
    "poll_seconds": 0.05,
    "park_poll_seconds": 0.3,
    "idle_park_seconds": 60.0,
    "websocket_retry_seconds": 60.0,
}


def dl_settings(sandbox: DirectLineSandbox, tmp_path: Path, **overrides: Any) -> DirectLineSettings:
    values: dict[str, Any] = {
        "secret": sandbox.secret,
        "base_url": sandbox.base_url,
        "store_path": tmp_path / "directline.db",
        **FAST,
    }
    values.update(overrides)
    return DirectLineSettings(**values)


@dataclass
class Running:
    connector: DirectLineConnector
    backend: MemoryBackend
    handoff: Handoff
    metrics: Metrics
    stopping: asyncio.Event
    task: asyncio.Task[None]

    def envelopes(self) -> list[Envelope]:
        return [Envelope.from_body(m.body) for m in self.backend.messages.get(QUEUE, [])]

    def ids(self) -> list[str]:
        return [m.message_id for m in self.backend.messages.get(QUEUE, [])]

    def texts(self) -> list[str]:
        return [str(e.payload.get("text")) for e in self.envelopes() if e.payload.get("type") == "message"]

    async def stop(self) -> None:
        self.stopping.set()
        async with asyncio.timeout(8):
            await self.task


@contextlib.asynccontextmanager
async def running(
    settings: DirectLineSettings,
    *,
    backend: MemoryBackend | None = None,
    owner: str | None = None,
    clock: Callable[[], float] = time.time,
) -> AsyncIterator[Running]:
    backend = backend or MemoryBackend()
    metrics = Metrics()
    handoff = Handoff(EnvelopePublisher(backend), metrics=metrics)
    connector = DirectLineConnector(settings, handoff, metrics, owner=owner, clock=clock)
    stopping = asyncio.Event()
    task = asyncio.create_task(connector.run(stopping))
    run = Running(connector, backend, handoff, metrics, stopping, task)
    try:
        yield run
    finally:
        if not task.done():
            await run.stop()


async def register(settings: DirectLineSettings, conversation_id: str) -> None:
    await asyncio.to_thread(want, settings.store_path, conversation_id)


async def user_says(
    sandbox: DirectLineSandbox, conversation_id: str, text: str | None = None, *, value: Any = None, user: str = USER
) -> str:
    activity: dict[str, Any] = {"type": "message", "from": {"id": user, "name": "Ada", "role": "user"}}
    if text is not None:
        activity["text"] = text
    if value is not None:
        activity["value"] = value
    async with httpx.AsyncClient() as http:
        answer = await http.post(
            f"{sandbox.base_url}/conversations/{conversation_id}/activities",
            json=activity,
            headers={"Authorization": f"Bearer {sandbox.secret}"},
        )
    answer.raise_for_status()
    return str(answer.json()["id"])


async def eventually(predicate: Callable[[], bool], within: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.01)


async def stored_watermark(settings: DirectLineSettings, conversation_id: str) -> str | None:
    store = SqliteDirectLineStore(settings.store_path)
    try:
        row = await store.get(conversation_id)
    finally:
        await store.aclose()
    return row.watermark if row is not None else None


def state_of(run: Running, conversation_id: str) -> str | None:
    conversation = run.connector.conversations.get(conversation_id)
    return conversation.state if conversation is not None else None


class WallClock:
    """A wall clock the test moves: `frozen` stops it (a frozen worker), `jump` moves it on."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.frozen_at: float | None = None

    def __call__(self) -> float:
        if self.frozen_at is not None:
            return self.frozen_at
        return time.time() + self.offset

    def freeze(self) -> None:
        self.frozen_at = self()

    def thaw(self) -> None:
        self.frozen_at = None

    def jump(self, seconds: float) -> None:
        self.offset += seconds
