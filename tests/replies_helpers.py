"""Helpers for the synchronous-answer tests: a stand-in for the function side, and a worker on a queue file.

`FunctionPlayer` plays what `functions.triggers` + the outbox do, and nothing more: it reads envelopes from
the local queue file with its own connections (as the local functions host does), asks `answer(envelope)`
for a `Reply` (or None: no answer), and sends it to `envelope.reply_to` (SessionId = the waiting worker's
session, CorrelationId = the envelope's MessageId, the reply queue's TTL). It leaves the envelopes locked
(not completed) so that a test can see them in the queue file at the moment the platform got its answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localqueue import LocalQueueBackend, LocalQueueStore
from shared.envelope import Envelope
from shared.queue_message import QueueMessage
from shared.replies import Reply
from shared.routes import REPLIES, ROUTES
from worker.runtime import Worker
from worker.settings import load_settings

RESPONDING_QUEUES = tuple(route.queue for route in ROUTES if route.responds)

Answer = Callable[[Envelope], "Reply | Awaitable[Reply | None] | None"]


@dataclass
class Sent:
    envelope: Envelope
    reply: Reply | None
    queue: str


@dataclass
class FunctionPlayer:
    path: Path
    answer: Answer
    queues: tuple[str, ...] = RESPONDING_QUEUES
    poll: float = 0.003
    received: list[Envelope] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)
    backend: LocalQueueBackend | None = None

    async def send_reply(
        self, envelope: Envelope, reply: Reply, *, session_id: str | None = None, correlation_id: str | None = None
    ) -> None:
        """Send `reply` where `envelope` says (or to another session, to play a forged one); CorrelationId is the
        reply's own unless `correlation_id` says otherwise."""
        assert envelope.reply_to is not None and self.backend is not None
        await self.backend.send(
            QueueMessage(
                queue=envelope.reply_to.queue,
                message_id=f"reply-{uuid.uuid4().hex}",
                body=reply.to_body(),
                session_id=session_id or envelope.reply_to.session_id,
                correlation_id=correlation_id or reply.correlation_id,
                time_to_live=REPLIES.time_to_live.total_seconds(),
            )
        )

    async def _serve(self) -> None:
        assert self.backend is not None
        while True:
            found = False
            for queue in self.queues:
                for message in await self.backend.receive(queue, 16):
                    found = True
                    envelope = Envelope.from_body(message.body)
                    self.received.append(envelope)
                    asyncio.get_running_loop().create_task(self._answer(envelope, queue))
            if not found:
                await asyncio.sleep(self.poll)

    async def _answer(self, envelope: Envelope, queue: str) -> None:
        result = self.answer(envelope)
        reply = await result if inspect.isawaitable(result) else result
        self.sent.append(Sent(envelope, reply, queue))
        if reply is not None and envelope.reply_to is not None:
            await self.send_reply(envelope, reply)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[FunctionPlayer]:
        self.backend = LocalQueueBackend(self.path)
        await self.backend.open()
        task = asyncio.get_running_loop().create_task(self._serve())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self.backend.close()


def in_queue(path: Path, message_id: str) -> bool:
    """Whether the queue file holds the message now (active or locked), read with a fresh connection."""
    with LocalQueueStore(path, create=False) as store:
        return any(m.message_id == message_id for m in store.messages())


@contextlib.asynccontextmanager
async def worker_on(path: Path, settings: Mapping[str, str]) -> AsyncIterator[Worker]:
    """A worker (in this process) on the local queue file `path` with these settings, until the block ends."""
    env = {"RELAYBUS_LOCAL_QUEUE_PATH": str(path), "RELAYBUS_SHUTDOWN_TIMEOUT_SECONDS": "5", **settings}
    worker = Worker(load_settings(env), serve_http=False)
    stopping = asyncio.Event()
    task = asyncio.get_running_loop().create_task(worker.run(stopping))
    try:
        yield worker
    finally:
        stopping.set()
        result = await asyncio.wait_for(task, 15)
        assert result.ok, result.fatal


def reply(envelope: Envelope, body: dict[str, Any] | None = None, **fields: Any) -> Reply:
    return Reply(correlation_id=envelope.message_id, body=body, **fields)


async def eventually(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """Wait until `predicate()` holds, checking every 5 ms; TimeoutError after `within` seconds."""
    async with asyncio.timeout(within):
        while not predicate():
            await asyncio.sleep(0.005)
