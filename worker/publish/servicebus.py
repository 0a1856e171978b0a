"""Azure Service Bus `QueueBackend` (azure-servicebus .aio), batching sends per queue.

    send(msg) ──► lane(msg.queue) ──► the lane's task fills a ServiceBusMessageBatch ──► send_messages
                  (queue of futures)   (≤ max_batch_bytes) while the previous batch      (one in flight per
                                       is in flight, lingering `linger_ms` when idle      lane; retried)

- One `ServiceBusClient` per process, built from a fully qualified namespace and an Azure identity
  (`DefaultAzureCredential`, pinned to a user-assigned managed identity when a client id is given) or
  from a connection string (the emulator's `UseDevelopmentEmulator=true` one included). If both are
  configured the connection string wins, as in the Functions host.
- One *lane* per queue: a lazily created sender and the single task that uses it (senders are not
  coroutine-safe). `send()` enqueues the message with a future and waits. The lane's task puts what
  arrives within `linger_ms` of an idle moment, or while the previous batch is in flight, into one
  `ServiceBusMessageBatch` no larger than `max_batch_bytes`; it sends the batch as soon as the
  previous one returned (one `send_messages` in flight per queue, which also keeps the order), then
  resolves every future of the batch, or fails them all (a batch send is all-or-nothing). Encoding
  (pure Python in the SDK) thus overlaps the network round trip.
- Encoding once (`encode_once`): `ServiceBusMessageBatch.add_message` builds a `ServiceBusMessage`'s AMQP form
  and encodes it twice (once to measure it, once into the batch), about 120 µs of CPU per envelope, more
  than the rest of the worker's path. For the messages the worker sends (no time to live, no scheduled time,
  no tracing configured) the lane builds the same pyamqp `Message` the SDK would (`amqp_message`), encodes it
  once, checks the size the way `add_message` does and appends the bytes to the SDK's own batch
  (`add_encoded`); the batch is still the SDK's, sent by the SDK's sender. A test holds the bytes equal to
  `add_message`'s for every kind of message, so an SDK upgrade that changes the encoding shows there.
  Other messages, and a batch whose internals are not the ones this was written for, go through
  `add_message`. `ServiceBusMessage` objects are made only for senders that read them back
  (`Sender.keeps_messages`: the fake when it records or delivers); the SDK's sender never does.
- A message that does not fit even an empty batch fails alone with `PermanentPublishError`.
- Errors are translated at this boundary, with the queue and message ids in the message:

    ServiceBusServerBusyError, ServiceBusConnectionError,         retried (jittered backoff, bounded in
    ServiceBusCommunicationError, OperationTimeoutError,          attempts and total time), then
    ServiceBusQuotaExceededError, TimeoutError                    TransientPublishError
    MessageSizeExceededError, MessagingEntityNotFoundError,       PermanentPublishError, not retried
    MessagingEntityDisabledError, ServiceBusAuthenticationError,
    ServiceBusAuthorizationError, ClientAuthenticationError
    any other error                                               TransientPublishError, not retried
                                                                  (and the lane starts a fresh sender)

  The client's own retries are kept short (`retry_total=1`) so that this module owns the bound.
- `close()` flushes what is queued (bounded by `close_timeout`), then closes the senders, the client
  and the credential. Every task is owned by its lane and awaited or cancelled on close.

The network edge is two seams: `SenderFactory`, a callable returning a `Sender` for a queue name (by
default `ServiceBusClient.get_queue_sender`), and `SessionReceiverFactory`, a callable returning a
`SessionReceiver` for (queue, session id) (by default `ServiceBusClient.get_queue_receiver` in
receive-and-delete mode: the worker's reply inbox, `worker.replies`). `FakeNamespace`
(`worker.publish.servicebus_fake`) provides fake senders built on the SDK's real `ServiceBusMessageBatch`
and fake session receivers, with a simulated round trip and scripted failures, for tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from azure.core.exceptions import ClientAuthenticationError
from azure.core.settings import settings as azure_settings
from azure.servicebus import ServiceBusMessage, ServiceBusMessageBatch, ServiceBusReceiveMode
from azure.servicebus._pyamqp._encode import encode_payload
from azure.servicebus._pyamqp.message import Message as AmqpMessage
from azure.servicebus._pyamqp.message import Properties as AmqpProperties
from azure.servicebus._transport._pyamqp_transport import PyamqpTransport
from azure.servicebus.aio import ServiceBusClient
from azure.servicebus.exceptions import (
    MessageSizeExceededError,
    MessagingEntityDisabledError,
    MessagingEntityNotFoundError,
    OperationTimeoutError,
    ServiceBusAuthenticationError,
    ServiceBusAuthorizationError,
    ServiceBusCommunicationError,
    ServiceBusConnectionError,
    ServiceBusError,
    ServiceBusQuotaExceededError,
    ServiceBusServerBusyError,
)

from shared.errors import ConfigurationError, PermanentPublishError, PublishError, TransientPublishError
from shared.queue_message import QueueMessage

if TYPE_CHECKING:
    from worker.settings import ServiceBusSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

CONTENT_TYPE = "application/json"
_CLIENT_RETRY: dict[str, Any] = {"retry_total": 1, "retry_backoff_factor": 0.2, "retry_backoff_max": 2.0}
"""Short SDK-level retries: the backend's `RetryPolicy` owns the overall bound."""
DEFAULT_MAX_BATCH_BYTES = 256 * 1024
"""Standard tier batch limit (Premium: 1 MB)."""
REPLY_PREFETCH = 100
"""Replies the session receiver takes ahead (receive-and-delete, so only a crash can lose them)."""

