"""How an envelope becomes a queue message: the part of the contract both queue backends store.

`build_message(envelope, route)` is pure: MessageId = the envelope's dedupe key (hashed when longer than
Service Bus allows), SessionId = the conversation on session queues, application properties for
routing and filtering without parsing the body.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from shared.envelope import Envelope
from shared.routes import Route


@dataclass(frozen=True, slots=True)
class QueueMessage:
    """A backend-neutral outbound message: what Service Bus and the local queue both store.

    The optional fields are Service Bus' own message properties, used by request/reply (`correlation_id`,
    `reply_to`, `reply_to_session_id`), by answers that expire (`time_to_live`, seconds) and by retries that
    wait (`scheduled_enqueue_time`)."""

    queue: str
    message_id: str
    body: bytes
    session_id: str | None = None
    application_properties: Mapping[str, str] = field(default_factory=dict)
    correlation_id: str | None = None
    reply_to: str | None = None
    reply_to_session_id: str | None = None
    time_to_live: float | None = None
    scheduled_enqueue_time: datetime | None = None


def build_message(envelope: Envelope, route: Route, queue_name: str | None = None) -> QueueMessage:
    """The message for an envelope on a route (MessageId = dedupe key, SessionId on session queues;
    ReplyTo / ReplyToSessionId when the worker waits for an answer)."""
    reply = envelope.reply_to
    return QueueMessage(
        queue=queue_name or route.queue,
        message_id=envelope.message_id,
        body=envelope.to_body(),
        session_id=route.session_id(envelope),
        application_properties=envelope.application_properties(),
        reply_to=reply.queue if reply is not None else None,
        reply_to_session_id=reply.session_id if reply is not None else None,
    )
