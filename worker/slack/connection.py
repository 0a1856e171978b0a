"""One Slack Socket Mode websocket: read frames, hand envelopes off, ack what `Handoff` says to ack.

The connection only moves frames; parsing and ack building are in `worker.slack.protocol`, the ack
decision in `worker.handoff` (`Handoff.deliver` calls this connection's answer action, which writes the
ack: the connection never decides to ack by itself). The reader never waits for a publish: each envelope
is handed off in its own task (at most `max_in_flight` at once; beyond that the reader pauses, which is
the backpressure; it also pauses while the handoff's circuit breaker is open). Acks finished in one
event-loop iteration go out in one socket write (`worker.wsio.FrameWriter`; still one websocket frame
per ack, as Slack expects).

Every task belongs to the connection's `TaskGroup` (reader, keepalive, hand-offs); `run()` returns once
all of them finished. The connection ends when the socket closes, when the liveness watchdog sees no
inbound traffic for `liveness_timeout` (a half-open socket: it is aborted), or when its owner calls
`drain()` (stop reading, finish in-flight hand-offs and acks, close) or `abort()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from shared.redact import describe_exception, redact_url
from worker import tls
from worker.handoff import Handoff, Verdict
from worker.metrics import Metrics
from worker.slack.protocol import (
    ANSWER_BUDGET_MS,
    Disconnect,
    EnvelopeFrame,
    Hello,
    Invalid,
    build_ack,
    parse_frame,
)
from worker.slack.settings import SlackSettings
from worker.wsio import FrameWriter

MAX_SIZE_FACTOR = 4
"""The websocket refuses (close 1009) frames beyond this many times `max_frame_bytes`; frames between the
two limits are read, counted as `oversized` and dropped while the socket stays up."""

log = logging.getLogger(__name__)


class SlackConnection:
    """A single websocket; `ready` is set on `hello`, `ended` when `run()` is about to return."""

    def __init__(
        self,
        connection_id: str,
        url: str,
        *,
        settings: SlackSettings,
        handoff: Handoff,
        metrics: Metrics,
        expected_connections: int = 1,
        replicas: int = 1,
    ) -> None:
        self.id = connection_id
        self.url = url
        self._settings = settings
        self._handoff = handoff
        self._metrics = metrics
        self._expected = expected_connections
        self._replicas = replicas
        self.ready = asyncio.Event()
        self.ended = asyncio.Event()
        self.disconnect_requested = asyncio.Event()
        self.hello: Hello | None = None
        self.disconnect_reason: str | None = None
        self.end_reason = ""
        self._in_flight = 0
        self._room = asyncio.Event()
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._draining = False
        self._last_inbound = 0.0
        self._pong: asyncio.Future[float] | None = None
        self._writer: FrameWriter | None = None

    def __repr__(self) -> str:
        return f"<SlackConnection {self.id}>"

    # --- owner controls -------------------------------------------------------------------------

    def drain(self) -> None:
        """Stop reading; finish in-flight hand-offs and acks; then close. Returns at once."""
        if self._draining:
            return
        self._draining = True
        if self._reader is not None:
            self._reader.cancel()

    def abort(self, reason: str) -> None:
        """Drop the socket now (in-flight hand-offs finish but their acks will fail)."""
        self.end_reason = self.end_reason or reason
        self.drain()
        if self._ws is not None:
            self._ws.transport.abort()

    # --- the connection's life ------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            self.ended.set()

    async def _run(self) -> None:
        s = self._settings
        try:
            ws = await connect(
                self.url,
                open_timeout=s.open_timeout,
                close_timeout=s.close_timeout,
                ping_interval=None,  # our own keepalive below: its pongs feed the watchdog
                max_size=s.max_frame_bytes * MAX_SIZE_FACTOR,
                max_queue=64,
                compression=None,
                ssl=tls.for_url(self.url),  # one shared TLS context (worker/tls.py)
            )
        except Exception as exc:  # refused URL (bad scheme, port out of range), DNS, TLS, handshake, timeout
            self.end_reason = f"websocket connect failed: {describe_exception(exc)}"
            log.warning("slack connection %s: %s url=%s", self.id, self.end_reason, redact_url(self.url))
            return
        self._ws = ws
        self._writer = FrameWriter(ws, f"slack connection {self.id}")
        loop = asyncio.get_running_loop()
        self._last_inbound = loop.time()
        try:
            async with asyncio.TaskGroup() as outer:
                writer = outer.create_task(self._writer.run(), name=f"slack-acks-{self.id}")
                keepalive = outer.create_task(self._keepalive(ws), name=f"slack-keepalive-{self.id}")
                try:
                    async with asyncio.timeout(None) as drain_deadline, asyncio.TaskGroup() as tg:
                        self._reader = tg.create_task(self._read(ws, tg), name=f"slack-read-{self.id}")
                        if self._draining:
                            self._reader.cancel()
                        await asyncio.wait([self._reader])
                        # leaving this TaskGroup waits for in-flight hand-offs (and their acks), within a bound
                        drain_deadline.reschedule(loop.time() + s.drain_timeout)
                except TimeoutError:
                    log.warning(
                        "slack connection %s: in-flight hand-offs cut off after %.1f s", self.id, s.drain_timeout
                    )
                finally:
                    keepalive.cancel()
                    self._writer.close()  # writes the acks queued so far, then returns
                await writer
        finally:
            await ws.close()
            self.end_reason = self.end_reason or _close_description(ws)
            log.info("slack connection %s ended: %s (acked %d)", self.id, self.end_reason, self.acked)

    async def _read(self, ws: ClientConnection, tg: asyncio.TaskGroup) -> None:
        loop = asyncio.get_running_loop()
        max_frame = self._settings.max_frame_bytes
        max_in_flight = self._settings.max_in_flight
        handoff = self._handoff
        app = self._settings.app
        try:
            while True:
                data = await ws.recv(decode=False)  # bytes: invalid UTF-8 is the parser's to count
                self._last_inbound = loop.time()
                frame = parse_frame(data, connection_id=self.id, max_frame_bytes=max_frame, app=app)
                if isinstance(frame, EnvelopeFrame):
                    if self._in_flight >= max_in_flight:  # backpressure: stop reading until one finishes
                        self._room.clear()
                        await self._room.wait()
                    self._in_flight += 1
                    tg.create_task(self._hand_off(frame))
                    if handoff.paused():  # the queue backend keeps failing: take no more until it recovers
                        await handoff.admitting()
                        self._last_inbound = loop.time()
                elif isinstance(frame, Invalid):
                    self._metrics.invalid("slack", frame.reason)
                    log.warning(
                        "slack connection %s: invalid frame reason=%s envelope_id=%s: %s",
                        self.id,
                        frame.reason,
                        frame.envelope_id,
                        frame.detail,
                    )
                elif isinstance(frame, Hello):
                    self._on_hello(frame)
                elif isinstance(frame, Disconnect):
                    self._on_disconnect(frame)
        except ConnectionClosed:
            pass

    def _on_hello(self, hello: Hello) -> None:
        self.hello = hello
        log.info(
            "slack connection %s: hello app_id=%s num_connections=%s approximate_connection_time=%s host=%s",
            self.id,
            hello.app_id,
            hello.num_connections,
            hello.approximate_connection_time,
            hello.host,
        )
        # Every replica holds its own pool; during a make-before-break rotation each may hold one more socket.
        expected = self._expected * self._replicas
        if hello.num_connections is not None and hello.num_connections > expected + self._replicas:
            log.warning(
                "slack connection %s: Slack counts %d connections for this app but %d replica(s) hold %d "
                "(SLACK_REPLICAS × SLACK_CONNECTIONS): ghost (half-open) connections, or more workers than "
                "SLACK_REPLICAS share the app's events",
                self.id,
                hello.num_connections,
                self._replicas,
                expected,
            )
        self.ready.set()

    def _on_disconnect(self, frame: Disconnect) -> None:
        log.info("slack connection %s: disconnect requested reason=%s", self.id, frame.reason)
        self.disconnect_reason = frame.reason
        self.disconnect_requested.set()

    async def _hand_off(self, frame: EnvelopeFrame) -> None:
        def answer(verdict: Verdict) -> bool | asyncio.Future[bool]:
            if not verdict.ack:
                return False  # no ack: Slack redelivers (events) or the user sees the failure (interactions)
            return self._ack(frame, verdict)

        envelope = frame.envelope
        inbox = self._handoff.replies
        if frame.accepts_response_payload and inbox is not None:
            # the answer rides in the ack: wait for it until 3 s after Slack sent the envelope, minus a margin
            budget = timedelta(milliseconds=ANSWER_BUDGET_MS - self._settings.answer_margin_ms)
            envelope = envelope.model_copy(update={"reply_to": inbox.address(envelope.received_at + budget)})
        try:
            await self._handoff.deliver(envelope, answer, also=(frame.envelope_id,))
        except Exception:
            log.exception(
                "slack connection %s: hand-off crashed envelope_id=%s (not acked)", self.id, frame.envelope_id
            )
        finally:
            self._in_flight -= 1
            self._room.set()

    def _ack(self, frame: EnvelopeFrame, verdict: Verdict) -> asyncio.Future[bool]:
        assert self._writer is not None
        payload = verdict.body if frame.accepts_response_payload else None
        ack = build_ack(frame.envelope_id, payload)
        if ack.payload_dropped:
            self._metrics.answer_fallback("slack", "invalid")
            log.warning(
                "slack connection %s: the answer would make the ack frame reach Slack's 20 KB limit: plain ack "
                "instead envelope_id=%s interaction=%s",
                self.id,
                frame.envelope_id,
                frame.envelope.event_type,
            )
        return self._writer.send_nowait(ack.text.encode())

    @property
    def acked(self) -> int:
        """Acks written to this socket."""
        return self._writer.frames if self._writer is not None else 0

    async def _keepalive(self, ws: ClientConnection) -> None:
        """Client pings, and a watchdog on inbound traffic (frames and pongs)."""
        s = self._settings
        loop = asyncio.get_running_loop()
        tick = min(s.ping_interval, s.liveness_timeout / 4)
        next_ping = loop.time() + s.ping_interval
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            silent = now - self._last_inbound
            if silent > s.liveness_timeout:
                log.warning(
                    "slack connection %s: nothing received for %.1f s (half-open socket?): replacing it",
                    self.id,
                    silent,
                )
                self.abort(f"half-open: silent for {silent:.1f} s")
                return
            if now >= next_ping:
                next_ping = now + s.ping_interval
                try:
                    pong = asyncio.ensure_future(await ws.ping())
                except ConnectionClosed:
                    return
                pong.add_done_callback(self._on_pong)
                self._pong = pong

    def _on_pong(self, pong: asyncio.Future[float]) -> None:
        if not pong.cancelled() and pong.exception() is None:
            with contextlib.suppress(RuntimeError):
                self._last_inbound = asyncio.get_running_loop().time()


def _close_description(ws: ClientConnection) -> str:
    code, reason = ws.close_code, ws.close_reason
    if code is None:
        return "closed"
    return f"closed code={code}{f' reason={reason}' if reason else ''}"
