"""Synchronous answers, the worker's side: the process's reply inbox (Service Bus request/reply).

    inbox = ReplyInbox(reply_source(backend, queue, process_session_id()), metrics)   # one per process
    group.create_task(inbox.run())                                # the worker's TaskGroup owns the receiver

    envelope = envelope.model_copy(update={"reply_to": inbox.address(deadline)})    # the connector
    waiting = inbox.expect(envelope.message_id, deadline, platform=..., interaction=...)   # the handoff
    ... publish (the ack rule) ...
    result = await waiting        # ReplyResult: the reply to send, or why the fallback is due

How it works:

- The reply queue (`shared.routes.REPLIES`, session-enabled) holds one session per worker process: the
  session id is `process_session_id()` (host, pid and a random part), so two workers on the same queues,
  or a restarted worker, never read each other's replies. A function sends its `shared.replies.Reply` to
  `envelope.reply_to` (ReplyTo / ReplyToSessionId) with CorrelationId = the envelope's MessageId.
- `expect()` registers a correlation id with its deadline (a timer, not a task): the future resolves with
  the reply when it comes, or at the deadline with `fallback="timeout"`. `run()` receives the session's
  messages, settles each, and resolves the matching future: a valid answer (`shared.replies.problem`), or
  the fallback at once for a reply that reports the handler's error (`handler_error`) or does not fit the
  interaction (`invalid`: wrong shape, too large for Slack's ack frame).
- Whatever else comes is logged with its ids and counted, never raised: a reply for an envelope whose
  fallback was already sent (`late`, also a second reply to one envelope), for a correlation id this process
  never waits for (`unknown`: a restarted worker's, a forged one), or whose body is not a reply (`invalid`).
  Counters: `relaybus_replies_total{outcome}`, `relaybus_answer_fallbacks_total{platform,reason}`.
- A dead worker's replies stay in its session, which nobody accepts: they expire after the reply queue's
  TTL (30 s). The session lock is renewed while the inbox runs and released when it stops.

The receiving side is one seam, `ReplySource`: `LocalReplySource` (the embedded queue: a poll that costs a
`PRAGMA data_version` read while nothing changed, every 5 ms while answers are awaited, every 250 ms
otherwise) and `ServiceBusReplySource` (a receive-and-delete session receiver with prefetch from the
backend's `SessionReceiverFactory`; `FakeNamespace` provides fakes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from shared.envelope import ReplyAddress, utcnow
from shared.errors import InvalidEnvelopeError, PermanentPublishError, TransientPublishError
from shared.redact import describe_exception, redact
from shared.replies import Reply, problem
from shared.routes import REPLIES
from worker.metrics import Metrics

if TYPE_CHECKING:
    from localqueue import LocalQueueBackend, SessionLease
    from worker.publish.servicebus import SessionReceiver, SessionReceiverFactory

log = logging.getLogger(__name__)

MAX_SESSION_ID = 128
TIMEOUT = "timeout"
HANDLER_ERROR = "handler_error"
INVALID = "invalid"
FALLBACK_REASONS = (TIMEOUT, HANDLER_ERROR, INVALID)

REMEMBER_FINISHED = 10_000
"""Correlation ids of finished waits kept (to tell a late reply from an unknown one)."""
REMEMBER_SECONDS = REPLIES.time_to_live.total_seconds() + 30.0
"""…and for how long after their deadline: beyond the reply queue's TTL a reply cannot arrive anyway."""


def process_session_id(hostname: str | None = None, pid: int | None = None) -> str:
    """This process's reply session: `{host}-{pid}-{random}`, at most 128 characters (a SessionId's limit)."""
    host = (hostname if hostname is not None else socket.gethostname()) or "host"
    host = "".join(c if c.isalnum() or c in "-._" else "-" for c in host)[:96]
    return f"{host}-{pid if pid is not None else os.getpid()}-{secrets.token_hex(4)}"[:MAX_SESSION_ID]


