"""The envelope contract: what the worker puts on a queue and what a function reads back.

The JSON form of `Envelope` is the queue message body. Service Bus application properties carry
`platform`, `kind`, `tenant` and `event_type` (see `application_properties`) so that routing and
filtering never need to parse the body.

The model is frozen and forbids unknown fields; `schema_version` lets readers refuse bodies from a
future writer with a clear error instead of a confusing one. `payload` is the platform's own payload,
unchanged (Slack's `payload`, the Bot Framework activity).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.errors import InvalidEnvelopeError

SCHEMA_VERSION = 1
MAX_MESSAGE_ID_LENGTH = 128


class Platform(StrEnum):
    SLACK = "slack"
    TEAMS = "teams"
    DIRECTLINE = "directline"


class Kind(StrEnum):
    # Slack Socket Mode envelope types
    EVENTS_API = "events_api"
    INTERACTIVE = "interactive"
    SLASH_COMMANDS = "slash_commands"
    # Bot Framework activities (Teams, Direct Line)
    ACTIVITY = "activity"
    INVOKE = "invoke"


class RetryInfo(BaseModel):
    """How often the platform has already tried to deliver this envelope, and why."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    attempt: int = Field(default=0, ge=0)
    reason: str | None = None


class ReplyAddress(BaseModel):
    """Where a function sends its synchronous answer to this envelope (Service Bus request/reply).

    `queue` is the session-enabled reply queue, `session_id` names the worker process that holds the
    socket and waits (`ReplyToSessionId`); the answer's CorrelationId is the envelope's MessageId.
    `deadline` is when the worker stops waiting and sends the platform its fallback: an answer after it
    is dropped (and counted) by the worker, so a function need not send one."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    queue: str = Field(min_length=1)
    session_id: str = Field(min_length=1, max_length=128)
    deadline: datetime


class Envelope(BaseModel):
    """One platform event, as it travels from the worker through a queue to a function."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1  # SCHEMA_VERSION
    dedupe_key: str = Field(min_length=1)
    platform: Platform
    kind: Kind
    event_type: str | None = None
    """The finer type used for dispatch: a Slack event type (`app_mention`), an interactive type
    (`block_actions`), a slash command (`/ticket`), an activity type (`message`) or invoke name."""

    envelope_id: str | None = None
    event_id: str | None = None
    activity_id: str | None = None
    tenant: str | None = None
    """Slack team id or Teams (Entra) tenant id."""
    conversation_key: str | None = None
    """Orders messages per conversation: becomes the Service Bus SessionId on session queues."""

    received_at: datetime
    connection_id: str | None = None
    retry: RetryInfo = RetryInfo()
    accepts_response: bool = False
    """The platform takes an answer in the ack (Slack `accepts_response_payload`, Teams invokes): such
    envelopes travel on routes marked `responds` and may carry `reply_to`."""
    reply_to: ReplyAddress | None = None
    """Set by the worker when it waits for the answer (see `ReplyAddress`)."""
    app: str | None = Field(default=None, min_length=1, max_length=32)
    """Which of the deployment's Slack apps / Teams bots received it (`RELAYBUS_SLACK_APPS`, `RELAYBUS_TEAMS_BOTS`;
    see `shared.apps`); None for the single app of the unsuffixed settings. Left out of the body when None, so a
    single-app body is what it always was (and what readers of schema 1 without this field accept)."""
    payload: dict[str, Any]

    @property
    def message_id(self) -> str:
        """The Service Bus MessageId: the dedupe key, hashed when longer than Service Bus allows."""
        return message_id_for(self.dedupe_key)

    def application_properties(self) -> dict[str, str]:
        """Properties that let routing and filtering work without parsing the body."""
        props = {
            "schema_version": str(self.schema_version),
            "platform": self.platform.value,
            "kind": self.kind.value,
        }
        if self.tenant:
            props["tenant"] = self.tenant
        if self.event_type:
            props["event_type"] = self.event_type
        if self.app:
            props["app"] = self.app
        return props

    def to_body(self) -> bytes:
        """The queue message body (`app` only when set)."""
        if self.app is None:
            return self.model_dump_json(exclude=_NO_APP).encode()
        return self.model_dump_json().encode()

    @classmethod
    def from_body(cls, body: bytes | str) -> Envelope:
        """Parse a queue message body; anything that does not fit raises `InvalidEnvelopeError`."""
        try:
            return cls.model_validate_json(body)
        except ValidationError as exc:
            raise InvalidEnvelopeError("InvalidBody", _describe(exc)) from exc
        except Exception as exc:  # whatever a hostile body makes the parser raise is that body's problem
            raise InvalidEnvelopeError("InvalidBody", f"{type(exc).__name__}: {str(exc)[:200]}") from exc


_NO_APP: set[str] = {"app"}


def message_id_for(dedupe_key: str) -> str:
    """Service Bus MessageIds are at most 128 characters: longer keys are replaced by their SHA-256."""
    if len(dedupe_key) <= MAX_MESSAGE_ID_LENGTH:
        return dedupe_key
    return "sha256:" + hashlib.sha256(dedupe_key.encode()).hexdigest()


def utcnow() -> datetime:
    return datetime.now(UTC)


def _describe(exc: ValidationError) -> str:
    """A one-line, readable summary of a validation error (used as a dead-letter description)."""
    errors = exc.errors(include_url=False, include_input=False)
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{loc}: {err['msg']}")
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more
