"""The one place where relaybus decides whether, and when, a platform envelope is acknowledged.

The rule: **an envelope is acked to the platform only after `publish()` returned**, that is, once it
is durable in its queue. Connectors do not check results and remember to ack: they hand the handoff
the action that answers the platform, and the handoff calls it, by construction, only with the verdict
the rule allows, and counts what reached the platform:

    await handoff.deliver(envelope, answer, also=(envelope_id,), policy=AckPolicy.REDELIVERS)

    def answer(verdict: Verdict) -> bool | asyncio.Future[bool]:   # the connector's socket write
        ... queue the ack (verdict.ack) or the negative answer (not verdict.ack) ...
        return writer.send_nowait(frame)    # a future: True once written (or a bool said at once)

The answer action does not suspend the hand-off: the acked counter follows the write's future.

Dedupe keys, the same order for every platform: `envelope.dedupe_key` first (the platform-stable id that
is also the Service Bus MessageId: Slack `event_id`, Teams `conversation.id/activity.id`), then the
transport ids in `also` (the Slack `envelope_id`, the Teams `envelopeId`), so that a redelivery under a new
transport id is still recognised.

- NEW keys: publish; on success confirm the keys and answer ack; on failure release the keys and answer
  nack (`AckPolicy.REDELIVERS`: the platform redelivers, and the redelivery is published), or keep the
  envelope in the retry buffer until it is durable (`AckPolicy.KEEP_UNTIL_DURABLE`: the platform cannot
  redeliver, as the Teams draft contract's one-way `activity`).
- keys already published (DONE): answer ack and drop (a platform retry of something we already have).
- keys being published by another connection (PENDING): wait for that publish. If it succeeds, ack
  and drop; if it fails, nack: the platform will redeliver this copy too. (A kept envelope's copies are
  dropped at once: the kept one will become durable.)

Synchronous answers (`worker.replies`): an envelope that carries `reply_to` (the connector set it: the
platform takes an answer in the ack) is registered with the process's `ReplyInbox` once its keys are
NEW, published as any other, and only after `publish()` returned, the handoff waits for the function's
answer up to `reply_to.deadline`; the answer action then gets `Verdict(ack=True, body=…, status=…)`, or
the fallback (`Verdict.fallback`: timeout, handler_error, invalid) for the connector to send. A failed
publish is never waited for (no ack, as always); duplicates are acked at once without a body.

When the queue backend keeps failing, a circuit breaker (`Breaker`) stops the spinning: after
`threshold` consecutive failures it opens for a pause that doubles up to `max_pause`; while it is open
no publish is attempted and connections stop reading new frames (`await handoff.admitting()`); hand-offs
already under way wait for the pause to end, then one of them probes the backend while the others wait
for its outcome. A platform that redelivers on a negative answer (Teams shipped) thus sees at most a few
answers per pause instead of thousands per second; Slack simply does not get its acks.

Invalid frames never get here: connectors reject them before building an envelope.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from shared.envelope import Envelope
from shared.errors import PublishError, RoutingError, TransientPublishError
from worker.dedupe import DedupeWindow, KeyState
from worker.metrics import Metrics
from worker.publish import Publisher
from worker.replies import ReplyInbox, ReplyResult

log = logging.getLogger(__name__)


class AckPolicy(Enum):
    """What happens to an envelope whose publish failed."""

    REDELIVERS = "redelivers"
    """Answer nack (or nothing): the platform redelivers what was not acked (Slack, Teams shipped)."""
    KEEP_UNTIL_DURABLE = "keep_until_durable"
    """The platform cannot redeliver (Teams draft): keep it in memory and retry until it is durable."""


class Outcome(Enum):
    PUBLISHED = "published"
    DUPLICATE = "duplicate"
    FAILED = "failed"
    KEPT = "kept"
    """Not durable yet, held in the retry buffer (KEEP_UNTIL_DURABLE)."""
    DROPPED = "dropped"
    """Not durable and the retry buffer was full: lost (logged and counted loudly)."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a connector's answer action is told to send."""

    ack: bool
    """True: the envelope is durable (or a duplicate of a durable one): ack / status 200. False: nack."""
    outcome: Outcome
    body: Any = None
    """A synchronous response payload to carry in the ack (Slack `payload`, Teams invoke `body`)."""
    error: str | None = None
    status: int | None = None
    """The answer's status (Teams invoke response) when a function answered; None otherwise."""
    fallback: str | None = None
    """Set when the platform awaits an answer but gets the fallback instead: timeout, handler_error, invalid."""


_ACK_PUBLISHED = Verdict(True, Outcome.PUBLISHED)
_ACK_DUPLICATE = Verdict(True, Outcome.DUPLICATE)

