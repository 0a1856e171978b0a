"""One Direct Line conversation held by the worker: tokens, socket, reconnects, polling, parking, publishing.

Lifecycle (botframework-directlinejs' `ConnectionStatus` names, logged on every change):

    Uninitialized ─► Connecting ─► Online ──(drop, silence)──► Connecting ─► Online …
                         │            │
                         │            ├─(token expired / refresh refused)─► ExpiredToken ─► (a token from the
                         │            │                                      secret) ─► Online
                         │            └─(idle `idle_park_seconds`)─► parked (socket closed; woken by an
                         │                                            outgoing message or a poll that finds news)
                         ├─(429/502/network, a refused socket)─► FailedToConnect ─► (backoff) ─► Connecting
                         └─(404, the secret refused)─► Ended (with the reason; the directory row is ended)

- **Tokens**: the conversation is taken over with the secret (`GET /conversations/{id}?watermark=` answers a
  token bound to it); the token is refreshed after `refresh_fraction` (at most half) of its `expires_in`, and
  never after it expired: expiry is judged by the wall clock, checked every `tick_seconds`, so a machine that
  slept past the expiry (the monotonic clock stops during suspend) finds it expired and does not try a refresh
  that must fail (directlinejs #130). An expired token, or a refresh answered 403, is `ExpiredToken` (which the
  websocket path of directlinejs never reports, #101/#124): a new token comes from the secret, and the socket,
  if it is still up, goes on.
- **Reconnects** after a drop, a `collision` or a silence (the connection's watchdog; also when the wall clock
  jumped: the machine slept) resume from the published watermark with a new `streamUrl`, connected at once
  (well within its 60 s), after a random 3-15 s wait (`reconnect_*`, doubling on repeated failures).
- **Polling fallback**: after `websocket_failures_before_polling` failed sockets in a row (or with
  `DIRECTLINE_WEBSOCKET=false`), `GET …/activities?watermark=` every `poll_seconds`; the socket is tried again
  after `websocket_retry_seconds`. Both paths feed one queue; activities are deduped by id (the handoff's
  window, and the queue's MessageId).
- **Publishing** (one task, in order, so the session queue keeps the conversation's order): each frame's bot
  activities go through `Handoff.deliver` with the tracker's answer action (`worker.directline.watermarks`):
  the watermark advances only once everything up to it is durable. A failed publish is retried in place (the
  platform's redelivery, Direct Line style) while the backend recovers; an activity that keeps failing while
  the backend is otherwise healthy is skipped after `publish_attempts`, logged and counted (`unpublishable`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from shared.redact import redact
from worker.directline.api import (
    ConversationNotFound,
    DirectLineApi,
    DirectLineApiError,
    DirectLineRejected,
    Grant,
    TokenExpired,
)
from worker.directline.connection import StreamConnection
from worker.directline.protocol import (
    OWN,
    ActivitySet,
    Frame,
    KeepAlive,
    Malformed,
    Publish,
    Rejected,
    envelope_for,
    is_ahead,
    is_behind,
    sort_activity,
    watermark_order,
)
from worker.directline.settings import DirectLineSettings
from worker.directline.watermarks import AckTracker, TrackedFrame
from worker.handoff import AckPolicy, Handoff, Outcome
from worker.lifecycle import ConnectionStatus

if TYPE_CHECKING:
    from worker.metrics import Metrics

log = logging.getLogger(__name__)

PLATFORM = "directline"
PARKED = "Parked"
"""The per-state count of parked conversations (no ConnectionStatus: no socket, nothing failing)."""
EXPIRY_MARGIN = 5.0
"""Seconds before `expires_at` when a token counts as expired already (a refresh then would race the expiry)."""
SLEEP_JUMP = 10.0
"""The wall clock ran this much further than the monotonic clock between two ticks: the machine slept."""
MAX_COLLISIONS = 3
"""Collisions in a row after which the conversation polls instead (another socket keeps the stream)."""


class ConversationEnded(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DirectLineConversation:
    def __init__(
        self,
        conversation_id: str,
        watermark: str | None,
        *,
        settings: DirectLineSettings,
        api: DirectLineApi,
        handoff: Handoff,
        metrics: Metrics,
        event: Callable[[str], None] = lambda _name: None,
        on_change: Callable[[DirectLineConversation], None] = lambda _c: None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.id = conversation_id
        self.name = conversation_id[:24]
        self.settings = settings
        self._api = api
        self._handoff = handoff
        self._metrics = metrics
        self._event = event
        self._on_change = on_change
        self._clock = clock
        self._rng = rng or random.Random()
        self.tracker = AckTracker(watermark)
        self.status = ConnectionStatus.UNINITIALIZED
        self.detail = ""
        self.parked = False
        self.ended_reason: str | None = None
        self.mode = "websocket" if settings.websocket else "polling"
        self.woken = asyncio.Event()
        self.last_activity = time.monotonic()
        self.published = 0
        self.connects = 0
        self._frames: asyncio.Queue[Frame] = asyncio.Queue(maxsize=64)
        self._token: str | None = None
        self._expires_at = 0.0
        self._refresh_at = 0.0
        self._lifetime = 0.0
        self._failures = 0
        self._collisions = 0
        self._ws_failures = 0
        self._polling_since = 0.0
        self._conn: StreamConnection | None = None
        self._poll_watermark = watermark
        self.stopping = asyncio.Event()
        """Set by the owner to let go of just this conversation (its lease is gone, the worker stops)."""
        self.stored_watermark = watermark
        """The watermark last written to the directory (the owner's flusher keeps it)."""

    def __repr__(self) -> str:
        return f"<DirectLineConversation {self.name} {self.state}>"

    @property
    def state(self) -> str:
        """The label this conversation is counted under: a `ConnectionStatus` value, or `Parked`."""
        return PARKED if self.parked and self.status is not ConnectionStatus.ENDED else self.status.value

    @property
    def watermark(self) -> str | None:
        """Everything up to this watermark is durable in the queue."""
        return self.tracker.published

    def wake(self) -> None:
        """Someone wants this conversation (an outgoing message): resume it if it is parked."""
        self.last_activity = time.monotonic()
        self.woken.set()

    # --- the life of it ---------------------------------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> str | None:
        """Hold the conversation until `stopping` is set (None) or it ended (the reason)."""
        try:
            async with asyncio.TaskGroup() as tg:
                publisher = tg.create_task(self._publish_loop(), name=f"directline-publish-{self.name}")
                try:
                    await self._lifecycle(stopping)
                except ConversationEnded as ended:
                    self.ended_reason = ended.reason
                    self._set(ConnectionStatus.ENDED, ended.reason)
                finally:
                    await self._drain(publisher)
        finally:
            if self._conn is not None:
                self._conn.abort("stopped")
        return self.ended_reason

    async def _drain(self, publisher: asyncio.Task[None]) -> None:
        """Let the publisher finish what was received (bounded), then stop it."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await self._frames.join()
        publisher.cancel()

    async def _lifecycle(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            if self.parked:
                await self._parked(stopping)
                continue
            if self._idle():
                self._park()
                continue
            if self.mode == "polling":
                await self._poll_session(stopping)
                continue
            self._set(ConnectionStatus.CONNECTING, self.detail if self.connects else "")
            grant = await self._grant(stopping)
            if grant is None:
                continue  # stopping, or waited after a failure
            if grant.stream_url is None:
                self._ws_failures += 1
                self._use_polling_if_needed("the service answered no streamUrl")
                continue
            await self._socket_session(grant, stopping)
            if stopping.is_set() or self.parked:
                continue
            conn = self._conn
            if conn is not None and conn.collision:
                self._collisions += 1
                self._event("collisions")
                self._set(ConnectionStatus.FAILED_TO_CONNECT, "collision: another socket holds this conversation")
                if self._collisions >= MAX_COLLISIONS:
                    self._switch_to_polling("collisions")
                await self._sleep(self._reconnect_delay(self._collisions), stopping)
                continue
            if conn is not None and not conn.connected.is_set():
                self._ws_failures += 1
                self._set(ConnectionStatus.FAILED_TO_CONNECT, conn.end_reason)
                self._use_polling_if_needed(conn.end_reason)
                await self._sleep(self._reconnect_delay(self._ws_failures), stopping)
                continue
            self._collisions = 0
            self._ws_failures = 0
            self._event("reconnects")
            reason = conn.end_reason if conn is not None else "ended"
            self._set(ConnectionStatus.CONNECTING, f"reconnecting after: {reason}")
            await self._sleep(self._reconnect_delay(1), stopping)

    # --- tokens and grants ------------------------------------------------------------------------------

    async def _grant(self, stopping: asyncio.Event) -> Grant | None:
        """A fresh streamUrl and token (resume from the published watermark); None after a wait or when stopping."""
        token = self._token if self._token_valid() else None
        try:
            try:
                grant = await self._api.resume(self.id, self.tracker.published, token=token)
            except TokenExpired:
                if token is None:
                    raise
                self._expired("the token was refused (403) on reconnect")
                grant = await self._api.resume(self.id, self.tracker.published, token=None)
        except ConversationNotFound as exc:
            raise ConversationEnded(
                f"the service no longer knows this conversation (404 {exc.code or ''})".strip()
            ) from None
        except TokenExpired as exc:
            raise ConversationEnded(f"the Direct Line secret was refused for this conversation ({exc})") from None
        except DirectLineRejected as exc:
            raise ConversationEnded(f"the service refused the conversation: {exc}") from None
        except DirectLineApiError as exc:
            self._failures += 1
            self._set(ConnectionStatus.FAILED_TO_CONNECT, str(exc))
            delay = self._reconnect_delay(self._failures)
            if exc.retry_after is not None:
                delay = max(delay, min(exc.retry_after, self.settings.max_retry_after))
            await self._sleep(delay, stopping)
            return None
        self._failures = 0
        self._take_token(grant.token, grant.expires_in, grant.issued_at)
        return grant

    def _take_token(self, token: str, expires_in: float, issued_at: float) -> None:
        self._token = token
        self._lifetime = expires_in
        self._expires_at = issued_at + expires_in
        self._refresh_at = issued_at + expires_in * self.settings.refresh_fraction

    def _token_valid(self) -> bool:
        return self._token is not None and self._clock() < self._expires_at - self._margin()

    def _margin(self) -> float:
        return min(EXPIRY_MARGIN, self._lifetime * 0.1) if self._lifetime != float("inf") else 0.0

    def _expired(self, why: str) -> None:
        self._event("expired_tokens")
        self._token = None
        self._set(ConnectionStatus.EXPIRED_TOKEN, why)

    async def _token_keeper(self) -> None:
        """Refresh before expiry; regenerate after it; notice a machine that slept (wall clock jumped)."""
        s = self.settings
        last_wall, last_mono = self._clock(), time.monotonic()
        while True:
            await asyncio.sleep(s.tick_seconds)
            wall, mono = self._clock(), time.monotonic()
            slept = (wall - last_wall) - (mono - last_mono)
            last_wall, last_mono = wall, mono
            if slept > SLEEP_JUMP and self._conn is not None:
                log.warning("direct line %s: the machine slept for about %.0f s: reconnecting", self.name, slept)
                self._event("slept")
                self._conn.abort(f"the machine slept for about {slept:.0f} s")
            if self._token is None or self._expires_at == float("inf"):
                continue
            if not self._token_valid():
                self._expired("the token expired before it could be refreshed (the worker was frozen or asleep)")
                await self._regenerate()
            elif wall >= self._refresh_at:
                await self._refresh()

    async def _refresh(self) -> None:
        assert self._token is not None
        try:
            refreshed = await self._api.refresh(self._token)
        except TokenExpired:
            self._expired("tokens/refresh answered 403: the token expired")
            await self._regenerate()
            return
        except DirectLineApiError as exc:
            # try again in a moment, but never after the expiry (the tick checks that first)
            self._refresh_at = self._clock() + min(
                self._reconnect_delay(2), max(1.0, self._expires_at - self._clock()) / 4
            )
            log.warning("direct line %s: token refresh failed (%s): retrying before it expires", self.name, exc)
            return
        self._event("refreshes")
        self._take_token(refreshed.token, refreshed.expires_in, refreshed.issued_at)
        log.debug("direct line %s: token refreshed, expires in %.0f s", self.name, refreshed.expires_in)

    async def _regenerate(self) -> None:
        """A new token from the secret for this conversation (the socket, if up, goes on)."""
        try:
            grant = await self._api.resume(self.id, self.tracker.published, token=None)
        except ConversationNotFound as exc:
            raise ConversationEnded(
                f"the service no longer knows this conversation (404 {exc.code or ''})".strip()
            ) from None
        except TokenExpired as exc:
            raise ConversationEnded(f"the Direct Line secret was refused for this conversation ({exc})") from None
        except DirectLineApiError as exc:
            log.warning("direct line %s: no new token yet (%s): the next reconnect gets one", self.name, exc)
            if self._conn is not None:
                self._conn.abort("no valid token")
            return
        self._take_token(grant.token, grant.expires_in, grant.issued_at)
        self._event("regenerated_tokens")
        conn = self._conn
        if conn is not None and conn.connected.is_set() and not conn.end_reason:
            self._set(ConnectionStatus.ONLINE, "a new token from the secret")
        elif self.mode == "polling":
            self._set(ConnectionStatus.ONLINE, "polling, with a new token from the secret")

    # --- the socket ------------------------------------------------------------------------------------------

    async def _socket_session(self, grant: Grant, stopping: asyncio.Event) -> None:
        s = self.settings
        assert grant.stream_url is not None
        self.connects += 1
        conn = StreamConnection(
            self.id,
            grant.stream_url,
            self._frames,
            name=f"{self.name}.{self.connects}",
            open_timeout=s.open_timeout,
            ping_interval=s.ping_interval,
            liveness_timeout=s.liveness_timeout,
            max_frame_bytes=s.max_frame_bytes,
        )
        self._conn = conn
        try:
            async with asyncio.TaskGroup() as tg:
                running = tg.create_task(conn.run(), name=f"directline-socket-{conn.name}")
                keeper = tg.create_task(self._token_keeper(), name=f"directline-token-{conn.name}")
                watch = tg.create_task(self._watch(conn, stopping), name=f"directline-watch-{conn.name}")
                await asyncio.wait([running])
                keeper.cancel()
                watch.cancel()
        except* ConversationEnded as group:
            conn.abort("ended")
            raise _first(group) from None

    async def _watch(self, conn: StreamConnection, stopping: asyncio.Event) -> None:
        """Online once connected; close the socket when stopping or idle."""
        await conn.connected.wait()
        self._set(ConnectionStatus.ONLINE, f"websocket {conn.name}")
        self._ws_failures = 0
        while True:
            await _wait_any(stopping, self.woken, within=min(self.settings.idle_park_seconds / 4, 5.0))
            self.woken.clear()
            if stopping.is_set():
                await conn.close()
                return
            if self._idle():
                self._park()
                await conn.close()
                return

    # --- polling -----------------------------------------------------------------------------------------------

    async def _poll_session(self, stopping: asyncio.Event) -> None:
        if not self._token_valid():
            grant = await self._grant(stopping)
            if grant is None:
                return
        self._set(ConnectionStatus.ONLINE, "polling (GET activities)")
        try:
            async with asyncio.TaskGroup() as tg:
                keeper = tg.create_task(self._token_keeper(), name=f"directline-token-{self.name}-poll")
                await self._poll_loop(stopping)
                keeper.cancel()
        except* ConversationEnded as group:
            raise _first(group) from None

    async def _poll_loop(self, stopping: asyncio.Event) -> None:
        s = self.settings
        while not stopping.is_set():
            if self._idle():
                self._park()
                return
            if s.websocket and time.monotonic() - self._polling_since > s.websocket_retry_seconds:
                log.info("direct line %s: trying a websocket again after polling", self.name)
                self.mode = "websocket"
                self._ws_failures = 0
                self._collisions = 0
                return
            try:
                await self._poll_once()
            except ConversationNotFound as exc:
                raise ConversationEnded(
                    f"the service no longer knows this conversation (404 {exc.code or ''})".strip()
                ) from None
            except TokenExpired:
                self._expired("GET activities answered 403")
                await self._regenerate()
            except DirectLineApiError as exc:
                self._set(ConnectionStatus.FAILED_TO_CONNECT, f"polling: {exc}")
                delay = self._reconnect_delay(2)
                if exc.retry_after is not None:
                    delay = max(delay, min(exc.retry_after, s.max_retry_after))
                await self._sleep(delay, stopping)
                continue
            else:
                if self.status is not ConnectionStatus.ONLINE:
                    self._set(ConnectionStatus.ONLINE, "polling (GET activities)")
            await _wait_any(stopping, self.woken, within=s.poll_seconds)
            self.woken.clear()

    async def _poll_once(self, *, token: str | None = None, use_token: bool = True) -> int:
        """One GET activities after what was seen; its set goes to the publisher. Returns how many activities."""
        self._event("polls")
        auth = (self._token if self._token_valid() else None) if use_token else token
        watermark = self._poll_watermark if is_ahead(self._poll_watermark, self.tracker.seen) else self.tracker.seen
        activity_set = await self._api.activities(self.id, watermark, token=auth)
        if is_ahead(activity_set.watermark, self._poll_watermark):
            self._poll_watermark = activity_set.watermark
        if activity_set.activities:
            await self._frames.put(activity_set)
        return len(activity_set.activities)

    def _use_polling_if_needed(self, why: str) -> None:
        if self._ws_failures >= self.settings.websocket_failures_before_polling:
            self._switch_to_polling(why)

    def _switch_to_polling(self, why: str) -> None:
        log.warning("direct line %s: websockets keep failing (%s): polling instead", self.name, redact(why))
        self._event("polling_fallbacks")
        self.mode = "polling"
        self._polling_since = time.monotonic()

    # --- parking -----------------------------------------------------------------------------------------------

    def _idle(self) -> bool:
        return time.monotonic() - self.last_activity > self.settings.idle_park_seconds and self.tracker.in_flight == 0

    def _park(self) -> None:
        if self.parked:
            return
        self.parked = True
        self.woken.clear()
        self._event("parked")
        log.info("direct line %s: idle for %.0f s: parked (socket closed)", self.name, self.settings.idle_park_seconds)
        self._on_change(self)

    async def _parked(self, stopping: asyncio.Event) -> None:
        """Wait for a wake-up or the next poll; a poll that finds activities resumes the conversation."""
        await _wait_any(stopping, self.woken, within=self.settings.park_poll_seconds)
        if stopping.is_set():
            return
        if self.woken.is_set():
            self.woken.clear()
            self._resume("an outgoing message")
            return
        try:
            found = await self._poll_once(token=None, use_token=False)  # the secret: no token kept while parked
        except ConversationNotFound as exc:
            raise ConversationEnded(
                f"the service no longer knows this conversation (404 {exc.code or ''})".strip()
            ) from None
        except DirectLineApiError as exc:
            log.warning("direct line %s: parked poll failed: %s", self.name, exc)
            return
        if found:
            self._resume(f"a poll found {found} activities")

    def _resume(self, why: str) -> None:
        self.parked = False
        self.last_activity = time.monotonic()
        self._event("resumed")
        log.info("direct line %s: resumed (%s)", self.name, why)
        self._on_change(self)

    # --- publishing ----------------------------------------------------------------------------------------------

    async def _publish_loop(self) -> None:
        while True:
            frame = await self._frames.get()
            try:
                await self._handle(frame)
            except Exception:
                log.exception("direct line %s: a frame could not be handled", self.name)
            finally:
                self._frames.task_done()

    async def _handle(self, frame: Frame) -> None:
        if isinstance(frame, KeepAlive):
            return
        if isinstance(frame, Malformed):
            self._invalid(frame.reason, frame.detail)
            return
        assert isinstance(frame, ActivitySet)
        watermark = frame.watermark
        if watermark is not None and watermark_order(watermark) is None:
            self._invalid("bad_watermark", f"watermark {watermark[:20]!r} is not a sequence number: ignored")
            watermark = None
        if is_behind(watermark, self.tracker.seen):
            self._invalid("watermark_backwards", f"watermark {watermark} after {self.tracker.seen}: ignored")
            watermark = None
        sorted_ = [
            sort_activity(a, self.id, max_activity_bytes=self.settings.max_activity_bytes) for a in frame.activities
        ]
        if frame.activities:
            self.last_activity = time.monotonic()
            if self.parked:
                self.woken.set()  # it arrived while the socket was closing: resume
        publish = [item for item in sorted_ if isinstance(item, Publish)]
        for item in sorted_:
            if isinstance(item, Rejected):
                self._invalid(item.reason, item.detail, item.activity_id)
            elif item is OWN:
                self._event("own_echoes")
        tracked = self.tracker.frame(watermark, len(publish))
        for item in publish:
            await self._deliver(item, tracked)

    async def _deliver(self, item: Publish, tracked: TrackedFrame) -> None:
        envelope = envelope_for(item, self.id, connection_id=self._conn.name if self._conn is not None else None)
        answer = self.tracker.answer(tracked)
        handoff = self._handoff
        attempts = 0
        while True:
            outcome = await handoff.deliver(envelope, answer, policy=AckPolicy.REDELIVERS)
            if outcome is Outcome.PUBLISHED:
                self.published += 1
                return
            if outcome is Outcome.DUPLICATE:
                return
            attempts = 0 if handoff.breaker.is_open else attempts + 1
            if attempts >= self.settings.publish_attempts:
                self.tracker.done(tracked)
                self._invalid(
                    "unpublishable",
                    f"not published after {attempts} attempts while the queue accepts others: skipped",
                    item.activity_id,
                )
                return
            await handoff.admitting()
            await asyncio.sleep(min(5.0, 0.05 * (2**attempts)))

    def _invalid(self, reason: str, detail: str, activity_id: str | None = None) -> None:
        self._metrics.invalid(PLATFORM, reason)
        log.warning(
            "direct line %s: invalid input reason=%s activity_id=%s: %s", self.name, reason, activity_id, redact(detail)
        )

    # --- helpers -----------------------------------------------------------------------------------------------

    def _set(self, status: ConnectionStatus, detail: str = "") -> None:
        detail = redact(detail)[:300] if detail else ""
        changed = status is not self.status
        self.status, self.detail = status, detail
        if changed:
            log.info("direct line conversation %s: %s%s", self.name, status.value, f" ({detail})" if detail else "")
            self._on_change(self)

    def _reconnect_delay(self, failures: int) -> float:
        s = self.settings
        base = self._rng.uniform(s.reconnect_min_seconds, s.reconnect_max_seconds)
        return float(min(s.backoff_cap_seconds, base * (2 ** max(0, failures - 1))))

    async def _sleep(self, delay: float, stopping: asyncio.Event) -> None:
        await _wait_any(stopping, within=delay)


def _first(group: BaseExceptionGroup[ConversationEnded]) -> ConversationEnded:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first(exc)
        return exc
    return ConversationEnded("ended")


async def _wait_any(*events: asyncio.Event, within: float | None = None) -> None:
    if any(e.is_set() for e in events):
        return
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
