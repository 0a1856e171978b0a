"""Direct Line 3.0, without I/O: stream frames in, activities to publish and envelopes out.

`parse_frame(data)` turns one websocket message into exactly one of:

- `ActivitySet`: `{"activities": [...], "watermark": "..."}` (the same shape `GET …/activities` answers,
  `parse_activity_set(obj)`); the watermark may be absent;
- `KeepAlive`: the empty messages Direct Line sends to keep the socket alive (`""`, whitespace, `{}`);
- `Malformed`: anything else, with a short `reason` for metrics (not_json, not_object, not_utf8, oversized,
  bad_activities, bad_watermark, too_deep, unparseable).

`sort_activities(activity_set, ...)` says what to do with each activity: publish it (`Publish`, its id is the
dedupe key), skip it as the bridge's own message echoed back (`OWN`), or reject it (`Rejected`: no id, not an
object, the wrong conversation, too large). Only the bot's activities are published: `from.role == "bot"`, or a
sender that is not one of the bridge's user ids (`shared.directline.is_bridge_user`).

Watermarks: Direct Line's are decimal sequence numbers; `watermark_order(w)` is the number (None for anything
else), `is_behind(new, current)` tells a watermark going backwards (counted, ignored).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from shared.directline import is_bridge_user
from shared.envelope import Envelope, Kind, Platform, utcnow

MAX_ACTIVITY_ID_LENGTH: Final = 512
MAX_WATERMARK_LENGTH: Final = 64
DEFAULT_MAX_FRAME_BYTES: Final = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ActivitySet:
    activities: tuple[Any, ...]
    """As received: usually dicts; anything else is rejected one by one by `sort_activities`."""
    watermark: str | None


@dataclass(frozen=True, slots=True)
class KeepAlive:
    pass


@dataclass(frozen=True, slots=True)
class Malformed:
    reason: str
    detail: str


Frame = ActivitySet | KeepAlive | Malformed

KEEP_ALIVE: Final = KeepAlive()


def parse_frame(data: str | bytes, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> Frame:
    """Classify one stream message. Never raises: bad input becomes `Malformed`."""
    size = len(data) if isinstance(data, bytes) else len(data.encode("utf-8", "surrogatepass"))
    if size > max_frame_bytes:
        return Malformed("oversized", f"frame of {size} bytes exceeds {max_frame_bytes}")
    try:
        return _parse(data)
    except RecursionError:
        return Malformed("too_deep", "frame nests too deeply to parse")
    except Exception as exc:
        return Malformed("unparseable", f"{type(exc).__name__}: {str(exc)[:120]}")


def _parse(data: str | bytes) -> Frame:
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            return Malformed("not_utf8", f"frame is not UTF-8: {exc.reason} at byte {exc.start}")
    else:
        text = data
    if not text.strip():
        return KEEP_ALIVE
    try:
        obj = json.loads(text)
    except ValueError as exc:
        return Malformed("not_json", f"frame is not JSON: {str(exc)[:120]}")
    if isinstance(obj, dict) and not obj:
        return KEEP_ALIVE
    return parse_activity_set(obj)


def parse_activity_set(obj: object) -> ActivitySet | Malformed:
    """An `ActivitySet` from parsed JSON (a stream frame's or a `GET …/activities` answer's)."""
    if not isinstance(obj, dict):
        return Malformed("not_object", f"frame is a JSON {type(obj).__name__}, not an object")
    activities = obj.get("activities", [])
    if activities is None:
        activities = []
    if not isinstance(activities, list):
        return Malformed("bad_activities", f"activities is a {type(activities).__name__}, not a list")
    watermark = obj.get("watermark")
    if watermark is not None and (not isinstance(watermark, str) or len(watermark) > MAX_WATERMARK_LENGTH):
        return Malformed("bad_watermark", f"watermark is not a short string ({type(watermark).__name__})")
    if "activities" not in obj and watermark is None:
        # neither part of an activity set: a message type defined later ("other types … identified by a
        # property in the JSON root"), not something to act on
        return Malformed("unknown_message", f"message with keys {sorted(obj)[:5]} is no activity set")
    return ActivitySet(tuple(activities), watermark or None)


def watermark_order(watermark: str | None) -> int | None:
    """The sequence number of a Direct Line watermark (decimal digits), else None (no order known)."""
    if watermark is None or not (0 < len(watermark) <= 18) or not watermark.isascii() or not watermark.isdigit():
        return None
    return int(watermark)


def is_behind(new: str | None, current: str | None) -> bool:
    """True when `new` is an older position than `current` (a watermark going backwards)."""
    a, b = watermark_order(new), watermark_order(current)
    return a is not None and b is not None and a < b


def is_ahead(new: str | None, current: str | None) -> bool:
    """True when `new` is a later position than `current` (or there is no `current` yet)."""
    if new is None:
        return False
    if current is None:
        return True
    a, b = watermark_order(new), watermark_order(current)
    if a is None or b is None:
        return new != current
    return a > b


# --- which activities are published -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Publish:
    activity: dict[str, Any]
    activity_id: str


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: str
    detail: str
    activity_id: str | None = None


class _Own:
    __slots__ = ()

    def __repr__(self) -> str:
        return "OWN"


OWN: Final = _Own()
"""The bridge's own message (one of its user ids), echoed back by Direct Line: not published."""

Sorted = Publish | Rejected | _Own


def sort_activity(
    activity: object,
    conversation_id: str,
    *,
    max_activity_bytes: int | None = None,
    is_own: Callable[[object], bool] = is_bridge_user,
) -> Sorted:
    """What to do with one received activity (pure; never raises)."""
    if not isinstance(activity, dict):
        return Rejected("activity_not_object", f"activity is a JSON {type(activity).__name__}")
    activity_id = activity.get("id")
    if not isinstance(activity_id, str) or not activity_id.strip():
        kind = activity.get("type")
        return Rejected("missing_id", f"{str(kind)[:40]!r} activity without an id")
    if len(activity_id) > MAX_ACTIVITY_ID_LENGTH:
        return Rejected("bad_id", f"activity id of {len(activity_id)} characters")
    conversation = activity.get("conversation")
    named = conversation.get("id") if isinstance(conversation, dict) else None
    if isinstance(named, str) and named and named != conversation_id:
        return Rejected("wrong_conversation", "activity names another conversation", activity_id)
    sender = activity.get("from")
    role = sender.get("role") if isinstance(sender, dict) else None
    if role != "bot" and isinstance(sender, dict) and is_own(sender.get("id")):
        return OWN
    if max_activity_bytes is not None:
        size = activity_size(activity)
        if size > max_activity_bytes:
            return Rejected("oversized", f"activity of {size} bytes exceeds {max_activity_bytes}", activity_id)
    return Publish(activity, activity_id)


def activity_size(activity: dict[str, Any]) -> int:
    try:
        return len(json.dumps(activity, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass"))
    except (TypeError, ValueError, RecursionError):
        return 1 << 62


def envelope_for(
    item: Publish,
    conversation_id: str,
    *,
    received_at: datetime | None = None,
    connection_id: str | None = None,
) -> Envelope:
    """The queue envelope of one bot activity: dedupe key and MessageId = the activity id, session = conversation."""
    activity = item.activity
    kind = activity.get("type")
    return Envelope(
        dedupe_key=item.activity_id,
        platform=Platform.DIRECTLINE,
        kind=Kind.ACTIVITY,
        event_type=kind if isinstance(kind, str) and kind else None,
        activity_id=item.activity_id,
        conversation_key=conversation_id,
        received_at=received_at or utcnow(),
        connection_id=connection_id,
        payload=activity,
    )
