"""The one place where relaybus decides whether a platform envelope may be acknowledged.

The rule: **an envelope is acked to the platform only after `publish()` returned**, that is, once it
is durable in its queue. Every connector (Slack, Teams, Direct Line) calls `Handoff.hand_off()` and
acks if and only if the returned outcome says so:

    outcome = await handoff.hand_off(envelope, keys)
    if outcome.ack:
        send the platform's ack

- NEW keys: publish; on success confirm the keys and ack; on failure release the keys and do not
  ack, so the platform redelivers and the redelivery is published.
- keys already published (DONE): ack and drop (a platform retry of something we already have).
- keys being published by another connection (PENDING): wait for that publish. If it succeeds, ack
  and drop; if it fails, do not ack: the platform will redeliver this copy too.

Invalid frames never get here: connectors reject them before building an envelope.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

from shared.envelope import Envelope
from shared.errors import PublishError, RoutingError
from worker.dedupe import DedupeWindow, KeyState
from worker.metrics import Metrics
from worker.publish import Publisher

log = logging.getLogger(__name__)


class Outcome(Enum):
    PUBLISHED = "published"
    DUPLICATE = "duplicate"
    FAILED = "failed"

    @property
    def ack(self) -> bool:
        """True when the platform may be acknowledged."""
        return self is not Outcome.FAILED


@dataclass(frozen=True, slots=True)
class HandoffResult:
    outcome: Outcome
    route: str | None = None
    error: str | None = None

    @property
    def ack(self) -> bool:
        return self.outcome.ack


class Handoff:
    """Dedupe, publish, decide the ack. Shared by every connection of every connector in a process."""

    def __init__(
        self,
        publisher: Publisher,
        dedupe: DedupeWindow | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._publisher = publisher
        self._dedupe = dedupe or DedupeWindow()
        self._metrics = metrics or Metrics()
        self._clock = clock
        self._waiters: dict[str, asyncio.Future[bool]] = {}

    @property
    def metrics(self) -> Metrics:
        return self._metrics

    async def hand_off(self, envelope: Envelope, keys: Sequence[str] = ()) -> HandoffResult:
        keys = tuple(keys) or (envelope.dedupe_key,)
        platform, kind = envelope.platform, envelope.kind  # StrEnums: usable as metric labels as they are
        metrics = self._metrics
        metrics.received(platform, kind)
        state = self._dedupe.state(keys, self._clock())
        if state is KeyState.DONE:
            metrics.duplicate(platform, kind)
            log.info("duplicate dropped platform=%s dedupe_key=%s", platform, envelope.dedupe_key)
            return HandoffResult(Outcome.DUPLICATE)
        if state is KeyState.PENDING:
            return await self._await_pending(envelope, keys)

        self._dedupe.begin(keys)
        started = time.perf_counter()
        try:
            route = await self._publisher.publish(envelope)
        except (PublishError, RoutingError) as exc:
            self._dedupe.release(keys)
            self._settle(keys, ok=False)
            metrics.failed(platform, kind, type(exc).__name__)
            log.warning(
                "publish failed, not acking platform=%s dedupe_key=%s error=%s",
                platform,
                envelope.dedupe_key,
                exc,
            )
            return HandoffResult(Outcome.FAILED, error=str(exc))
        except BaseException:
            # Cancellation or a bug: the envelope is not known to be durable, so it must not be acked
            # and its keys must not block the redelivery.
            self._dedupe.release(keys)
            self._settle(keys, ok=False)
            raise
        self._dedupe.confirm(keys, self._clock())
        self._settle(keys, ok=True)
        metrics.published(platform, route.name, time.perf_counter() - started)
        return HandoffResult(Outcome.PUBLISHED, route=route.name)

    def acked(self, envelope: Envelope) -> None:
        """Connectors call this once the platform ack was sent (for the acked counter)."""
        self._metrics.acked(envelope.platform, envelope.kind)

    async def _await_pending(self, envelope: Envelope, keys: tuple[str, ...]) -> HandoffResult:
        """Wait for the publish under way for one of these keys (its future is made on first demand)."""
        pending = self._dedupe.pending_key(keys)
        ok = False
        if pending is not None:
            waiter = self._waiters.get(pending)
            if waiter is None:
                waiter = self._waiters[pending] = asyncio.get_running_loop().create_future()
            ok = await asyncio.shield(waiter)
        if ok:
            self._metrics.duplicate(envelope.platform, envelope.kind)
            return HandoffResult(Outcome.DUPLICATE)
        return HandoffResult(Outcome.FAILED, error="a concurrent publish of the same event failed")

    def _settle(self, keys: tuple[str, ...], *, ok: bool) -> None:
        """Tell duplicates waiting on any of these keys how the publish ended."""
        for key in keys:
            waiter = self._waiters.pop(key, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(ok)
