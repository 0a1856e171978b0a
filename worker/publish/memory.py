"""An in-memory `QueueBackend` for tests and benchmarks of connectors (not durable).

It behaves like a queue that dedupes on MessageId, can be told to fail (to exercise the no-ack path),
and can add latency (to model a network round trip).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from shared.errors import PublishError, TransientPublishError
from worker.publish import QueueMessage


class MemoryBackend:
    def __init__(self, latency: float = 0.0) -> None:
        self.latency = latency
        self.messages: dict[str, list[QueueMessage]] = {}
        self._ids: dict[str, set[str]] = {}
        self.sends = 0
        self.duplicates = 0
        self.failing: Callable[[QueueMessage], PublishError | None] | None = None

    def fail_with(self, error: PublishError | None = None) -> None:
        """Fail every send from now on (None stops failing)."""
        if error is None:
            self.failing = None
        else:
            self.failing = lambda _message: error

    def fail_all(self) -> None:
        self.fail_with(TransientPublishError("memory backend told to fail"))

    def recover(self) -> None:
        self.failing = None

    async def send(self, message: QueueMessage) -> None:
        self.sends += 1
        if self.latency:
            await asyncio.sleep(self.latency)
        if self.failing is not None:
            error = self.failing(message)
            if error is not None:
                raise error
        ids = self._ids.setdefault(message.queue, set())
        if message.message_id in ids:
            self.duplicates += 1
            return
        ids.add(message.message_id)
        self.messages.setdefault(message.queue, []).append(message)

    def all_messages(self) -> list[QueueMessage]:
        return [m for msgs in self.messages.values() for m in msgs]

    def count(self) -> int:
        return sum(len(m) for m in self.messages.values())

    async def close(self) -> None:
        return None
