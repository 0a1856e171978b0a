"""The SignalR JSON hub protocol, client side, without I/O.

What this module holds:

- `FrameBuffer`: splits text (or UTF-8 bytes) on the 0x1E record separator and keeps a partial frame until
  the rest arrives (one websocket message may carry several frames or part of one). Bytes are split before
  they are decoded (0x1E never occurs inside a UTF-8 sequence), so one frame of invalid UTF-8 is one
  `MalformedFrame("not_utf8")`, not a broken connection.
- `ClientProtocol`: the handshake (`{"protocol":"json","version":1}` out, `{}` or `{"error":…}` in),
  then turns inbound text into typed messages (types 1-9) or `MalformedFrame` events, and encodes
  what a client sends (completions, pings, close).
- the message dataclasses, one per SignalR message type.

Nothing here touches a socket or a clock: `worker.teams.connection` moves the frames.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from shared.errors import RelaybusError
from shared.jsonfmt import compact

RECORD_SEPARATOR = "\x1e"
PROTOCOL_NAME = "json"
PROTOCOL_VERSION = 1
MAX_BUFFERED_CHARS = 4 * 1024 * 1024
"""A partial frame larger than this is a broken peer, not a slow one."""


class SignalRProtocolError(RelaybusError):
    """The peer broke the protocol in a way the connection cannot continue from (bad handshake, overflow)."""


class HandshakeError(SignalRProtocolError):
    """The server refused the handshake (`{"error": …}`) or answered something else."""


class MessageType(IntEnum):
    INVOCATION = 1
    STREAM_ITEM = 2
    COMPLETION = 3
    STREAM_INVOCATION = 4
    CANCEL_INVOCATION = 5
    PING = 6
    CLOSE = 7
    ACK = 8
    SEQUENCE = 9


@dataclass(frozen=True, slots=True)
class Invocation:
    target: str
    arguments: list[Any]
    invocation_id: str | None = None
    """Set when the server expects a completion (client results); None for fire-and-forget."""


@dataclass(frozen=True, slots=True)
class StreamItem:
    invocation_id: str
    item: Any


@dataclass(frozen=True, slots=True)
class Completion:
    invocation_id: str
    result: Any = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class StreamInvocation:
    invocation_id: str
    target: str
    arguments: list[Any]


@dataclass(frozen=True, slots=True)
class CancelInvocation:
    invocation_id: str


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Close:
    error: str | None = None
    allow_reconnect: bool = False


@dataclass(frozen=True, slots=True)
class Ack:
    sequence_id: int


@dataclass(frozen=True, slots=True)
class Sequence:
    sequence_id: int


@dataclass(frozen=True, slots=True)
class MalformedFrame:
    """A frame that could not be understood; the connection goes on, the frame is counted and dropped."""

    reason: str
    """Short code for metrics: not_json, not_object, bad_type, missing_field."""
    detail: str = ""


HubMessage = Invocation | StreamItem | Completion | StreamInvocation | CancelInvocation | Ping | Close | Ack | Sequence
Event = HubMessage | MalformedFrame


@dataclass
class FrameBuffer:
    """Accumulates text or bytes and yields complete frames; the unterminated tail is kept for the next feed.

    Frames fed as bytes come back as bytes (decode each one: see `ClientProtocol.receive`)."""

    max_chars: int = MAX_BUFFERED_CHARS
    _tail: str = field(default="", repr=False)
    _btail: bytes = field(default=b"", repr=False)

    @property
    def pending(self) -> int:
        """Characters (or bytes) of an incomplete frame waiting for the rest."""
        return len(self._tail) + len(self._btail)

    def feed(self, data: str) -> list[str]:
        text = self._tail + data if self._tail else data
        parts = text.split(RECORD_SEPARATOR)
        self._tail = parts.pop()
        if len(self._tail) > self.max_chars:
            self._tail = ""
            raise SignalRProtocolError(f"partial frame exceeds {self.max_chars} characters")
        return [p for p in parts if p]

    def feed_bytes(self, data: bytes) -> list[bytes]:
        raw = self._btail + data if self._btail else data
        parts = raw.split(b"\x1e")
        self._btail = parts.pop()
        if len(self._btail) > self.max_chars:
            self._btail = b""
            raise SignalRProtocolError(f"partial frame exceeds {self.max_chars} bytes")
        return [p for p in parts if p]


def encode(message: dict[str, Any]) -> str:
    """One frame: compact JSON plus the record separator."""
    return compact(message) + RECORD_SEPARATOR


def handshake_request() -> str:
    return encode({"protocol": PROTOCOL_NAME, "version": PROTOCOL_VERSION})


def ping() -> str:
    return encode({"type": MessageType.PING})


def completion(invocation_id: str, result: Any = None, error: str | None = None) -> str:
    """A completion for a client result: `result` (possibly null) or `error`, never both."""
    message: dict[str, Any] = {"type": MessageType.COMPLETION, "invocationId": invocation_id}
    if error is not None:
        message["error"] = error
    else:
        message["result"] = result
    return encode(message)


def close(error: str | None = None, allow_reconnect: bool = False) -> str:
    message: dict[str, Any] = {"type": MessageType.CLOSE}
    if error is not None:
        message["error"] = error
    if allow_reconnect:
        message["allowReconnect"] = True
    return encode(message)


def invocation(target: str, arguments: list[Any], invocation_id: str | None = None) -> str:
    message: dict[str, Any] = {"type": MessageType.INVOCATION, "target": target, "arguments": arguments}
    if invocation_id is not None:
        message["invocationId"] = invocation_id
    return encode(message)


def parse_message(frame: str | bytes) -> Event:
    """Parse one frame (without its separator) into a message or a `MalformedFrame`. Never raises: whatever
    a hostile frame makes the parser raise (deep nesting, `1e999` or `Infinity` where an integer belongs,
    invalid UTF-8) is that frame's problem."""
    try:
        return _parse_message(frame)
    except RecursionError:
        return MalformedFrame("too_deep", "frame nests too deeply to parse")
    except Exception as exc:
        return MalformedFrame("unparseable", f"{type(exc).__name__}: {str(exc)[:100]}")


