"""Slack Socket Mode protocol, without I/O: frames in, typed results and ack frames out.

`parse_frame()` turns one websocket text frame into exactly one of:

- `Hello`: the server's greeting (the socket is usable from here on),
- `Disconnect`: Slack asks us to go (`warning`, `refresh_requested`, `too_many_websockets`,
  `link_disabled`, ...),
- `EnvelopeFrame`: an `events_api`, `interactive` or `slash_commands` envelope, already turned into the
  queue contract's `Envelope` with its dedupe keys (stable id first, then the envelope_id) and the receiving
  app's name (`app`, when the worker serves several);
  `Envelope.accepts_response` is the frame's `accepts_response_payload` (view submissions, external select
  options, slash commands), which routes it to a `responds` route,
- `Invalid`: anything else, with a short machine-friendly `reason` (counted by the connector).

`build_ack()` builds the ack frame and guarantees it stays below Slack's 20 KB frame limit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from pydantic import ValidationError

from shared.envelope import Envelope, Kind, Platform, RetryInfo, utcnow
from shared.jsonfmt import compact

MAX_ACK_BYTES: Final = 20 * 1024
"""Slack drops (and may close the socket on) frames of this size or more."""
ANSWER_BUDGET_MS: Final = 3000
"""Slack wants the ack, answer included, within 3 s of sending the envelope."""
DEFAULT_MAX_FRAME_BYTES: Final = 1024 * 1024
MAX_ENVELOPE_ID_LENGTH: Final = 256

ENVELOPE_TYPES: Final = {
    "events_api": Kind.EVENTS_API,
    "interactive": Kind.INTERACTIVE,
    "slash_commands": Kind.SLASH_COMMANDS,
}

# Disconnect reasons (the `reason` of `{"type":"disconnect"}`).
WARNING: Final = "warning"
REFRESH_REQUESTED: Final = "refresh_requested"
TOO_MANY_WEBSOCKETS: Final = "too_many_websockets"
LINK_DISABLED: Final = "link_disabled"
ROTATION_REASONS: Final = frozenset({WARNING, REFRESH_REQUESTED})
"""Routine disconnects: open a replacement first, then retire the old socket (make-before-break)."""


@dataclass(frozen=True, slots=True)
class Hello:
    num_connections: int | None
    app_id: str | None
    host: str | None
    approximate_connection_time: int | None


@dataclass(frozen=True, slots=True)
class Disconnect:
    reason: str
    host: str | None = None


@dataclass(frozen=True, slots=True)
class EnvelopeFrame:
    envelope: Envelope
    keys: tuple[str, ...]
    """Dedupe keys, stable id first (`envelope.dedupe_key`): (event_id, envelope_id) for events_api, else
    (envelope_id,). `Handoff.deliver(envelope, answer, also=(envelope_id,))` derives the same order."""
    envelope_id: str
    accepts_response_payload: bool


@dataclass(frozen=True, slots=True)
class Invalid:
    reason: str
    """Short code for metrics: not_json, not_object, unknown_type, missing_envelope_id, bad_payload, oversized..."""
    detail: str
    envelope_id: str | None = None


Frame = Hello | Disconnect | EnvelopeFrame | Invalid

_FIRST_ATTEMPT = RetryInfo()


@dataclass(frozen=True, slots=True)
class AckFrame:
    text: str
    payload_dropped: bool = False
    """True when the requested ack payload would have reached the 20 KB limit and was left out."""


def parse_frame(
    data: str | bytes,
    *,
    connection_id: str | None = None,
    received_at: datetime | None = None,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    app: str | None = None,
) -> Frame:
    """Classify one inbound frame (its UTF-8 bytes, or text). Never raises: bad input becomes `Invalid`.

    Whatever a hostile frame makes the JSON parser or the envelope model raise (deep nesting, numbers out
    of range, invalid UTF-8) is that frame's problem: it comes back as `Invalid` with a reason."""
    size = frame_bytes(data, max_frame_bytes)
    if size > max_frame_bytes:
        return Invalid("oversized", f"frame of {size} bytes exceeds {max_frame_bytes}")
    try:
        return _parse(data, connection_id, received_at, app)
    except RecursionError:
        return Invalid("too_deep", "frame nests too deeply to parse")
    except Exception as exc:
        return Invalid("unparseable", f"{type(exc).__name__}: {str(exc)[:120]}")


def frame_bytes(data: str | bytes, limit: int) -> int:
    """The size of a frame in UTF-8 bytes (exact when it matters for `limit`, cheap otherwise)."""
    if isinstance(data, bytes):
        return len(data)
    n = len(data)
    if n > limit or n * 4 <= limit:  # already over, or cannot be over (at most 4 bytes per character)
        return n
    return len(data.encode("utf-8", "surrogatepass"))