@dataclass(frozen=True, slots=True)
class IncomingReply:
    """One message received on the reply session, as the seam hands it over."""

    body: bytes
    message_id: str | None
    correlation_id: str | None
    session_id: str | None
    lock_token: str | None = None


@dataclass(frozen=True, slots=True)
class ReplyResult:
    """How a wait ended: `reply` to send (fallback None), or the fallback and why (`detail` for the log)."""

    reply: Reply | None
    fallback: str | None = None
    detail: str = ""


class ReplySource(Protocol):
    """The reply session of one process on one backend."""

    queue: str
    session_id: str

    async def open(self) -> None:
        """Accept the session now; raises `PublishError` when the reply queue cannot be read."""
        ...

    async def receive(self, max_wait: float, busy: asyncio.Event) -> Sequence[IncomingReply]:
        """What arrived, waiting up to `max_wait` seconds for something (`busy`: answers are awaited)."""
        ...

    async def settle(self, reply: IncomingReply) -> None:
        """Remove a handled message from the queue (complete), when receiving did not already."""
        ...

    async def close(self) -> None:
        """Release the session."""
        ...


def reply_source(backend: object, queue: str, session_id: str) -> ReplySource | None:
    """The reply session for a queue backend, or None when the backend takes no replies (MemoryBackend)."""
    from localqueue import LocalQueueBackend

    if isinstance(backend, LocalQueueBackend):
        return LocalReplySource(backend, queue, session_id)
    factory = getattr(backend, "receiver_factory", None)
    if factory is not None:
        return ServiceBusReplySource(factory, queue, session_id)
    return None


@dataclass(slots=True)
class _Wait:
    future: asyncio.Future[ReplyResult]
    timer: asyncio.TimerHandle
    platform: str
    interaction: str | None
    envelope_id: str | None
    started: float


