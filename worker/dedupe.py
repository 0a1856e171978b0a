"""An in-process dedupe window (pure: no I/O, the clock is passed in).

Each envelope carries one or more dedupe keys (Slack: `event_id` and `envelope_id`; Teams: the
envelopeId and `conversation.id/activity.id`). A key is in one of three states:

- absent: never seen, or expired, or released after a failed publish;
- pending: a publish for it is under way (a duplicate must wait for its outcome, not be acked blindly,
  or a failed publish would lose the event);
- done: published; duplicates are acked and dropped until the key expires.

Service Bus duplicate detection (MessageId) covers what this window cannot: other worker replicas and
restarts.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from enum import Enum


class KeyState(Enum):
    NEW = "new"
    PENDING = "pending"
    DONE = "done"


class DedupeWindow:
    """Keys remembered for `ttl` seconds after they were confirmed, at most `max_keys` of them."""

    def __init__(self, ttl: float = 900.0, max_keys: int = 200_000) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self.ttl = ttl
        self.max_keys = max_keys
        self._pending: set[str] = set()
        self._done: OrderedDict[str, float] = OrderedDict()  # key -> expiry, in confirmation order

    def __len__(self) -> int:
        return len(self._pending) + len(self._done)

    def state(self, keys: Iterable[str], now: float) -> KeyState:
        """DONE if any key was published, PENDING if any is being published, else NEW."""
        self._expire(now)
        pending = False
        for key in keys:
            if key in self._done:
                return KeyState.DONE
            if key in self._pending:
                pending = True
        return KeyState.PENDING if pending else KeyState.NEW

    def pending_key(self, keys: Iterable[str]) -> str | None:
        """The first of `keys` whose publish is under way, if any."""
        return next((key for key in keys if key in self._pending), None)

    def begin(self, keys: Iterable[str]) -> None:
        """Mark keys as being published."""
        self._pending.update(keys)

    def confirm(self, keys: Iterable[str], now: float) -> None:
        """The publish succeeded: remember the keys for `ttl` seconds."""
        expiry = now + self.ttl
        for key in keys:
            self._pending.discard(key)
            self._done[key] = expiry
            self._done.move_to_end(key)
        while len(self._done) > self.max_keys:
            self._done.popitem(last=False)

    def release(self, keys: Iterable[str]) -> None:
        """The publish failed: forget the keys so the platform's redelivery is published."""
        for key in keys:
            self._pending.discard(key)

    def _expire(self, now: float) -> None:
        done = self._done
        while done:
            key, expiry = next(iter(done.items()))
            if expiry > now:
                break
            del done[key]
