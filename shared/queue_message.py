"""How an envelope becomes a queue message: the part of the contract both queue backends store.

`build_message(envelope, route)` is pure: MessageId = the envelope's dedupe key (hashed when longer than
Service Bus allows), SessionId = the conversation on session queues, application properties for
routing and filtering without parsing the body.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from shared.envelope import Envelope
from shared.routes import Route


@dataclass(frozen=True, slots=True)
class QueueMessage:
    """A backend-neutral outbound message: what Service Bus and the local queue both store."""

    queue: str
    message_id: str
    body: bytes
    session_id: str | None = None
    application_properties: Mapping[str, str] = field(default_factory=dict)


def build_message(envelope: Envelope, route: Route, queue_name: str | None = None) -> QueueMessage:
    """The message for an envelope on a route (MessageId = dedupe key, SessionId on session queues)."""
    return QueueMessage(
        queue=queue_name or route.queue,
        message_id=envelope.message_id,
        body=envelope.to_body(),
        session_id=route.session_id(envelope),
        application_properties=envelope.application_properties(),
    )