RETRYABLE_ERRORS: tuple[type[BaseException], ...] = (
    ServiceBusServerBusyError,
    ServiceBusConnectionError,
    ServiceBusCommunicationError,
    OperationTimeoutError,
    ServiceBusQuotaExceededError,
    TimeoutError,
)
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    MessageSizeExceededError,
    MessagingEntityNotFoundError,
    MessagingEntityDisabledError,
    ServiceBusAuthenticationError,
    ServiceBusAuthorizationError,
    ClientAuthenticationError,
)


class Sender(Protocol):
    """The part of `azure.servicebus.aio.ServiceBusSender` this backend uses (the network edge)."""

    async def create_message_batch(self, max_size_in_bytes: int | None = None) -> ServiceBusMessageBatch: ...

    async def send_messages(
        self,
        message: ServiceBusMessageBatch,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the SDK's signature)
    ) -> None: ...

    async def close(self) -> None: ...


SenderFactory = Callable[[str], Sender]
"""Returns a new sender for a queue name. Called at most once per queue (again only after a failure)."""


class ReceivedMessage(Protocol):
    """The part of `azure.servicebus.ServiceBusReceivedMessage` the reply inbox reads."""

    @property
    def body(self) -> Any: ...

    @property
    def message_id(self) -> str | None: ...

    @property
    def correlation_id(self) -> str | None: ...

    @property
    def session_id(self) -> str | None: ...


class ReceiverSession(Protocol):
    async def renew_lock(self) -> datetime: ...


class SessionReceiver(Protocol):
    """The part of `azure.servicebus.aio.ServiceBusReceiver` (a session receiver) the reply inbox uses."""

    async def __aenter__(self) -> Any: ...

    async def receive_messages(
        self, max_message_count: int | None = 1, max_wait_time: float | None = None
    ) -> Sequence[ReceivedMessage]: ...

    @property
    def session(self) -> ReceiverSession: ...

    async def close(self) -> None: ...


SessionReceiverFactory = Callable[[str, str], SessionReceiver]
"""Returns a new receiver of one session (queue name, session id), not opened yet."""


