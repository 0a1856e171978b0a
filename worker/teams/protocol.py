"""Teams socket mode on top of SignalR, without I/O: deliveries in, envelopes and completions out.

The delivery rules live here, in one place, as pure functions:

- `classify(arguments)`: an `Activity` (shipped) or `activity` (draft) invocation's argument into
  `Accepted(delivery, envelope)` or `Refused(status 400, reason, …)`: no envelope object, no envelopeId,
  no activity, a `protocolVersion` above 1 (refused before any handler runs, as the contract says), or an
  activity that does not fit the envelope contract. Never raises.
- `answer_status(ack)`: 200 when the envelope is durable, 500 otherwise (the service redelivers).
- `answer(verdict_ack, status, body, fallback)`: an invoke's completion status and body: the function's
  answer, or the fallback (status 500, `{"error": …}`, what teams.py sends for a failed handler) when no
  valid answer came in time.
- `completion_result()`: the completion `result` the shipped contract expects; invokes also carry `body`.
- `Delivery.dedupe_keys()`: `conversation.id/activity.id` first (stable across redeliveries, the
  MessageId), then the envelopeId, the order `Handoff.deliver` uses for every platform.
- `normalise_keys()`: camelCase or PascalCase keys, written once (envelopes and `SocketReady`).
- `is_delivery_target()`, `is_ready_target()`: case-insensitive target names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from shared.envelope import Envelope, Kind, Platform, utcnow
from shared.errors import InvalidEnvelopeError

SUPPORTED_PROTOCOL_VERSION = 1
DELIVERY_TARGETS = frozenset({"activity"})
READY_TARGETS = frozenset({"socketready"})

STATUS_OK = 200
STATUS_BAD_REQUEST = 400
STATUS_FAILED = 500
DEFAULT_DEADLINE_MS = 5000
"""An invoke's budget when its envelope carries no `deadlineMs` (message extensions: 5 s)."""
FALLBACK_ERRORS = {
    "timeout": "bot did not answer in time",
    "handler_error": "bot handler error",
    "invalid": "bot answer invalid",
}
"""The `error` of a fallback invoke completion (status 500), as teams.py answers a failed handler."""


def is_delivery_target(target: str) -> bool:
    return target.lower() in DELIVERY_TARGETS


def is_ready_target(target: str) -> bool:
    return target.lower() in READY_TARGETS


def _camel(key: str) -> str:
    return key[:1].lower() + key[1:] if key else key


def normalise_keys(data: dict[str, Any], probe: str = "envelopeId") -> dict[str, Any]:
    """Top-level keys camelCased (`EnvelopeId` → `envelopeId`); the activity inside is left as received.

    `probe` is a key the camelCase form has: when present, nothing needs copying (the usual case)."""
    if probe in data:
        return data
    return {_camel(k) if isinstance(k, str) else k: v for k, v in data.items()}


