"""A fake Service Bus namespace for tests and benchmarks: the `Sender` and `SessionReceiver` seams of
`ServiceBusBackend` without a network, built on the SDK's real `ServiceBusMessageBatch` (so encoding costs
what it costs in production).

Queues named with `deliver_to(queue)` keep what is sent to them, per session, for `FakeSessionReceiver`s
(`receiver_factory(queue, session_id)`, the reply inbox's seam; `receiver(queue)` for a queue without
sessions): a receive waits for a message up to its `max_wait_time`, then costs one simulated round trip;
messages past their `time_to_live` are never delivered; one session is held by one open receiver at a time
(a second gets `SessionCannotBeLockedError`, as from Service Bus).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from azure.servicebus import ServiceBusMessage, ServiceBusMessageBatch
from azure.servicebus.exceptions import SessionCannotBeLockedError

from worker.publish.servicebus import DEFAULT_MAX_BATCH_BYTES


class FakeSender:
    """A `Sender` without a network: the SDK's real `ServiceBusMessageBatch`, a simulated round trip per
    `send_messages`, scripted failures. Used by the tests and the benchmarks."""

    def __init__(self, namespace: FakeNamespace, queue: str) -> None:
        self.namespace = namespace
        self.queue = queue
        self.closed = False
        self._in_flight = 0

    @property
    def keeps_messages(self) -> bool:
        """The backend puts `ServiceBusMessage`s in the batches' message list only for a sender that reads them
        back: this one, when it records batches or delivers to receivers (the SDK's own sender never does)."""
        return self.namespace.record or self.queue in self.namespace.delivering

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
            if self.queue in ns.delivering:
                for sent in message._messages:
                    ns.mailbox(self.queue, sent.session_id).put(sent)
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


@dataclass
class FakeMailbox:
    """What one session (or a queue without sessions) of a delivering queue holds."""

    items: deque[tuple[float, ServiceBusMessage]] = field(default_factory=deque)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    held_by: FakeSessionReceiver | None = None
    expired: int = 0

    def put(self, message: ServiceBusMessage) -> None:
        self.items.append((time.monotonic(), message))
        self.changed.set()

    def ready_at(self, latency: float) -> float | None:
        """When the oldest message reaches a receiver (its delivery takes `latency`), None when empty."""
        return self.items[0][0] + latency if self.items else None

    def take(self, count: int, latency: float) -> list[ServiceBusMessage]:
        now = time.monotonic()
        out: list[ServiceBusMessage] = []
        while self.items and len(out) < count and self.items[0][0] + latency <= now:
            sent_at, message = self.items.popleft()
            ttl = message.time_to_live
            if ttl is not None and sent_at + ttl.total_seconds() <= now:
                self.expired += 1
                continue
            out.append(message)
        if not self.items:
            self.changed.clear()
        return out


class FakeReceiverSession:
    def __init__(self, receiver: FakeSessionReceiver) -> None:
        self._receiver = receiver
        self.renewals = 0

    async def renew_lock(self) -> datetime:
        ns = self._receiver.namespace
        if ns.latency:
            await asyncio.sleep(ns.latency)
        self.renewals += 1
        return datetime.now(UTC) + timedelta(seconds=30)


class FakeSessionReceiver:
    """A receive-and-delete receiver of one session (or, with session_id None, of a queue without sessions)."""

    def __init__(self, namespace: FakeNamespace, queue: str, session_id: str | None) -> None:
        self.namespace = namespace
        self.queue = queue
        self.session_id = session_id
        self.opened = False
        self.closed = False
        self.received = 0
        self._session = FakeReceiverSession(self)

    @property
    def session(self) -> FakeReceiverSession:
        return self._session

    async def __aenter__(self) -> FakeSessionReceiver:
        ns = self.namespace
        if ns.open_failures:
            raise ns.open_failures.pop(0)
        if ns.latency:
            await asyncio.sleep(ns.latency)
        box = ns.mailbox(self.queue, self.session_id)
        if self.session_id is not None and box.held_by is not None and box.held_by is not self:
            raise SessionCannotBeLockedError(message=f"session {self.session_id} is locked by another receiver")
        box.held_by = self
        self.opened = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def receive_messages(
        self, max_message_count: int | None = 1, max_wait_time: float | None = None
    ) -> Sequence[ServiceBusMessage]:
        """Up to `max_message_count` messages that reached this receiver (each arrives `latency` after it was
        sent: a link with prefetch), waiting up to `max_wait_time` for the first."""
        ns = self.namespace
        if self.closed:
            raise ValueError("The handler has already been shutdown.")
        if not self.opened:
            await self.__aenter__()
        ns.receive_calls += 1
        if ns.receive_failures:
            raise ns.receive_failures.pop(0)
        box = ns.mailbox(self.queue, self.session_id)
        end = None if max_wait_time is None else time.monotonic() + max_wait_time
        while True:
            taken = box.take(max_message_count or 1, ns.latency)
            if taken:
                self.received += len(taken)
                return taken
            now = time.monotonic()
            ready = box.ready_at(ns.latency)
            if end is not None and now >= end:
                return []
            waits = [t - now for t in (ready, end) if t is not None]
            box.changed.clear()
            try:
                async with asyncio.timeout(max(0.0, min(waits)) if waits else None):
                    await box.changed.wait()
            except TimeoutError:
                pass

    async def close(self) -> None:
        self.closed = True
        box = self.namespace.mailbox(self.queue, self.session_id)
        if box.held_by is self:
            box.held_by = None


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
        self.delivering: set[str] = set()
        self._mailboxes: dict[tuple[str, str | None], FakeMailbox] = {}
        self.receivers: list[FakeSessionReceiver] = []
        self.open_failures: list[BaseException] = []
        self.receive_failures: list[BaseException] = []
        """Raised by the next receiver opens (`__aenter__`) and `receive_messages` calls, one each."""
        self.receive_calls = 0

    def sender_factory(self, queue: str) -> FakeSender:
        sender = FakeSender(self, queue)
        self.senders.append(sender)
        return sender

    def deliver_to(self, *queues: str) -> None:
        """Keep what is sent to these queues for receivers (other queues only count and record)."""
        self.delivering.update(queues)

    def mailbox(self, queue: str, session_id: str | None) -> FakeMailbox:
        box = self._mailboxes.get((queue, session_id))
        if box is None:
            box = self._mailboxes[(queue, session_id)] = FakeMailbox()
        return box

    def receiver_factory(self, queue: str, session_id: str) -> FakeSessionReceiver:
        receiver = FakeSessionReceiver(self, queue, session_id)
        self.receivers.append(receiver)
        return receiver

    def receiver(self, queue: str) -> FakeSessionReceiver:
        """A receiver of a queue without sessions (what a function's trigger reads)."""
        return FakeSessionReceiver(self, queue, None)

    def waiting(self, queue: str, session_id: str | None) -> int:
        """Messages a session holds, expired ones included (until a receive drops them)."""
        return len(self.mailbox(queue, session_id).items)

    def messages(self, queue: str | None = None) -> list[ServiceBusMessage]:
        return [m for b in self.sent if queue is None or b.queue == queue for m in b.messages]