class _Closable(Protocol):
    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long a batch send (or link open) is retried on transient errors."""

    attempts: int = 4
    """Tries in all, the first included."""
    total_seconds: float = 10.0
    """No retry starts after this much time since the first try."""
    attempt_timeout: float = 5.0
    """Timeout of one `send_messages` call (the SDK's `timeout`)."""
    base_delay: float = 0.05
    max_delay: float = 1.0

    def delay(self, retry: int, rng: random.Random) -> float:
        """Full jitter: uniform(0, min(max_delay, base_delay * 2**retry)) for retry = 0, 1, ..."""
        return rng.uniform(0, min(self.max_delay, self.base_delay * (2 ** min(retry, 32))))


@dataclass(frozen=True, slots=True)
class ServiceBusBackendOptions:
    """Batching and retry knobs (the worker sets the first two from `ServiceBusSettings`)."""

    max_batch_bytes: int | None = DEFAULT_MAX_BATCH_BYTES
    """Upper bound of a batch; None uses the link's limit (256 KB Standard, 1 MB Premium)."""
    linger_ms: float = 2.0
    """How long a lone message waits for company before its batch is sent."""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    one_session_per_batch: bool = False
    """Needed on partitioned entities only: their batches must share one SessionId."""
    close_timeout: float = 10.0
    """How long `close()` waits for queued messages to be flushed."""
    encode_once: bool = True
    """Encode each message once into the SDK's batch (`add_encoded`); False: always `add_message`."""


@dataclass(slots=True)
class _Pending:
    message: QueueMessage
    future: asyncio.Future[None]


class _Added(Enum):
    ADDED = "added"
    FULL = "full"
    FAILED = "failed"


def to_servicebus_message(message: QueueMessage) -> ServiceBusMessage:
    """Pure: the Service Bus message for a queue message (MessageId, SessionId, properties, JSON body, and
    when set CorrelationId, ReplyTo, ReplyToSessionId, TimeToLive, ScheduledEnqueueTimeUtc)."""
    scheduled = message.scheduled_enqueue_time
    if scheduled is not None and scheduled.tzinfo is None:
        scheduled = scheduled.replace(tzinfo=UTC)  # a naive time is UTC, as everywhere in relaybus
    return ServiceBusMessage(
        message.body,
        message_id=message.message_id,
        session_id=message.session_id,
        application_properties=dict(message.application_properties),  # type: ignore[arg-type]
        content_type=CONTENT_TYPE,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        reply_to_session_id=message.reply_to_session_id,
        time_to_live=None if message.time_to_live is None else timedelta(seconds=message.time_to_live),
        scheduled_enqueue_time_utc=scheduled,
    )


MAX_ID_LENGTH = 128
"""MessageId and SessionId limit (characters), as `ServiceBusMessage` checks it."""
_BATCH_OVERHEAD = (5, 8)
"""What one message adds to a batch's encoded size beyond its own, below / from 256 bytes (the SDK's figures)."""


def check_ids(message: QueueMessage) -> None:
    """`ValueError` for a MessageId or SessionId Service Bus refuses (as `ServiceBusMessage` raises it)."""
    if len(message.message_id) > MAX_ID_LENGTH:
        raise ValueError(f"message_id cannot be longer than {MAX_ID_LENGTH} characters.")
    if message.session_id is not None and len(message.session_id) > MAX_ID_LENGTH:
        raise ValueError(f"session_id cannot be longer than {MAX_ID_LENGTH} characters.")


def encodes_once(message: QueueMessage) -> bool:
    """Whether `add_encoded` may take this message: no time to live or scheduled time (their header and
    annotations are the SDK's to build), and no tracing configured (the SDK adds trace properties then)."""
    return (
        message.time_to_live is None
        and message.scheduled_enqueue_time is None
        and azure_settings.tracing_implementation() is None
    )


def amqp_message(message: QueueMessage) -> AmqpMessage:
    """Pure: the pyamqp `Message` that `ServiceBusMessage(...)` becomes in `add_message`, for a message that
    `encodes_once` (properties, application properties, one data section)."""
    properties = AmqpProperties(
        message_id=message.message_id,
        reply_to=message.reply_to,
        correlation_id=message.correlation_id,
        content_type=CONTENT_TYPE,
        group_id=message.session_id,
        reply_to_group_id=message.reply_to_session_id,
    )
    application: dict[str | bytes, Any] = {}
    application.update(message.application_properties)
    return AmqpMessage(
        properties=properties,
        application_properties=application or None,
        data=[message.body],
    )


def batch_takes_encoded(batch: ServiceBusMessageBatch) -> bool:
    """The SDK batch has the internals `add_encoded` appends to (azure-servicebus 7.x, pyamqp transport)."""
    raw = getattr(batch, "_message", None)
    return (
        isinstance(raw, list)
        and len(raw) == 9
        and isinstance(raw[5], list)
        and isinstance(getattr(batch, "_size", None), int)
        and isinstance(getattr(batch, "_count", None), int)
    )


_NULL = b"\x40"
_PROPERTIES = b"\x00\x53\x73"  # described, smallulong descriptor 0x73 (amqp:properties:list)
_APPLICATION_PROPERTIES = b"\x00\x53\x74"
_DATA = b"\x00\x53\x75"
_CONTENT_TYPE_SYMBOL = b"\xa3" + bytes((len(CONTENT_TYPE),)) + CONTENT_TYPE.encode()


def _variable(out: bytearray, small: int, large: int, data: bytes) -> None:
    """An AMQP string / symbol / binary: the 1-byte length form up to 255 bytes, else the 4-byte one."""
    n = len(data)
    if n <= 255:
        out.append(small)
        out.append(n)
    else:
        out.append(large)
        out += n.to_bytes(4, "big")
    out += data


def _string(out: bytearray, value: str | None) -> None:
    if value is None:
        out += _NULL
    else:
        _variable(out, 0xA1, 0xB1, value.encode())


def _compound(out: bytearray, small: int, large: int, count: int, body: bytearray) -> None:
    """An AMQP list (0xc0/0xd0) or map (0xc1/0xd1): size and count in 1 byte while both fit, else 4."""
    size = len(body)
    if count <= 255 and size < 255:
        out.append(small)
        out.append(size + 1)
        out.append(count)
    else:
        out.append(large)
        out += (size + 4).to_bytes(4, "big")
        out += count.to_bytes(4, "big")
    out += body


def encode_queue_message(message: QueueMessage) -> bytearray:
    """The AMQP bytes pyamqp's `encode_payload(amqp_message(message))` produces, written directly for the one shape
    the worker sends (properties with string ids and the content type, string application properties, one data
    section): the SDK's encoder builds a dictionary per field and dispatches on it, about 60 % of this path's CPU.
    A test holds the bytes equal to the SDK's for generated messages (tests/test_servicebus_encoding.py)."""
    fields = bytearray()
    _string(fields, message.message_id)
    fields += _NULL * 3  # user_id, to, subject
    _string(fields, message.reply_to)
    _string(fields, message.correlation_id)
    fields += _CONTENT_TYPE_SYMBOL
    fields += _NULL * 3  # content_encoding, absolute_expiry_time, creation_time
    _string(fields, message.session_id)
    fields += _NULL  # group_sequence
    _string(fields, message.reply_to_session_id)
    out = bytearray(_PROPERTIES)
    _compound(out, 0xC0, 0xD0, 13, fields)
    props = message.application_properties
    if props:
        entries = bytearray()
        for key, value in props.items():
            _string(entries, key)
            _string(entries, value)
        out += _APPLICATION_PROPERTIES
        _compound(out, 0xC1, 0xD1, 2 * len(props), entries)
    out += _DATA
    _variable(out, 0xA0, 0xB0, message.body)
    return out


def _all_strings(props: Mapping[str, object]) -> bool:
    return all(type(k) is str and type(v) is str for k, v in props.items())


def add_encoded(batch: ServiceBusMessageBatch, message: QueueMessage, *, keep: bool = True) -> AmqpMessage | None:
    """Encode `message` once and append it to the SDK's `batch`, as `add_message` would (same bytes, same size
    accounting, the batch envelope's MessageId/SessionId from its first message). Raises
    `MessageSizeExceededError` when it does not fit. Returns the pyamqp message (built only with `keep`)."""
    amqp = amqp_message(message) if keep else None
    if _all_strings(message.application_properties):
        encoded = encode_queue_message(message)
    else:
        encoded = bytearray()
        encode_payload(encoded, amqp if amqp is not None else amqp_message(message))
    size = len(encoded)
    after = batch._size + size + _BATCH_OVERHEAD[0 if size < 256 else 1]
    if after > batch.max_size_in_bytes:
        limit = batch.max_size_in_bytes
        raise MessageSizeExceededError(message=f"ServiceBusMessageBatch has reached its size limit: {limit}")
    batch._message[5].append(encoded)
    batch._size = after
    batch._count += 1
    if batch._count == 1:
        PyamqpTransport.set_batch_envelope_properties(batch._message, message.message_id, message.session_id, None)
    return amqp


def translate(exc: BaseException, what: str) -> PublishError:
    """Map an SDK (or other) error to the relaybus tree; `what` names the queue and message ids."""
    name = type(exc).__name__
    if isinstance(exc, PublishError):
        return exc
    if isinstance(exc, PERMANENT_ERRORS):
        return PermanentPublishError(f"{what}: {name}: {exc}")
    return TransientPublishError(f"{what}: {name}: {exc}")


def describe(queue: str, items: Sequence[_Pending], limit: int = 3) -> str:
    ids = ",".join(p.message.message_id for p in items[:limit])
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return f"queue={queue} message_ids={ids}{more}"


class _Lane:
    """One queue's sender and the one task that uses it."""

    def __init__(self, queue: str, backend: ServiceBusBackend) -> None:
        self.queue = queue
        self._backend = backend
        self._options = backend.options
        self._items: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._sender: Sender | None = None
        self._encode_once = self._options.encode_once
        self._keeps_messages = False
        """The sender reads `ServiceBusMessage`s back from its batches (the fake, when it records or delivers)."""
        self._max_batch_bytes: int | None = self._options.max_batch_bytes
        self._stopping = False
        self._wake = asyncio.Event()
        self.batches_sent = 0
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"servicebus-sender:{queue}")

    def put(self, item: _Pending) -> None:
        self._items.put_nowait(item)
        self._wake.set()

    def stop(self) -> None:
        self._items.put_nowait(None)
        self._wake.set()

    async def close_sender(self) -> None:
        sender, self._sender = self._sender, None
        if sender is not None:
            try:
                await sender.close()
            except Exception:
                log.warning("closing the Service Bus sender for queue=%s failed", self.queue, exc_info=True)

    def fail_queued(self, error: PublishError) -> None:
        """Fail everything still waiting in this lane (after close)."""
        while not self._items.empty():
            item = self._items.get_nowait()
            if item is not None:
                _fail([item], error)

    async def _run(self) -> None:
        """Fill a batch while the previous one is in flight; send it as soon as the previous one returned.

        Encoding a message into a batch costs CPU (the SDK encodes in pure Python); doing it while the
        previous batch waits on the network keeps the send cycle at one round trip. At most one
        `send_messages` is in flight per lane (senders are not coroutine-safe; it also keeps the order).
        """
        previous: asyncio.Task[None] | None = None
        carry: _Pending | None = None
        try:
            while True:
                if carry is None:
                    if self._stopping:
                        break
                    item = await self._items.get()
                    if item is None:
                        break
                    if item.future.done():  # the caller gave up (cancelled) before we got to it
                        continue
                    idle = previous is None or previous.done()
                    if idle and self._items.empty() and self._options.linger_ms > 0:
                        await asyncio.sleep(self._options.linger_ms / 1000.0)
                else:
                    item, carry = carry, None  # a backlog: no lingering
                try:
                    carry, batch, items = await self._fill(item, previous)
                except Exception:  # a bug: _fill failed this round's messages; keep the lane alive
                    log.exception("Service Bus sender task for queue=%s hit an unexpected error", self.queue)
                    await self.close_sender()
                    continue
                if previous is not None:
                    await previous
                    previous = None
                if items:
                    assert batch is not None
                    previous = asyncio.get_running_loop().create_task(self._send(batch, items))
                    previous.add_done_callback(self._wake_up)
            if previous is not None:
                await previous
        finally:
            if previous is not None and not previous.done():
                previous.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await previous

    def _wake_up(self, _: object = None) -> None:
        self._wake.set()

    async def _fill(
        self, first: _Pending, previous: asyncio.Task[None] | None
    ) -> tuple[_Pending | None, ServiceBusMessageBatch | None, list[_Pending]]:
        """Start a batch with `first` and add what is queued, and what arrives while `previous` is in
        flight, until the batch is full. Returns (the message that did not fit, the batch, its messages)."""
        try:
            batch = await self.new_batch(lambda: describe(self.queue, [first]))
        except PublishError as error:
            _fail([first], error)
            return None, None, []
        items: list[_Pending] = []
        session = first.message.session_id
        candidate: _Pending | None = first
        try:
            while True:
                while candidate is not None:
                    if not candidate.future.done():
                        if self._options.one_session_per_batch and candidate.message.session_id != session:
                            return candidate, batch, items
                        added = self._add(batch, candidate, items)
                        if added is _Added.ADDED:
                            items.append(candidate)
                        elif added is _Added.FULL:  # send this batch; the candidate starts the next one
                            return candidate, batch, items
                    candidate = self._next_queued()
                if previous is None or previous.done() or self._stopping:
                    return None, batch, items
                self._wake.clear()
                if self._items.empty():
                    await self._wake.wait()  # a new message, or the previous batch returned
                candidate = self._next_queued()
        except BaseException as exc:
            # a bug, or close() cancelling the lane: nobody may wait forever
            pending = [first, *items, *([candidate] if candidate else [])]
            what = describe(self.queue, pending)
            failure = (
                translate(exc, what)
                if isinstance(exc, Exception)
                else TransientPublishError(f"{what}: the Service Bus backend closed before the send")
            )
            _fail(pending, failure)
            raise

    def _next_queued(self) -> _Pending | None:
        if self._stopping or self._items.empty():
            return None
        queued = self._items.get_nowait()
        if queued is None:
            self._stopping = True
        return queued

    def _add(self, batch: ServiceBusMessageBatch, item: _Pending, items: list[_Pending]) -> _Added:
        """Add to the batch (encoded once where it can be, see the module docstring). A message that fits no
        batch, or that the SDK rejects, fails here alone."""
        message = item.message
        try:
            if self._encode_once and encodes_once(message) and batch_takes_encoded(batch):
                amqp = add_encoded(batch, message, keep=self._keeps_messages)
                if amqp is not None:
                    sb_message = to_servicebus_message(message)
                    sb_message._message = amqp
                    batch._messages.append(sb_message)
            else:
                batch.add_message(to_servicebus_message(message))
        except MessageSizeExceededError as exc:
            if items:
                return _Added.FULL
            what = describe(self.queue, [item])
            error = PermanentPublishError(
                f"{what}: a message of {len(item.message.body)} body bytes does not fit a batch of "
                f"{batch.max_size_in_bytes} bytes"
            )
            error.__cause__ = exc
            _fail([item], error)
            return _Added.FAILED
        except Exception as exc:  # e.g. an application property of an unsupported type
            _fail([item], translate(exc, describe(self.queue, [item])))
            return _Added.FAILED
        return _Added.ADDED

    def _sender_for_use(self) -> Sender:
        if self._sender is None:
            self._sender = self._backend.sender_factory(self.queue)
            self._keeps_messages = bool(getattr(self._sender, "keeps_messages", False))
        return self._sender

    async def new_batch(self, what: Callable[[], str]) -> ServiceBusMessageBatch:
        """An empty batch; the link opens here on first use, hence the retries.

        This may run while the previous batch is in flight on the same sender: the SDK's
        `create_message_batch` awaits nothing once the link was opened (it keeps the link's limits),
        and the first batch of a lane is never created concurrently with a send."""

        async def attempt(budget: float) -> ServiceBusMessageBatch:
            sender = self._sender_for_use()
            async with asyncio.timeout(budget):
                if self._max_batch_bytes is None:
                    return await sender.create_message_batch()
                try:
                    return await sender.create_message_batch(max_size_in_bytes=self._max_batch_bytes)
                except ServiceBusError:
                    raise
                except ValueError:
                    # The link's own limit is lower than the setting (a Standard namespace configured
                    # with the Premium size): use the link's limit from now on.
                    log.warning(
                        "queue=%s: batch size %d exceeds the link's limit, using the link's limit",
                        self.queue,
                        self._max_batch_bytes,
                    )
                    self._max_batch_bytes = None
                    return await sender.create_message_batch()

        return await self._backend.retrying(attempt, what)

    async def _send(self, batch: ServiceBusMessageBatch, items: list[_Pending]) -> None:
        async def attempt(budget: float) -> None:
            await self._sender_for_use().send_messages(batch, timeout=budget)

        try:
            await self._backend.retrying(attempt, lambda: describe(self.queue, items))
        except asyncio.CancelledError:
            what = describe(self.queue, items)
            _fail(items, TransientPublishError(f"{what}: the Service Bus backend closed before the send completed"))
            raise
        except PublishError as error:
            log.warning("batch of %d failed on queue=%s: %s", len(items), self.queue, error)
            _fail(items, error)
            if not isinstance(error.__cause__, RETRYABLE_ERRORS + PERMANENT_ERRORS):
                await self.close_sender()  # an unexpected error: start again with a fresh sender
            return
        self.batches_sent += 1
        for item in items:
            if not item.future.done():
                item.future.set_result(None)


