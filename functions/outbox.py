"""The outbox: the function side's one way to send queue messages (synchronous answers, scheduled retries).

    class Outbox(Protocol):
        async def send(self, message: QueueMessage) -> None   # CorrelationId, SessionId, TTL, scheduled time
        async def close(self) -> None

    outbox(settings)   the process's outbox: the one `install()`ed, else a `ServiceBusOutbox` made on first use
    install(outbox)    the local functions host installs its own (`devstack.funchost.LocalOutbox`); None
                       removes it

`ServiceBusOutbox` sends with azure-servicebus (.aio), imported only when something is sent, so that importing
the function app (cold start) does not pay for it. It connects as the trigger does: the `ServiceBusConnection`
connection string, or `ServiceBusConnection__fullyQualifiedNamespace` with `DefaultAzureCredential` (pinned
to `ServiceBusConnection__clientId`, the user-assigned identity). In Azure the function app's identity needs
Azure Service Bus Data Sender on the reply queue (answers) and on its own trigger queues (scheduled retries).

One client per process, one sender per queue, one send at a time per sender (senders are not coroutine-safe).
Errors are translated at this boundary into `shared.errors`:

    MessageSizeExceededError, MessagingEntityNotFoundError,      PermanentPublishError
    MessagingEntityDisabledError, authentication/authorization
    anything else (busy, network, timeout)                       TransientPublishError (a fresh sender next time)

The network edge is one seam, `OutboxSenderFactory` (a queue name → an `OutboxSender`), so tests drive the real
message mapping (`to_servicebus_message`) with a fake sender.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

from functions.settings import FunctionSettings
from shared.errors import ConfigurationError, PermanentPublishError, PublishError, TransientPublishError

if TYPE_CHECKING:
    from azure.servicebus import ServiceBusMessage

    from shared.queue_message import QueueMessage

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/json"
SEND_TIMEOUT = 10.0
"""Seconds one send may take (the SDK's own retries included)."""
_CLIENT_RETRY: dict[str, Any] = {"retry_total": 2, "retry_backoff_factor": 0.2, "retry_backoff_max": 2.0}


class Outbox(Protocol):
    async def send(self, message: QueueMessage) -> None:
        """Return once the message is accepted (durably); raise `PublishError`."""
        ...

    async def close(self) -> None: ...


class OutboxSender(Protocol):
    """The part of `azure.servicebus.aio.ServiceBusSender` the outbox uses."""

    async def send_messages(
        self,
        message: ServiceBusMessage,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the SDK's signature)
    ) -> None: ...

    async def close(self) -> None: ...


OutboxSenderFactory = Callable[[str], OutboxSender]


class _Closable(Protocol):
    async def close(self) -> None: ...


def to_servicebus_message(message: QueueMessage) -> ServiceBusMessage:
    """The Service Bus message for a queue message: MessageId, SessionId, CorrelationId, ReplyTo,
    ReplyToSessionId, TimeToLive, ScheduledEnqueueTimeUtc, application properties, JSON body."""
    from azure.servicebus import ServiceBusMessage

    return ServiceBusMessage(
        message.body,
        message_id=message.message_id,
        session_id=message.session_id,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        reply_to_session_id=message.reply_to_session_id,
        time_to_live=None if message.time_to_live is None else timedelta(seconds=message.time_to_live),
        scheduled_enqueue_time_utc=message.scheduled_enqueue_time,
        application_properties=dict(message.application_properties),  # type: ignore[arg-type]
        content_type=CONTENT_TYPE,
    )


class ServiceBusOutbox:
    """An `Outbox` on Azure Service Bus (see the module docstring)."""

    def __init__(self, sender_factory: OutboxSenderFactory, *, resources: Sequence[_Closable] = ()) -> None:
        self._factory = sender_factory
        self._resources = tuple(resources)
        self._senders: dict[str, OutboxSender] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._closed = False
        self.sent = 0

    @classmethod
    def from_settings(cls, settings: FunctionSettings) -> ServiceBusOutbox:
        """The trigger's connection: the connection string if set, else the namespace with an identity."""
        from azure.servicebus.aio import ServiceBusClient

        if settings.service_bus_connection is not None:
            client = ServiceBusClient.from_connection_string(
                settings.service_bus_connection.get_secret_value(), **_CLIENT_RETRY
            )
            return cls.from_client(client)
        if settings.service_bus_namespace:
            from azure.identity.aio import DefaultAzureCredential

            client_id = settings.service_bus_client_id
            credential = (
                DefaultAzureCredential(managed_identity_client_id=client_id) if client_id else DefaultAzureCredential()
            )
            client = ServiceBusClient(settings.service_bus_namespace, credential, **_CLIENT_RETRY)
            return cls.from_client(client, resources=(credential,))
        raise ConfigurationError(
            "ServiceBusConnection",
            "is not set (nor ServiceBusConnection__fullyQualifiedNamespace): the function app sends synchronous "
            "answers and scheduled retries with the trigger's connection",
        )

    @classmethod
    def from_client(cls, client: Any, *, resources: Sequence[_Closable] = ()) -> ServiceBusOutbox:
        def factory(queue: str) -> OutboxSender:
            sender: OutboxSender = client.get_queue_sender(queue_name=queue)
            return sender

        return cls(factory, resources=(client, *resources))

    async def send(self, message: QueueMessage) -> None:
        if self._closed:
            raise TransientPublishError(f"queue={message.queue} message_id={message.message_id}: the outbox is closed")
        what = f"queue={message.queue} message_id={message.message_id}"
        try:
            sb_message = to_servicebus_message(message)
        except (TypeError, ValueError) as exc:  # e.g. an id longer than Service Bus allows
            raise PermanentPublishError(f"{what}: {exc}") from exc
        lock = self._locks.setdefault(message.queue, asyncio.Lock())
        async with lock:
            sender = self._senders.get(message.queue)
            if sender is None:
                sender = self._senders[message.queue] = self._factory(message.queue)
            try:
                await sender.send_messages(sb_message, timeout=SEND_TIMEOUT)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = translate(exc, what)
                if isinstance(error, TransientPublishError):
                    self._senders.pop(message.queue, None)
                    await _close_quietly(sender)
                raise error from exc
        self.sent += 1

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        senders, self._senders = list(self._senders.values()), {}
        for closable in (*senders, *self._resources):
            await _close_quietly(closable)


def translate(exc: BaseException, what: str) -> PublishError:
    """An SDK (or other) error as a `PublishError` naming the queue and message."""
    if isinstance(exc, PublishError):
        return exc
    text = f"{what}: {type(exc).__name__}: {exc}"
    if isinstance(exc, _permanent_errors()):
        return PermanentPublishError(text)
    return TransientPublishError(text)


def _permanent_errors() -> tuple[type[BaseException], ...]:
    from azure.core.exceptions import ClientAuthenticationError
    from azure.servicebus.exceptions import (
        MessageSizeExceededError,
        MessagingEntityDisabledError,
        MessagingEntityNotFoundError,
        ServiceBusAuthenticationError,
        ServiceBusAuthorizationError,
    )

    return (
        MessageSizeExceededError,
        MessagingEntityNotFoundError,
        MessagingEntityDisabledError,
        ServiceBusAuthenticationError,
        ServiceBusAuthorizationError,
        ClientAuthenticationError,
    )


async def _close_quietly(closable: _Closable) -> None:
    try:
        await closable.close()
    except Exception:
        log.warning("closing %s failed", type(closable).__name__, exc_info=True)


# -- the process's outbox -------------------------------------------------------------------------------

_installed: Outbox | None = None
_default: ServiceBusOutbox | None = None
_default_loop: asyncio.AbstractEventLoop | None = None


def install(box: Outbox | None) -> None:
    """Make `box` the process's outbox (the local functions host does); None goes back to Service Bus."""
    global _installed
    _installed = box


def installed() -> Outbox | None:
    return _installed


def outbox(settings: FunctionSettings) -> Outbox:
    """The process's outbox: the installed one, else the Service Bus outbox (made on first use, per event
    loop). Raises `ConfigurationError` when there is no Service Bus connection to send with."""
    global _default, _default_loop
    if _installed is not None:
        return _installed
    loop = asyncio.get_running_loop()
    if _default is None or _default_loop is not loop:
        _default = ServiceBusOutbox.from_settings(settings)
        _default_loop = loop
    return _default


async def close() -> None:
    """Close the Service Bus outbox of this process, if one was made (the installed one is its owner's)."""
    global _default, _default_loop
    box, _default, _default_loop = _default, None, None
    if box is not None:
        await box.close()