Answer = Callable[[Verdict], "bool | asyncio.Future[bool]"]
"""The connector's action: queue the verdict for the platform; True (or a future of True) once it reached the
socket, False when it could not."""


def _no_answer(_verdict: Verdict) -> bool:
    return True


def _answered(result: ReplyResult) -> Verdict:
    """The verdict once the wait for an answer ended: the answer, or the fallback and why."""
    reply = result.reply
    if result.fallback is None and reply is not None:
        return Verdict(True, Outcome.PUBLISHED, body=reply.body, status=reply.status)
    return Verdict(True, Outcome.PUBLISHED, error=result.detail, fallback=result.fallback or "timeout")


class Breaker:
    """A circuit breaker on the queue backend (pure state plus an event; the clock is passed in)."""

    def __init__(
        self,
        threshold: int = 5,
        base_pause: float = 0.25,
        max_pause: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.base_pause = base_pause
        self.max_pause = max_pause
        self._clock = clock
        self.failures = 0
        self.opened = 0
        """How many times the breaker opened (for metrics and tests)."""
        self.retry_at = 0.0
        self._pause = base_pause
        self._probe: asyncio.Future[bool] | None = None
        self.closed = asyncio.Event()
        self.closed.set()

    @property
    def is_open(self) -> bool:
        return not self.closed.is_set()

    def success(self) -> None:
        self.failures = 0
        self._pause = self.base_pause
        if not self.closed.is_set():
            log.info("queue backend publishes again: circuit breaker closed")
            self.closed.set()

    def failure(self, probe: bool = False) -> None:
        """A transient publish failure. Opens the breaker at `threshold` in a row; a failed probe doubles the
        pause (up to `max_pause`); failures of publishes that were already under way change nothing more."""
        self.failures += 1
        if self.closed.is_set():
            if self.failures < self.threshold:
                return
            self.opened += 1
            self._pause = self.base_pause
            log.warning(
                "queue backend failed %d times in a row: pausing publishes for %.2f s (circuit breaker open)",
                self.failures,
                self._pause,
            )
        elif probe:
            self._pause = min(self.max_pause, self._pause * 2)
            log.warning("queue backend still failing: next probe in %.2f s", self._pause)
        else:
            return
        self.retry_at = self._clock() + self._pause
        self.closed.clear()

    def remaining(self) -> float:
        return max(0.0, self.retry_at - self._clock()) if self.is_open else 0.0

    async def admit(self) -> bool | None:
        """Wait while the breaker is open. True: go ahead; None: go ahead as the probe (report it with
        `probe_done`); False: refused (the probe under way failed)."""
        while not self.closed.is_set():
            wait = self.remaining()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            probe = self._probe
            if probe is not None and not probe.done():
                if not await asyncio.shield(probe):
                    return False
                continue
            self._probe = asyncio.get_running_loop().create_future()
            return None
        return True

    def probe_done(self, ok: bool) -> None:
        probe = self._probe
        if probe is not None and not probe.done():
            probe.set_result(ok)


class Handoff:
    """Dedupe, publish, answer. Shared by every connection of every connector in a process."""

    def __init__(
        self,
        publisher: Publisher,
        dedupe: DedupeWindow | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        breaker: Breaker | None = None,
        retry_buffer: int = 10_000,
        replies: ReplyInbox | None = None,
    ) -> None:
        self._publisher = publisher
        self.replies = replies
        """The process's reply inbox; None: no synchronous answers (connectors then set no `reply_to`)."""
        self._dedupe = dedupe or DedupeWindow()
        self._metrics = metrics or Metrics()
        self._clock = clock
        self._waiters: dict[str, asyncio.Future[bool]] = {}
        self._unwritten: dict[asyncio.Future[bool], dict[tuple[str, str], int]] = {}
        self.breaker = breaker or Breaker(clock=clock)
        self.retry_buffer_size = retry_buffer
        self._kept: OrderedDict[str, tuple[Envelope, tuple[str, ...]]] = OrderedDict()
        self._kept_changed = asyncio.Event()
        self.dropped = 0

    @property
    def metrics(self) -> Metrics:
        return self._metrics

    @property
    def kept(self) -> int:
        """Envelopes in the retry buffer (not durable yet)."""
        return len(self._kept)

    # --- for the connections' readers ---------------------------------------------------------------

    def paused(self) -> bool:
        """True while the breaker is open: readers should stop taking new frames (`await admitting()`)."""
        return not self.breaker.closed.is_set() and self.breaker.remaining() > 0

    async def admitting(self) -> None:
        """Return when new envelopes may be read again (at once unless the breaker is open)."""
        remaining = self.breaker.remaining() if self.breaker.is_open else 0.0
        if remaining > 0:
            await asyncio.sleep(remaining)

    # --- the rule --------------------------------------------------------------------------------------

    async def deliver(
        self,
        envelope: Envelope,
        answer: Answer = _no_answer,
        *,
        also: Sequence[str] = (),
        policy: AckPolicy = AckPolicy.REDELIVERS,
    ) -> Outcome:
        """Apply the ack rule to one envelope; `answer` is called at most once, with the verdict."""
        key = envelope.dedupe_key
        if not also:
            keys: tuple[str, ...] = (key,)
        elif key in also or "" in also:
            keys = (key, *(k for k in also if k and k != key))
        else:
            keys = (key, *also)
        platform, kind = envelope.platform, envelope.kind  # StrEnums: usable as metric labels as they are
        metrics = self._metrics
        metrics.received(platform, kind)
        if envelope.app is not None:
            metrics.app_received(platform, envelope.app)
        state = self._dedupe.state(keys, self._clock())
        if state is KeyState.DONE:
            metrics.duplicate(platform, kind)
            log.info("duplicate dropped platform=%s dedupe_key=%s", platform, envelope.dedupe_key)
            self._answer(envelope, answer, _ACK_DUPLICATE)
            return Outcome.DUPLICATE
        if state is KeyState.PENDING:
            if policy is AckPolicy.KEEP_UNTIL_DURABLE:
                metrics.duplicate(platform, kind)
                return Outcome.DUPLICATE
            ok = await self._await_pending(keys)
            if ok:
                metrics.duplicate(platform, kind)
                self._answer(envelope, answer, _ACK_DUPLICATE)
                return Outcome.DUPLICATE
            answer(Verdict(False, Outcome.FAILED, error="a concurrent publish of the same event failed"))
            return Outcome.FAILED

        self._dedupe.begin(keys)
        reply_to, inbox = envelope.reply_to, self.replies
        if reply_to is not None and inbox is not None:
            return await self._deliver_awaiting_answer(envelope, answer, keys, policy, inbox, reply_to.deadline)
        error = await self._publish(envelope, keys)
        if error is None:
            self._answer(envelope, answer, _ACK_PUBLISHED)
            return Outcome.PUBLISHED
        return self._failed(envelope, answer, keys, policy, error)

    async def _deliver_awaiting_answer(
        self,
        envelope: Envelope,
        answer: Answer,
        keys: tuple[str, ...],
        policy: AckPolicy,
        inbox: ReplyInbox,
        deadline: datetime,
    ) -> Outcome:
        """Publish, then wait for the function's answer (registered first: it can beat `publish()` back)."""
        correlation_id = envelope.message_id
        waiting = inbox.expect(
            correlation_id,
            deadline,
            platform=envelope.platform,
            interaction=envelope.event_type,
            envelope_id=envelope.envelope_id,
        )
        try:
            error = await self._publish(envelope, keys)
            if error is not None:
                inbox.discard(correlation_id)
                return self._failed(envelope, answer, keys, policy, error)
            result = await waiting
        except BaseException:
            inbox.discard(correlation_id)
            raise
        self._answer(envelope, answer, _answered(result))
        return Outcome.PUBLISHED

    def _failed(
        self, envelope: Envelope, answer: Answer, keys: tuple[str, ...], policy: AckPolicy, error: str
    ) -> Outcome:
        if policy is AckPolicy.KEEP_UNTIL_DURABLE:
            return self._keep(envelope, keys, error)
        self._dedupe.release(keys)
        self._settle(keys, ok=False)
        answer(Verdict(False, Outcome.FAILED, error=error))
        return Outcome.FAILED

    def _answer(self, envelope: Envelope, answer: Answer, verdict: Verdict) -> None:
        sent = answer(verdict)
        if sent is True:
            self._metrics.acked(envelope.platform, envelope.kind)
        elif sent is not False:
            # Answers written together share one future: count them with one callback per batch.
            counts = self._unwritten.get(sent)
            if counts is None:
                counts = self._unwritten[sent] = {}
                sent.add_done_callback(self._count_acks)
            label = (envelope.platform, envelope.kind)
            counts[label] = counts.get(label, 0) + 1

    def _count_acks(self, sent: asyncio.Future[bool]) -> None:
        counts = self._unwritten.pop(sent, {})
        if not sent.cancelled() and sent.result():
            for (platform, kind), n in counts.items():
                self._metrics.acked(platform, kind, n)

    async def _publish(self, envelope: Envelope, keys: tuple[str, ...]) -> str | None:
        """Publish through the breaker; None when durable (keys confirmed), else the error text."""
        breaker = self.breaker
        admitted = await breaker.admit() if breaker.is_open else True
        if admitted is False:
            return "the queue backend is failing (circuit breaker open)"
        probing = admitted is None
        started = time.perf_counter()
        platform, kind = envelope.platform, envelope.kind
        try:
            route = await self._publisher.publish(envelope)
        except (PublishError, RoutingError) as exc:
            self._metrics.failed(platform, kind, type(exc).__name__)
            if isinstance(exc, TransientPublishError):
                was_open = breaker.is_open
                breaker.failure(probe=probing)
                if breaker.is_open and not was_open:
                    self._metrics.breaker(True)
            log.warning(
                "publish failed, not acking platform=%s dedupe_key=%s error=%s", platform, envelope.dedupe_key, exc
            )
            if probing:
                breaker.probe_done(False)
            return str(exc) or type(exc).__name__
        except BaseException:
            # Cancellation or a bug: the envelope is not known to be durable, so it must not be acked
            # and its keys must not block the redelivery.
            if probing:
                breaker.probe_done(False)
            self._dedupe.release(keys)
            self._settle(keys, ok=False)
            raise
        if breaker.is_open:
            self._metrics.breaker(False)
        breaker.success()
        if probing:
            breaker.probe_done(True)
        self._dedupe.confirm(keys, self._clock())
        self._settle(keys, ok=True)
        self._metrics.published(platform, route.name, time.perf_counter() - started)
        if envelope.app is not None:
            self._metrics.app_published(platform, envelope.app)
        return None

    async def _await_pending(self, keys: tuple[str, ...]) -> bool:
        """Wait for the publish under way for one of these keys (its future is made on first demand)."""
        pending = self._dedupe.pending_key(keys)
        if pending is None:
            return False
        waiter = self._waiters.get(pending)
        if waiter is None:
            waiter = self._waiters[pending] = asyncio.get_running_loop().create_future()
        return await asyncio.shield(waiter)

    def _settle(self, keys: tuple[str, ...], *, ok: bool) -> None:
        """Tell duplicates waiting on any of these keys how the publish ended."""
        for key in keys:
            waiter = self._waiters.pop(key, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(ok)

    # --- the retry buffer (KEEP_UNTIL_DURABLE) ---------------------------------------------------------

    def _keep(self, envelope: Envelope, keys: tuple[str, ...], error: str) -> Outcome:
        if len(self._kept) >= self.retry_buffer_size:
            self._dedupe.release(keys)
            self._settle(keys, ok=False)
            self.dropped += 1
            self._metrics.retry_buffer_dropped(envelope.platform)
            log.error(
                "RETRY BUFFER FULL (%d envelopes kept, RELAYBUS_PUBLISH_RETRY_BUFFER): envelope LOST, the platform "
                "cannot redeliver it platform=%s dedupe_key=%s error=%s",
                len(self._kept),
                envelope.platform,
                envelope.dedupe_key,
                error,
            )
            return Outcome.DROPPED
        self._kept[envelope.dedupe_key] = (envelope, keys)
        self._metrics.set_retry_buffer(len(self._kept))
        self._kept_changed.set()
        log.warning(
            "publish failed, envelope kept for retry (%d kept) platform=%s dedupe_key=%s error=%s",
            len(self._kept),
            envelope.platform,
            envelope.dedupe_key,
            error,
        )
        return Outcome.KEPT

    async def retry_kept(self) -> None:
        """Publish kept envelopes until cancelled (the worker runs this in its TaskGroup)."""
        while True:
            if not self._kept:
                self._kept_changed.clear()
                await self._kept_changed.wait()
                continue
            await self._retry_round()
            if self._kept:
                await asyncio.sleep(max(self.breaker.remaining(), self.breaker.base_pause))

    async def flush(self, seconds: float) -> int:
        """Try to make every kept envelope durable within `seconds`; returns how many are left."""
        if not self._kept:
            return 0
        log.info("flushing %d kept envelopes (up to %.1f s)", len(self._kept), seconds)
        try:
            async with asyncio.timeout(seconds):
                while self._kept:
                    await self._retry_round()
                    if self._kept:
                        await asyncio.sleep(min(self.breaker.remaining() or self.breaker.base_pause, 1.0))
        except TimeoutError:
            pass
        if self._kept:
            log.error(
                "%d kept envelopes could not be made durable before shutdown: LOST (the platform cannot redeliver)",
                len(self._kept),
            )
        return len(self._kept)

    async def _retry_round(self) -> None:
        for key, (envelope, keys) in list(self._kept.items()):
            error = await self._publish(envelope, keys)
            if error is not None:
                return  # still failing: wait for the next round
            self._kept.pop(key, None)
            self._metrics.set_retry_buffer(len(self._kept))
            log.info("kept envelope is durable now platform=%s dedupe_key=%s", envelope.platform, key)