class ReplyInbox:
    """Waits for the answers to this process's envelopes; see the module docstring."""

    def __init__(
        self,
        source: ReplySource,
        metrics: Metrics | None = None,
        *,
        max_wait: float = 5.0,
        remember: int = REMEMBER_FINISHED,
        remember_seconds: float = REMEMBER_SECONDS,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._source = source
        self.metrics = metrics or Metrics()
        self.queue = source.queue
        self.session_id = source.session_id
        self.max_wait = max_wait
        self._remember = remember
        self._remember_seconds = remember_seconds
        self._clock = clock
        self._waits: dict[str, _Wait] = {}
        self._finished: OrderedDict[str, float] = OrderedDict()
        self._busy = asyncio.Event()
        self.receive_errors = 0

    @property
    def waiting(self) -> int:
        """Envelopes whose answer is awaited now."""
        return len(self._waits)

    def address(self, deadline: datetime) -> ReplyAddress:
        """Where a function sends the answer to an envelope of this process, and until when it is awaited."""
        return ReplyAddress(queue=self.queue, session_id=self.session_id, deadline=deadline)

    # --- the waits ---------------------------------------------------------------------------------------

    def expect(
        self,
        correlation_id: str,
        deadline: datetime,
        *,
        platform: str = "",
        interaction: str | None = None,
        envelope_id: str | None = None,
    ) -> asyncio.Future[ReplyResult]:
        """A future resolved with the answer to `correlation_id`, or at `deadline` with the timeout fallback."""
        loop = asyncio.get_running_loop()
        previous = self._waits.pop(correlation_id, None)
        if previous is not None:  # the same envelope awaited twice (cannot happen through the handoff)
            self._resolve(correlation_id, previous, ReplyResult(None, TIMEOUT, "superseded by a newer wait"))
        future: asyncio.Future[ReplyResult] = loop.create_future()
        remaining = max(0.0, (deadline - self._clock()).total_seconds())
        timer = loop.call_later(remaining, self._timed_out, correlation_id)
        self._waits[correlation_id] = _Wait(future, timer, platform, interaction, envelope_id, loop.time())
        self._busy.set()
        return future

    def discard(self, correlation_id: str) -> None:
        """Stop waiting (the publish failed, or the hand-off was cancelled): nothing is sent for it, and the
        future is left as it is (a cancelled hand-off cancelled it already)."""
        wait = self._waits.pop(correlation_id, None)
        if wait is None:
            return
        wait.timer.cancel()
        self._finish(correlation_id)

    def _timed_out(self, correlation_id: str) -> None:
        wait = self._waits.pop(correlation_id, None)
        if wait is None:
            return
        waited = asyncio.get_running_loop().time() - wait.started
        log.warning(
            "no answer within the deadline (%.0f ms): the fallback goes out platform=%s interaction=%s "
            "correlation_id=%s envelope_id=%s session=%s",
            waited * 1000,
            wait.platform,
            wait.interaction,
            correlation_id,
            wait.envelope_id,
            self.session_id,
        )
        self._resolve(correlation_id, wait, ReplyResult(None, TIMEOUT, f"no answer within {waited * 1000:.0f} ms"))

    def _resolve(self, correlation_id: str, wait: _Wait, result: ReplyResult) -> None:
        wait.timer.cancel()
        if result.fallback is not None:
            self.metrics.answer_fallback(wait.platform, result.fallback)
        if not wait.future.done():
            wait.future.set_result(result)
        self._finish(correlation_id)

    def _finish(self, correlation_id: str) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        finished = self._finished
        finished[correlation_id] = now
        finished.move_to_end(correlation_id)
        oldest = now - self._remember_seconds
        while finished and (len(finished) > self._remember or next(iter(finished.values())) < oldest):
            finished.popitem(last=False)
        if not self._waits:
            self._busy.clear()

    # --- receiving ---------------------------------------------------------------------------------------

    async def open(self) -> None:
        """Accept this process's session now (a missing reply queue or role shows at start)."""
        await self._source.open()
        log.info("reply inbox: listening on %s session=%s", self.queue, self.session_id)

    async def run(self) -> None:
        """Receive and resolve until cancelled (the worker's TaskGroup owns this task); then release the session."""
        delay = 0.2
        try:
            while True:
                try:
                    batch = await self._source.receive(self.max_wait, self._busy)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.receive_errors += 1
                    log.warning(
                        "reply inbox: receiving from %s session=%s failed (%s); retrying in %.1f s",
                        self.queue,
                        self.session_id,
                        describe_exception(exc),
                        delay,
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                delay = 0.2
                for incoming in batch:
                    self.handle(incoming)
                    try:
                        await self._source.settle(incoming)
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        log.info("reply inbox: settling message_id=%s failed (%s)", incoming.message_id, exc)
        finally:
            await self.close()

    async def close(self) -> None:
        """Release the session (also when `run()` never started) and end the waits left (none once the
        connectors drained) with the fallback. Idempotent."""
        try:
            await self._source.close()
        except Exception as exc:
            log.info("reply inbox: releasing session %s failed (%s)", self.session_id, describe_exception(exc))
        for correlation_id, wait in list(self._waits.items()):
            del self._waits[correlation_id]
            self._resolve(correlation_id, wait, ReplyResult(None, TIMEOUT, "the reply inbox stopped"))

    def handle(self, incoming: IncomingReply) -> None:
        """Classify one received message and resolve its wait. Never raises."""
        try:
            self._handle(incoming)
        except Exception:  # a bug must not stop the inbox
            log.exception("reply inbox: could not handle message_id=%s", incoming.message_id)

    def _handle(self, incoming: IncomingReply) -> None:
        ids = f"correlation_id={incoming.correlation_id} message_id={incoming.message_id} session={self.session_id}"
        try:
            reply = Reply.from_body(incoming.body)
        except InvalidEnvelopeError as exc:
            self._invalid(incoming.correlation_id, f"the body is not a reply ({exc.detail})", ids)
            return
        if incoming.correlation_id is not None and incoming.correlation_id != reply.correlation_id:
            self._invalid(
                incoming.correlation_id,
                f"its CorrelationId differs from the body's correlation_id {reply.correlation_id!r}",
                ids,
            )
            return
        correlation_id = reply.correlation_id
        wait = self._waits.pop(correlation_id, None)
        if wait is None:
            if correlation_id in self._finished:
                self.metrics.reply("late")
                log.warning("late reply dropped (the platform got its answer or fallback already) %s", ids)
            else:
                self.metrics.reply("unknown")
                log.warning("reply for an envelope this worker does not wait for: dropped %s", ids)
            return
        context = f"platform={wait.platform} interaction={wait.interaction} envelope_id={wait.envelope_id} {ids}"
        if reply.error is not None:
            self.metrics.reply("error")
            log.warning("the handler failed: the fallback goes out (%s) %s", redact(reply.error[:300]), context)
            self._resolve(correlation_id, wait, ReplyResult(reply, HANDLER_ERROR, "the handler failed"))
            return
        wrong = problem(wait.platform, wait.interaction, reply)
        if wrong is not None:
            self.metrics.reply("invalid")
            log.warning("invalid answer, the fallback goes out: %s %s", wrong, context)
            self._resolve(correlation_id, wait, ReplyResult(reply, INVALID, wrong))
            return
        self.metrics.reply("answered")
        waited = asyncio.get_running_loop().time() - wait.started
        log.info("answer received after %.1f ms %s", waited * 1000, context)
        self._resolve(correlation_id, wait, ReplyResult(reply))

    def _invalid(self, correlation_id: str | None, why: str, ids: str) -> None:
        self.metrics.reply("invalid")
        wait = self._waits.pop(correlation_id, None) if correlation_id is not None else None
        if wait is None:
            log.warning("invalid reply dropped: %s %s", why, ids)
            return
        log.warning("invalid reply, the fallback goes out: %s platform=%s %s", why, wait.platform, ids)
        self._resolve(correlation_id or "", wait, ReplyResult(None, INVALID, why))


# --- the local queue ----------------------------------------------------------------------------------------


class LocalReplySource:
    """This process's session of the reply queue in the local queue file (shared with other processes)."""

    def __init__(
        self,
        backend: LocalQueueBackend,
        queue: str,
        session_id: str,
        *,
        poll: float = 0.005,
        idle_poll: float = 0.25,
    ) -> None:
        self._backend = backend
        self.queue = queue
        self.session_id = session_id
        self.poll = poll
        self.idle_poll = idle_poll
        self._lease: SessionLease | None = None
        self._known: int | None = None
        self._renew_at = 0.0

    async def open(self) -> None:
        if self.queue not in self._backend.queues:
            raise PermanentPublishError(f"local queue {self._backend.path} has no reply queue {self.queue!r}")
        await self._accept()

    async def _accept(self) -> SessionLease:
        from localqueue import LocalQueueError

        try:
            lease = await self._backend.accept_session(self.queue, self.session_id)
        except LocalQueueError as exc:
            raise PermanentPublishError(f"local queue {self._backend.path}: {exc}") from exc
        if lease is None:
            raise TransientPublishError(f"reply session {self.session_id} on {self.queue} is held by another consumer")
        self._lease = lease
        self._known = None
        self._renew_at = asyncio.get_running_loop().time() + self._renew_every()
        return lease

    def _renew_every(self) -> float:
        return max(0.1, self._backend.queues[self.queue].lock_duration / 3)

    async def receive(self, max_wait: float, busy: asyncio.Event) -> Sequence[IncomingReply]:
        from localqueue import LockLostError

        loop = asyncio.get_running_loop()
        end = loop.time() + max_wait
        while True:
            lease = self._lease or await self._accept()
            if loop.time() >= self._renew_at:
                self._renew_at = loop.time() + self._renew_every()
                try:
                    await self._backend.renew_session_lock(lease)
                except LockLostError:
                    log.warning("reply inbox: session %s lock lost; accepting it again", self.session_id)
                    lease = await self._accept()
            try:
                version, message = await self._backend.poll_session(lease, self._known)
            except LockLostError:
                log.warning("reply inbox: session %s lock lost; accepting it again", self.session_id)
                self._lease = None
                continue
            if message is not None:
                self._known = None  # one message in flight per session: look again after settling it
                return [
                    IncomingReply(
                        message.body, message.message_id, message.correlation_id, message.session_id, message.lock_token
                    )
                ]
            self._known = version
            now = loop.time()
            if now >= end:
                return []
            if busy.is_set():
                await asyncio.sleep(min(self.poll, end - now))
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(self.idle_poll, end - now)):
                        await busy.wait()

    async def settle(self, reply: IncomingReply) -> None:
        if reply.lock_token is not None:
            await self._backend.complete(reply.lock_token)

    async def close(self) -> None:
        lease, self._lease = self._lease, None
        if lease is not None and not self._backend.closed:
            await self._backend.release_session(lease)


# --- Service Bus --------------------------------------------------------------------------------------------


class ServiceBusReplySource:
    """This process's session of the reply queue on Service Bus (receive-and-delete, prefetch)."""

    def __init__(
        self, factory: SessionReceiverFactory, queue: str, session_id: str, *, renew_every: float = 10.0
    ) -> None:
        self._factory = factory
        self.queue = queue
        self.session_id = session_id
        self.renew_every = renew_every
        self._receiver: SessionReceiver | None = None
        self._renew_at = 0.0

    async def open(self) -> None:
        await self._open()

    async def _open(self) -> SessionReceiver:
        from worker.publish.servicebus import translate

        receiver = self._factory(self.queue, self.session_id)
        try:
            await receiver.__aenter__()
        except Exception as exc:
            with contextlib.suppress(Exception):
                await receiver.close()
            raise translate(exc, f"reply queue={self.queue} session={self.session_id}") from exc
        self._receiver = receiver
        self._renew_at = asyncio.get_running_loop().time() + self.renew_every
        return receiver

    async def receive(self, max_wait: float, busy: asyncio.Event) -> Sequence[IncomingReply]:
        receiver = self._receiver or await self._open()
        loop = asyncio.get_running_loop()
        try:
            if loop.time() >= self._renew_at:
                self._renew_at = loop.time() + self.renew_every
                await receiver.session.renew_lock()
            # one at a time: with more, the SDK keeps pulling for 0.2 s after the first message arrived
            messages = await receiver.receive_messages(max_message_count=1, max_wait_time=max_wait)
        except Exception:
            await self.close()  # a fresh receiver (and session lock) next time
            raise
        return [_incoming(m) for m in messages]

    async def settle(self, reply: IncomingReply) -> None:
        return None  # receive-and-delete: gone from the queue already

    async def close(self) -> None:
        receiver, self._receiver = self._receiver, None
        if receiver is not None:
            await receiver.close()


def _incoming(message: Any) -> IncomingReply:
    return IncomingReply(
        _body_bytes(message.body),
        _str_or_none(message.message_id),
        _str_or_none(message.correlation_id),
        _str_or_none(message.session_id),
    )


def _body_bytes(body: Any) -> bytes:
    """A Service Bus body as bytes: data sections joined; anything else (a value body) reads as empty."""
    if isinstance(body, bytes | bytearray):
        return bytes(body)
    if isinstance(body, str):
        return body.encode()
    try:
        return b"".join(bytes(part) for part in body)
    except TypeError:
        return b""


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


__all__ = [
    "FALLBACK_REASONS",
    "HANDLER_ERROR",
    "INVALID",
    "TIMEOUT",
    "IncomingReply",
    "LocalReplySource",
    "ReplyInbox",
    "ReplyResult",
    "ReplySource",
    "ServiceBusReplySource",
    "process_session_id",
    "reply_source",
]