def _fail(items: Iterable[_Pending], error: PublishError) -> None:
    for item in items:
        if not item.future.done():
            item.future.set_exception(error)


class ServiceBusBackend:
    """A `QueueBackend` on Azure Service Bus: `send()` returns once the message's batch was accepted."""

    def __init__(
        self,
        sender_factory: SenderFactory,
        options: ServiceBusBackendOptions | None = None,
        *,
        queues: Iterable[str] = (),
        resources: Sequence[_Closable] = (),
        client: ServiceBusClient | None = None,
        rng: random.Random | None = None,
        receiver_factory: SessionReceiverFactory | None = None,
    ) -> None:
        """`queues` are the queues `open()` warms up; `resources` (client, credential) are closed by
        `close()` after the senders; `client` is kept for inspection. `receiver_factory` makes the session
        receivers of the reply inbox (None: this backend takes no replies)."""
        self.sender_factory = sender_factory
        self.receiver_factory = receiver_factory
        self.options = options or ServiceBusBackendOptions()
        self.queues = tuple(queues)
        self.client = client
        self._resources = tuple(resources)
        self._rng = rng or random.Random()
        self._lanes: dict[str, _Lane] = {}
        self._closed = False

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def from_client(
        cls,
        client: ServiceBusClient,
        options: ServiceBusBackendOptions | None = None,
        *,
        queues: Iterable[str] = (),
        resources: Sequence[_Closable] = (),
    ) -> ServiceBusBackend:
        """Senders from `client.get_queue_sender`; `client` (and `resources`) closed with the backend."""

        def factory(queue: str) -> Sender:
            return client.get_queue_sender(queue_name=queue)

        def receiver(queue: str, session_id: str) -> SessionReceiver:
            # Receive-and-delete: a reply has one consumer, the process waiting for it; settling it would
            # cost a round trip for nothing (a reply lost with a crashed worker is one nobody waits for).
            # Prefetch keeps link credit open, so replies stream in while the inbox handles the previous one.
            return cast(
                SessionReceiver,
                client.get_queue_receiver(
                    queue_name=queue,
                    session_id=session_id,
                    receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE,
                    prefetch_count=REPLY_PREFETCH,
                ),
            )

        return cls(
            factory,
            options,
            queues=queues,
            resources=(client, *resources),
            client=client,
            receiver_factory=receiver,
        )

    @classmethod
    def from_connection_string(
        cls, connection_string: str, options: ServiceBusBackendOptions | None = None, *, queues: Iterable[str] = ()
    ) -> ServiceBusBackend:
        """A connection string, the emulator's (`UseDevelopmentEmulator=true`) included."""
        client = ServiceBusClient.from_connection_string(connection_string, **_CLIENT_RETRY)
        return cls.from_client(client, options, queues=queues)

    @classmethod
    def from_namespace(
        cls,
        fully_qualified_namespace: str,
        client_id: str | None = None,
        options: ServiceBusBackendOptions | None = None,
        *,
        queues: Iterable[str] = (),
    ) -> ServiceBusBackend:
        """Identity: `DefaultAzureCredential`, pinned to the user-assigned identity `client_id` if given."""
        from azure.identity.aio import DefaultAzureCredential

        credential = (
            DefaultAzureCredential(managed_identity_client_id=client_id) if client_id else DefaultAzureCredential()
        )
        client = ServiceBusClient(fully_qualified_namespace, credential, **_CLIENT_RETRY)
        return cls.from_client(client, options, queues=queues, resources=(credential,))

    @classmethod
    def from_settings(
        cls, settings: ServiceBusSettings, queues: Iterable[str] = (), options: ServiceBusBackendOptions | None = None
    ) -> ServiceBusBackend:
        """The worker's factory: the connection string if set, else the namespace with an identity.

        `queues` (the route table's queue names in effect) are the ones `open()` warms up."""
        options = replace(
            options or ServiceBusBackendOptions(),
            max_batch_bytes=settings.max_batch_bytes,
            linger_ms=settings.linger_ms,
        )
        if settings.connection_string is not None:
            return cls.from_connection_string(settings.connection_string.get_secret_value(), options, queues=queues)
        if settings.fully_qualified_namespace:
            return cls.from_namespace(settings.fully_qualified_namespace, settings.client_id, options, queues=queues)
        raise ConfigurationError(
            "ServiceBusConnection__fullyQualifiedNamespace", "set it (identity) or ServiceBusConnection"
        )

    # --- QueueBackend ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Optional warm-up: open the link to each known queue now, so that the first envelope does not
        pay for it and a missing queue or role shows at start. Raises `PublishError`."""
        for queue in self.queues:
            what = f"queue={queue} (opening the link)"
            await self._lane(queue).new_batch(lambda: what)  # noqa: B023 (awaited in this iteration)

    async def send(self, message: QueueMessage) -> None:
        """Return once the batch holding `message` was accepted by Service Bus; raise `PublishError`."""
        if self._closed:
            raise TransientPublishError(
                f"queue={message.queue} message_ids={message.message_id}: the Service Bus backend is closed"
            )
        try:
            check_ids(message)
            if not encodes_once(message) or not self.options.encode_once:
                to_servicebus_message(message)  # what the SDK refuses shows here, before the batch
        except ValueError as exc:  # e.g. a MessageId or SessionId longer than 128 characters
            raise PermanentPublishError(f"queue={message.queue} message_ids={message.message_id}: {exc}") from exc
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._lane(message.queue).put(_Pending(message, future))
        await future

    async def close(self) -> None:
        """Flush what is queued (for up to `close_timeout`), then close senders, client and credential."""
        if self._closed:
            return
        self._closed = True
        lanes = list(self._lanes.values())
        for lane in lanes:
            lane.stop()
        if lanes:
            _, unfinished = await asyncio.wait([lane.task for lane in lanes], timeout=self.options.close_timeout)
            for task in unfinished:
                task.cancel()
            for task in unfinished:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for lane in lanes:
            lane.fail_queued(TransientPublishError(f"queue={lane.queue}: the Service Bus backend closed first"))
            await lane.close_sender()
        for resource in self._resources:
            try:
                await resource.close()
            except Exception:
                log.warning("closing %s failed", type(resource).__name__, exc_info=True)

    # --- internals ------------------------------------------------------------------------------

    @property
    def batches_sent(self) -> int:
        """Batches accepted by Service Bus so far (for tests and benchmarks)."""
        return sum(lane.batches_sent for lane in self._lanes.values())

    def _lane(self, queue: str) -> _Lane:
        lane = self._lanes.get(queue)
        if lane is None:
            lane = self._lanes[queue] = _Lane(queue, self)
        return lane

    async def retrying(self, attempt: Callable[[float], Awaitable[T]], what: Callable[[], str]) -> T:
        """Run `attempt(time budget)`, retrying retryable errors within the policy's bounds; raise `PublishError`."""
        policy = self.options.retry
        started = time.monotonic()
        tries = 0
        while True:
            tries += 1
            remaining = policy.total_seconds - (time.monotonic() - started)
            try:
                return await attempt(max(0.001, min(policy.attempt_timeout, remaining)))
            except asyncio.CancelledError:
                raise
            except RETRYABLE_ERRORS as exc:
                delay = policy.delay(tries - 1, self._rng)
                elapsed = time.monotonic() - started
                if tries >= policy.attempts or elapsed + delay >= policy.total_seconds:
                    raise TransientPublishError(
                        f"{what()}: {type(exc).__name__} after {tries} attempts in {elapsed:.2f} s: {exc}"
                    ) from exc
                log.info("retrying in %.3f s (%s): %s: %s", delay, what(), type(exc).__name__, exc)
                await asyncio.sleep(delay)
            except PublishError:
                raise
            except Exception as exc:
                error = translate(exc, what())
                if isinstance(error, TransientPublishError):
                    log.warning("unexpected error from Service Bus (%s)", what(), exc_info=True)
                raise error from exc