def _parse_message(frame: str | bytes) -> Event:
    try:
        data = json.loads(frame)
    except UnicodeDecodeError as exc:
        return MalformedFrame("not_utf8", f"{exc.reason} at byte {exc.start}")
    except ValueError as exc:
        return MalformedFrame("not_json", str(exc)[:120])
    if not isinstance(data, dict):
        return MalformedFrame("not_object", type(data).__name__)
    kind = data.get("type")
    if not isinstance(kind, int) or isinstance(kind, bool):
        return MalformedFrame("bad_type", repr(kind)[:40])
    try:
        return _typed(kind, data)
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        return MalformedFrame("missing_field", f"type {kind}: {type(exc).__name__}: {exc}"[:120])


def _typed(kind: int, data: dict[str, Any]) -> Event:
    if kind == MessageType.INVOCATION:
        target = data["target"]
        arguments = data.get("arguments", [])
        if not isinstance(target, str) or not isinstance(arguments, list):
            raise TypeError("target must be a string and arguments a list")
        inv_id = data.get("invocationId")
        return Invocation(target, arguments, str(inv_id) if inv_id is not None else None)
    if kind == MessageType.STREAM_ITEM:
        return StreamItem(str(data["invocationId"]), data.get("item"))
    if kind == MessageType.COMPLETION:
        error = data.get("error")
        return Completion(str(data["invocationId"]), data.get("result"), str(error) if error is not None else None)
    if kind == MessageType.STREAM_INVOCATION:
        return StreamInvocation(str(data["invocationId"]), str(data["target"]), list(data.get("arguments", [])))
    if kind == MessageType.CANCEL_INVOCATION:
        return CancelInvocation(str(data["invocationId"]))
    if kind == MessageType.PING:
        return Ping()
    if kind == MessageType.CLOSE:
        error = data.get("error")
        return Close(str(error) if error is not None else None, bool(data.get("allowReconnect", False)))
    if kind == MessageType.ACK:
        return Ack(int(data["sequenceId"]))
    if kind == MessageType.SEQUENCE:
        return Sequence(int(data["sequenceId"]))
    return MalformedFrame("bad_type", str(kind))


class ClientProtocol:
    """Client-side state: handshake first, then hub messages. Feed it text, get events back."""

    def __init__(self, max_buffered_chars: int = MAX_BUFFERED_CHARS) -> None:
        self._buffer = FrameBuffer(max_buffered_chars)
        self.handshake_done = False

    @staticmethod
    def initiate() -> str:
        """The handshake request to send first."""
        return handshake_request()

    @property
    def pending(self) -> int:
        return self._buffer.pending

    def receive(self, data: str | bytes) -> list[Event]:
        """Feed one websocket message; return the events in it. Raises `HandshakeError` on refusal and
        `SignalRProtocolError` when a partial frame outgrows the buffer; never anything else."""
        frames: list[str] | list[bytes] = (
            self._buffer.feed_bytes(data) if isinstance(data, bytes) else self._buffer.feed(data)
        )
        events: list[Event] = []
        for frame in frames:
            if not self.handshake_done:
                self._handshake(frame)
                continue
            events.append(parse_message(frame))
        return events

    def _handshake(self, frame: str | bytes) -> None:
        try:
            data = json.loads(frame)
        except (ValueError, RecursionError) as exc:
            raise HandshakeError(f"handshake response is not JSON: {frame[:80]!r}") from exc
        if not isinstance(data, dict):
            raise HandshakeError(f"handshake response is not an object: {frame[:80]!r}")
        if data.get("error"):
            raise HandshakeError(f"server refused the handshake: {data['error']}")
        self.handshake_done = True


def server_parse_handshake(frame: str) -> tuple[str, int]:
    """For servers (the sandbox): the protocol name and version a client asked for."""
    data = json.loads(frame)
    if not isinstance(data, dict):
        raise HandshakeError("handshake request is not an object")
    return str(data.get("protocol")), int(data.get("version", -1))