@dataclass(frozen=True, slots=True)
class Delivery:
    """One envelope from the service: its routing fields and the Bot Framework activity, unchanged."""

    envelope_id: str
    activity: dict[str, Any]
    protocol_version: int = SUPPORTED_PROTOCOL_VERSION
    envelope_type: str | None = None
    bot_key: str | None = None
    cv: str | None = None
    deadline_ms: int | None = None
    ack_required: bool = True

    @property
    def activity_type(self) -> str | None:
        value = self.activity.get("type")
        return value if isinstance(value, str) else None

    @property
    def is_invoke(self) -> bool:
        return (self.envelope_type or "").lower() == "invoke" or (self.activity_type or "").lower() == "invoke"

    @property
    def conversation_id(self) -> str | None:
        conversation = self.activity.get("conversation")
        if isinstance(conversation, dict):
            value = conversation.get("id")
            return value if isinstance(value, str) else None
        return None

    @property
    def activity_id(self) -> str | None:
        value = self.activity.get("id")
        return value if isinstance(value, str) else None

    @property
    def tenant(self) -> str | None:
        channel_data = self.activity.get("channelData")
        if isinstance(channel_data, dict):
            tenant = channel_data.get("tenant")
            if isinstance(tenant, dict) and isinstance(tenant.get("id"), str):
                return str(tenant["id"])
        conversation = self.activity.get("conversation")
        if isinstance(conversation, dict) and isinstance(conversation.get("tenantId"), str):
            return str(conversation["tenantId"])
        return None

    @property
    def event_type(self) -> str | None:
        """The activity type, or for invokes the invoke name (`adaptiveCard/action`)."""
        if self.is_invoke:
            name = self.activity.get("name")
            if isinstance(name, str) and name:
                return name
        return self.activity_type

    def dedupe_keys(self) -> tuple[str, ...]:
        """conversation.id/activity.id first (a redelivery may carry a new envelopeId), then envelopeId."""
        conversation_id, activity_id = self.conversation_id, self.activity_id
        if conversation_id and activity_id:
            return (f"{conversation_id}/{activity_id}", self.envelope_id)
        return (self.envelope_id,)

    def to_envelope(
        self, connection_id: str | None = None, received_at: datetime | None = None, app: str | None = None
    ) -> Envelope:
        keys = self.dedupe_keys()
        invoke = self.is_invoke
        return Envelope(
            # two bots in one conversation see the same activity: their stable ids (MessageIds) must not collide
            dedupe_key=keys[0] if app is None else f"{app}:{keys[0]}",
            platform=Platform.TEAMS,
            kind=Kind.INVOKE if invoke else Kind.ACTIVITY,
            event_type=self.event_type,
            envelope_id=self.envelope_id,
            activity_id=self.activity_id,
            tenant=self.tenant,
            conversation_key=self.conversation_id,
            received_at=received_at or utcnow(),
            connection_id=connection_id,
            accepts_response=invoke,
            app=app,
            payload=self.activity,
        )


def parse_delivery(arguments: list[Any]) -> Delivery:
    """The first argument of an Activity invocation, validated. Raises `InvalidEnvelopeError`."""
    if not arguments or not isinstance(arguments[0], dict):
        raise InvalidEnvelopeError("no_envelope", "the invocation carries no envelope object")
    data = normalise_keys(arguments[0])
    envelope_id = data.get("envelopeId")
    if not isinstance(envelope_id, str) or not envelope_id:
        raise InvalidEnvelopeError("no_envelope_id", "envelopeId is missing")
    activity = data.get("payload", data.get("activity"))
    if not isinstance(activity, dict):
        raise InvalidEnvelopeError("no_activity", f"envelope {envelope_id} carries no activity")
    version = data.get("protocolVersion", SUPPORTED_PROTOCOL_VERSION)
    if isinstance(version, str) and version.isascii() and version.isdigit() and len(version) < 10:
        version = int(version)
    if not isinstance(version, int) or isinstance(version, bool):
        raise InvalidEnvelopeError("bad_protocol_version", f"envelope {envelope_id}: {str(version)[:40]!r}")
    deadline = data.get("deadlineMs")
    if isinstance(deadline, float) and not math.isfinite(deadline):
        deadline = None
    return Delivery(
        envelope_id=envelope_id,
        activity=activity,
        protocol_version=version,
        envelope_type=_str_or_none(data.get("type")),
        bot_key=_str_or_none(data.get("botKey")),
        cv=_str_or_none(data.get("cv")),
        deadline_ms=_deadline(deadline),
        ack_required=bool(data.get("ackRequired", True)),
    )


def peek_envelope_id(arguments: list[Any]) -> tuple[str | None, str | None]:
    """Best-effort (envelopeId, botKey) of a rejected envelope, so even a 400 names what it refuses."""
    if arguments and isinstance(arguments[0], dict):
        data = normalise_keys(arguments[0])
        return _str_or_none(data.get("envelopeId")), _str_or_none(data.get("botKey"))
    return None, None


