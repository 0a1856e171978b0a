"""Helpers for the local queue, functions host and queue CLI tests (imported explicitly by those tests)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from localqueue import QueueConfig
from worker.publish import QueueMessage

PLAIN = "plain"
ORDERED = "ordered"


@dataclass
class FakeClock:
    """A wall clock the test moves by hand (epoch seconds)."""

    now: float = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_queues(
    lock_duration: float = 30.0, max_delivery_count: int = 3, window: float = 60.0
) -> dict[str, QueueConfig]:
    """A plain queue and a session queue with test-friendly settings."""
    return {
        PLAIN: QueueConfig(PLAIN, False, max_delivery_count, lock_duration, window),
        ORDERED: QueueConfig(ORDERED, True, max_delivery_count, lock_duration, window),
    }


test_queues.__test__ = False  # type: ignore[attr-defined]  # not a test, despite the name


def message(
    message_id: str,
    queue: str = PLAIN,
    session_id: str | None = None,
    body: bytes | None = None,
    properties: Mapping[str, str] | None = None,
) -> QueueMessage:
    return QueueMessage(
        queue=queue,
        message_id=message_id,
        body=body if body is not None else b'{"id": "%s"}' % message_id.encode(),
        session_id=session_id,
        application_properties=dict(properties or {"kind": "test"}),
    )
