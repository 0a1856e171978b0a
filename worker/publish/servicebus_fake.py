"""A fake Service Bus namespace for tests and benchmarks: the `Sender` seam of `ServiceBusBackend` without
a network, built on the SDK's real `ServiceBusMessageBatch` (so encoding costs what it costs in production).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from azure.servicebus import ServiceBusMessage, ServiceBusMessageBatch

from worker.publish.servicebus import DEFAULT_MAX_BATCH_BYTES


class FakeSender:
    """A `Sender` without a network: the SDK's real `ServiceBusMessageBatch`, a simulated round trip per
    `send_messages`, scripted failures. Used by the tests and the benchmarks."""

    def __init__(self, namespace: FakeNamespace, queue: str) -> None:
        self.namespace = namespace
        self.queue = queue
        self.closed = False
        self._in_flight = 0

    async def create_message_batch(self, max_size_in_bytes: int | None = None) -> ServiceBusMessageBatch:
        ns = self.namespace
        if ns.create_failures:
            raise ns.create_failures.pop(0)
        if max_size_in_bytes and max_size_in_bytes > ns.link_max_batch_bytes:  # as the SDK does
            raise ValueError(f"Max message size: {max_size_in_bytes} is too large")
        return ServiceBusMessageBatch(max_size_in_bytes=max_size_in_bytes or ns.link_max_batch_bytes)

    async def send_messages(
        self,
        message: ServiceBusMessageBatch,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the SDK's signature)
    ) -> None:
        ns = self.namespace
        if self.closed:
            raise ValueError("The handler has already been shutdown.")
        self._in_flight += 1
        ns.max_concurrent_sends = max(ns.max_concurrent_sends, self._in_flight)
        try:
            ns.send_calls += 1
            if ns.latency:
                await asyncio.sleep(ns.latency)
            if ns.send_failures:
                raise ns.send_failures.pop(0)
            ns.batches += 1
            ns.count += len(message)
            if ns.record:
                ns.sent.append(SentBatch(self.queue, message))
        finally:
            self._in_flight -= 1

    async def close(self) -> None:
        self.closed = True


@dataclass(frozen=True, slots=True)
class SentBatch:
    """A batch the fake accepted."""

    queue: str
    batch: ServiceBusMessageBatch

    @property
    def messages(self) -> list[ServiceBusMessage]:
        return list(self.batch._messages)


class FakeNamespace:
    """Fake senders sharing one record of what was sent; `sender_factory` is the backend's seam.

    `latency` is the simulated round trip of one `send_messages`; exceptions put in `send_failures`
    (`create_failures`) are raised by the next `send_messages` (`create_message_batch`) calls, one each.
    Accepted batches are kept in `sent` unless `record` is false (benchmarks: counts only).
    """

    def __init__(
        self, latency: float = 0.0, link_max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES, *, record: bool = True
    ) -> None:
        self.latency = latency
        self.link_max_batch_bytes = link_max_batch_bytes
        self.record = record
        self.batches = 0
        self.count = 0
        self.sent: list[SentBatch] = []
        self.senders: list[FakeSender] = []
        self.send_failures: list[BaseException] = []
        self.create_failures: list[BaseException] = []
        self.send_calls = 0
        self.max_concurrent_sends = 0

    def sender_factory(self, queue: str) -> FakeSender:
        sender = FakeSender(self, queue)
        self.senders.append(sender)
        return sender

    def messages(self, queue: str | None = None) -> list[ServiceBusMessage]:
        return [m for b in self.sent if queue is None or b.queue == queue for m in b.messages]