def completion_result(
    envelope_id: str | None,
    bot_key: str | None,
    status: int,
    recv_at_ms: int,
    ts_ms: int,
    body: Any = None,
    invoke: bool = False,
) -> dict[str, Any]:
    """The completion `result` for one envelope; invokes also carry `body` (None unless a synchronous answer)."""
    result: dict[str, Any] = {
        "protocolVersion": SUPPORTED_PROTOCOL_VERSION,
        "envelopeId": envelope_id,
        "botKey": bot_key,
        "status": status,
        "recvAt": recv_at_ms,
        "ts": ts_ms,
    }
    if invoke:
        result["body"] = body
    return result


@dataclass(frozen=True, slots=True)
class Accepted:
    """A delivery to hand off: the envelope built from it and its dedupe keys."""

    delivery: Delivery
    envelope: Envelope

    @property
    def also(self) -> tuple[str, ...]:
        """The transport id(s) after `envelope.dedupe_key` (for `Handoff.deliver(..., also=...)`)."""
        return (self.delivery.envelope_id,)


@dataclass(frozen=True, slots=True)
class Refused:
    """A delivery answered without a hand-off (status 400), with what is known of it for the log line."""

    reason: str
    """Short code for metrics: no_envelope, no_envelope_id, no_activity, protocol_version, bad_envelope, …"""
    detail: str
    envelope_id: str | None = None
    bot_key: str | None = None
    cv: str | None = None
    is_invoke: bool = False
    status: int = STATUS_BAD_REQUEST


def classify(
    arguments: list[Any], connection_id: str | None = None, received_at: datetime | None = None, app: str | None = None
) -> Accepted | Refused:
    """Apply the delivery rules to one invocation's arguments (`app`: the receiving bot's name, when the worker
    serves several). Never raises."""
    try:
        delivery = parse_delivery(arguments)
    except InvalidEnvelopeError as exc:
        envelope_id, bot_key = peek_envelope_id(arguments)
        return Refused(exc.reason, exc.detail, envelope_id, bot_key)
    except Exception as exc:  # whatever hostile input makes the parser raise
        envelope_id, bot_key = peek_envelope_id(arguments)
        return Refused("unparseable", f"{type(exc).__name__}", envelope_id, bot_key)
    refused = Refused("", "", delivery.envelope_id, delivery.bot_key, delivery.cv, delivery.is_invoke)
    if delivery.protocol_version > SUPPORTED_PROTOCOL_VERSION:
        return _with(refused, "protocol_version", f"protocolVersion {delivery.protocol_version} is not supported")
    try:
        envelope = delivery.to_envelope(connection_id, received_at, app)
    except (ValidationError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        return _with(refused, "bad_envelope", f"does not fit the envelope contract ({type(exc).__name__})")
    return Accepted(delivery, envelope)


def answer_status(ack: bool) -> int:
    """200 when the envelope is durable (published or a duplicate of a durable one), else 500: redeliver."""
    return STATUS_OK if ack else STATUS_FAILED


def answer(ack: bool, status: int | None = None, body: Any = None, fallback: str | None = None) -> tuple[int, Any]:
    """The completion's (status, body): not durable 500; a function's answer as it is; the fallback 500 with
    `{"error": …}` (timeout, handler_error, invalid); a durable envelope nobody answers 200 without a body."""
    if not ack:
        return STATUS_FAILED, None
    if fallback is not None:
        return STATUS_FAILED, {"error": FALLBACK_ERRORS.get(fallback, "bot answer failed")}
    if status is not None:
        return status, body
    return STATUS_OK, None


def deadline_ms(delivery: Delivery) -> int:
    """The delivery's budget in milliseconds (`deadlineMs`, else `DEFAULT_DEADLINE_MS`)."""
    return delivery.deadline_ms or DEFAULT_DEADLINE_MS


def _with(refused: Refused, reason: str, detail: str) -> Refused:
    return Refused(reason, detail, refused.envelope_id, refused.bot_key, refused.cv, refused.is_invoke)


def _deadline(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return int(value) if 0 < value < 10**12 else None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