def _parse(data: str | bytes, connection_id: str | None, received_at: datetime | None, app: str | None) -> Frame:
    try:
        obj = json.loads(data)
    except UnicodeDecodeError as exc:
        return Invalid("not_utf8", f"frame is not UTF-8: {exc.reason} at byte {exc.start}")
    except ValueError as exc:
        return Invalid("not_json", f"frame is not JSON: {str(exc)[:120]}")
    if not isinstance(obj, dict):
        return Invalid("not_object", f"frame is a JSON {type(obj).__name__}, not an object")
    frame_type = obj.get("type")
    if frame_type == "hello":
        return _hello(obj)
    if frame_type == "disconnect":
        reason = obj.get("reason")
        debug = obj.get("debug_info")
        host = debug.get("host") if isinstance(debug, dict) else None
        return Disconnect(reason if isinstance(reason, str) and reason else "unknown", _str_or_none(host))
    kind = ENVELOPE_TYPES.get(frame_type) if isinstance(frame_type, str) else None
    envelope_id = obj.get("envelope_id")
    if not isinstance(envelope_id, str) or not envelope_id:
        if kind is None:
            return Invalid("unknown_type", f"unknown frame type {frame_type!r}")
        return Invalid("missing_envelope_id", f"{frame_type} envelope without envelope_id")
    if len(envelope_id) > MAX_ENVELOPE_ID_LENGTH:
        return Invalid("bad_envelope_id", f"envelope_id of {len(envelope_id)} characters")
    if kind is None:
        return Invalid("unknown_type", f"unknown envelope type {frame_type!r}", envelope_id)
    payload = obj.get("payload")
    if not isinstance(payload, dict):
        return Invalid("bad_payload", f"{frame_type} envelope payload is not an object", envelope_id)
    try:
        return _envelope(kind, envelope_id, payload, obj, connection_id, received_at or utcnow(), app)
    except ValidationError as exc:
        return Invalid("bad_envelope", f"does not fit the envelope contract: {exc.error_count()} errors", envelope_id)
    except (ValueError, OverflowError, RecursionError) as exc:
        return Invalid("bad_envelope", f"{type(exc).__name__} while reading the envelope", envelope_id)


def build_ack(envelope_id: str, payload: dict[str, Any] | None = None, *, limit: int = MAX_ACK_BYTES) -> AckFrame:
    """The ack frame for an envelope; a payload that would make the frame reach `limit` bytes is dropped."""
    bare = compact({"envelope_id": envelope_id})
    if len(bare.encode()) >= limit:
        raise ValueError(f"envelope_id too long for an ack frame ({len(envelope_id)} characters)")
    if payload is None:
        return AckFrame(bare)
    full = compact({"envelope_id": envelope_id, "payload": payload})
    if len(full.encode()) >= limit:
        return AckFrame(bare, payload_dropped=True)
    return AckFrame(full)


def dedupe_keys(kind: Kind, envelope_id: str, payload: dict[str, Any]) -> tuple[str, ...]:
    """events_api: (event_id, envelope_id) so that a retry with a new envelope_id is still caught."""
    if kind is Kind.EVENTS_API:
        event_id = payload.get("event_id")
        if isinstance(event_id, str) and event_id:
            return (event_id, envelope_id)
    return (envelope_id,)


def _hello(obj: dict[str, Any]) -> Hello:
    info = obj.get("connection_info")
    debug = obj.get("debug_info")
    info = info if isinstance(info, dict) else {}
    debug = debug if isinstance(debug, dict) else {}
    return Hello(
        num_connections=_int_or_none(obj.get("num_connections")),
        app_id=_str_or_none(info.get("app_id")),
        host=_str_or_none(debug.get("host")),
        approximate_connection_time=_int_or_none(debug.get("approximate_connection_time")),
    )


def _envelope(
    kind: Kind,
    envelope_id: str,
    payload: dict[str, Any],
    obj: dict[str, Any],
    connection_id: str | None,
    received_at: datetime,
    app: str | None = None,
) -> EnvelopeFrame:
    keys = dedupe_keys(kind, envelope_id, payload)
    event_id: str | None = keys[0] if len(keys) == 2 else None
    if app is not None:  # two apps may see the same event: their stable ids (MessageIds) must not collide
        keys = (f"{app}:{keys[0]}", *keys[1:])
    if kind is Kind.EVENTS_API:
        event = payload.get("event")
        event = event if isinstance(event, dict) else {}
        event_type = _str_or_none(event.get("type"))
        tenant = _str_or_none(payload.get("team_id")) or _authorization_team(payload) or _str_or_none(event.get("team"))
        channel = _channel_of(event)
    elif kind is Kind.INTERACTIVE:
        event_type = _str_or_none(payload.get("type"))
        tenant = _id_of(payload.get("team")) or _str_or_none(_dict(payload.get("user")).get("team_id"))
        channel = _id_of(payload.get("channel")) or _str_or_none(_dict(payload.get("container")).get("channel_id"))
    else:
        event_type = _str_or_none(payload.get("command"))
        tenant = _str_or_none(payload.get("team_id"))
        channel = _str_or_none(payload.get("channel_id"))
    accepts = obj.get("accepts_response_payload") is True
    attempt = max(_int_or_none(obj.get("retry_attempt")) or 0, 0)
    reason = _str_or_none(obj.get("retry_reason"))
    retry = _FIRST_ATTEMPT if attempt == 0 and reason is None else RetryInfo(attempt=attempt, reason=reason)
    envelope = Envelope(
        dedupe_key=keys[0],
        platform=Platform.SLACK,
        kind=kind,
        event_type=event_type,
        envelope_id=envelope_id,
        event_id=event_id,
        tenant=tenant,
        conversation_key=channel or tenant,
        received_at=received_at,
        connection_id=connection_id,
        retry=retry,
        accepts_response=accepts,
        app=app,
        payload=payload,
    )
    return EnvelopeFrame(envelope, keys, envelope_id, accepts)


def _channel_of(event: dict[str, Any]) -> str | None:
    channel = event.get("channel")
    if isinstance(channel, str) and channel:
        return channel
    if isinstance(channel, dict):
        return _id_of(channel)
    item = event.get("item")
    if isinstance(item, dict):
        return _str_or_none(item.get("channel"))
    return _str_or_none(event.get("channel_id"))


def _authorization_team(payload: dict[str, Any]) -> str | None:
    auths = payload.get("authorizations")
    if isinstance(auths, list) and auths and isinstance(auths[0], dict):
        return _str_or_none(auths[0].get("team_id"))
    return None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _id_of(value: Any) -> str | None:
    return _str_or_none(value.get("id")) if isinstance(value, dict) else None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None
