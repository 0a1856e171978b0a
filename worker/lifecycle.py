"""Connection lifecycle states, with the vocabulary Direct Line clients already use.

Every connector keeps one `ConnectionStatus` per connection in a shared `StatusBoard`; each change is
logged once and exported in /readyz and /metrics. Details pass through the one redaction
(`shared.redact`) as they are set, so no ticket or token from an exception text reaches /readyz or a log.

Besides the current state, the board remembers each connection's last error (`last_error`: the detail of
its last FailedToConnect or ExpiredToken), which the dev console and /readyz show.
"""

from __future__ import annotations

import builtins
import logging
from dataclasses import dataclass
from enum import StrEnum

from shared.redact import redact

log = logging.getLogger(__name__)


class ConnectionStatus(StrEnum):
    UNINITIALIZED = "Uninitialized"
    CONNECTING = "Connecting"
    ONLINE = "Online"
    EXPIRED_TOKEN = "ExpiredToken"  # noqa: S105 (a status name, not a secret)
    FAILED_TO_CONNECT = "FailedToConnect"
    ENDED = "Ended"


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    platform: str
    name: str
    status: ConnectionStatus
    detail: str = ""
    last_error: str = ""


class StatusBoard:
    """Current status of every connection in the process, keyed by (platform, name)."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], ConnectionInfo] = {}
        self._listeners: list[object] = []

    def set(self, platform: str, name: str, status: ConnectionStatus, detail: str = "") -> None:
        key = (platform, name)
        previous = self._entries.get(key)
        if previous is not None and previous.status is status and previous.detail == detail:
            return
        detail = redact(detail) if detail else detail
        last_error = previous.last_error if previous is not None else ""
        if status in (ConnectionStatus.FAILED_TO_CONNECT, ConnectionStatus.EXPIRED_TOKEN):
            last_error = detail or status.value
        self._entries[key] = ConnectionInfo(platform, name, status, detail, last_error)
        old = previous.status.value if previous else ConnectionStatus.UNINITIALIZED.value
        log.info("connection %s/%s: %s -> %s%s", platform, name, old, status.value, f" ({detail})" if detail else "")

    def remove(self, platform: str, name: str) -> None:
        self._entries.pop((platform, name), None)

    def snapshot(self) -> list[ConnectionInfo]:
        return sorted(self._entries.values(), key=lambda c: (c.platform, c.name))

    def ready(self, platforms: builtins.set[str] | None = None) -> bool:
        """Ready when every configured platform has at least one connection and all of them are Online.

        Connections that ended on purpose (a rotated-out socket) are removed by their owner, so only
        live connections count.
        """
        entries = self.snapshot()
        if platforms:
            have = {c.platform for c in entries}
            if not platforms <= have:
                return False
        return bool(entries) and all(c.status is ConnectionStatus.ONLINE for c in entries)
