"""One Slack Socket Mode websocket: read frames, hand envelopes off, ack what `Handoff` says to ack.

The connection only moves frames; parsing and ack building are in `worker.slack.protocol`, the ack
decision in `worker.handoff`. The reader never waits for a publish: each envelope is handed off in its
own task (at most `max_in_flight` at once; beyond that the reader pauses, which is the backpressure).
Acks are queued to one writer task that sends everything queued meanwhile in a single socket write
(still one websocket frame per ack, as Slack expects).

Every task belongs to the connection's `TaskGroup` (reader, keepalive, ack writer, hand-offs); `run()` returns once
all of them finished. The connection ends when the socket closes, when the liveness watchdog sees no
inbound traffic for `liveness_timeout` (a half-open socket: it is aborted), or when its owner calls
`drain()` (stop reading, finish in-flight hand-offs and acks, close) or `abort()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from worker.handoff import Handoff
from worker.metrics import Metrics
from worker.slack.api import redact
from worker.slack.protocol import Disconnect, EnvelopeFrame, Hello, Invalid, build_ack, parse_frame
from worker.slack.settings import SlackSettings
from worker.wsio import write_text_frames

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
    ) -> None:
        self.id = connection_id
        self.url = url
        self._settings = settings
        self._handoff = handoff
        self._metrics = metrics
        self._expected = expected_connections
        self.ready = asyncio.Event()
        self.ended = asyncio.Event()
        self.disconnect_requested = asyncio.Event()
        self.hello: Hello | None = None
        self.disconnect_reason: str | None = None
        self.end_reason = ""
        self.acked = 0
        self._in_flight = 0
        self._room = asyncio.Event()
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._draining = False
        self._last_inbound = 0.0
        self._pong: asyncio.Future[float] | None = None
        self._acks: list[EnvelopeFrame] = []
        self._acks_ready = asyncio.Event()
        self._acks_closed = False

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
                max_size=None,  # the size limit is applied by parse_frame, so an oversized frame is counted
                max_queue=64,
                compression=None,
            )
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            self.end_reason = f"websocket connect failed: {type(exc).__name__}: {exc}"
            log.warning("slack connection %s: %s url=%s", self.id, self.end_reason, redact(self.url))
            return
        self._ws = ws
        loop = asyncio.get_running_loop()
        self._last_inbound = loop.time()
        try:
            async with asyncio.TaskGroup() as outer:
                writer = outer.create_task(self._write_acks(ws), name=f"slack-acks-{self.id}")
                keepalive = outer.create_task(self._keepalive(ws), name=f"slack-keepalive-{self.id}")
                try:
                    async with asyncio.timeout(None) as drain_deadline, asyncio.TaskGroup() as tg:
                        self._reader = tg.create_task(self._read(ws, tg), name=f"slack-read-{self.id}")
                        if self._draining:
                            self._reader.cancel()
                        await asyncio.wait([self._reader])
                        # leaving this TaskGroup waits for in-flight hand-offs, within a bound
                        drain_deadline.reschedule(loop.time() + s.drain_timeout)
                except TimeoutError:
                    log.warning(
                        "slack connection %s: in-flight hand-offs cut off after %.1f s", self.id, s.drain_timeout
                    )
                finally:
                    keepalive.cancel()
                    self._acks_closed = True  # the writer sends what is queued, then returns
                    self._acks_ready.set()
                await writer
        finally:
            await ws.close()
            self.end_reason = self.end_reason or _close_description(ws)
            log.info("slack connection %s ended: %s (acked %d)", self.id, self.end_reason, self.acked)

    async def _read(self, ws: ClientConnection, tg: asyncio.TaskGroup) -> None:
        loop = asyncio.get_running_loop()
        max_frame = self._settings.max_frame_bytes
        max_in_flight = self._settings.max_in_flight
        try:
            async for data in ws:
                self._last_inbound = loop.time()
                frame = parse_frame(data, connection_id=self.id, max_frame_bytes=max_frame)
                if isinstance(frame, EnvelopeFrame):
                    if self._in_flight >= max_in_flight:  # backpressure: stop reading until one finishes
                        self._room.clear()
                        await self._room.wait()
                    self._in_flight += 1
                    tg.create_task(self._hand_off(frame))
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
        # During a make-before-break rotation one extra socket is expected.
        if hello.num_connections is not None and hello.num_connections > self._expected + 1:
            log.warning(
                "slack connection %s: Slack counts %d connections for this app but this worker holds %d: "
                "ghost (half-open) connections or another worker share the app's events",
                self.id,
                hello.num_connections,
                self._expected,
            )
        self.ready.set()

    def _on_disconnect(self, frame: Disconnect) -> None:
        log.info("slack connection %s: disconnect requested reason=%s", self.id, frame.reason)
        self.disconnect_reason = frame.reason
        self.disconnect_requested.set()

    async def _hand_off(self, frame: EnvelopeFrame) -> None:
        try:
            result = await self._handoff.hand_off(frame.envelope, frame.keys)
            if result.ack:
                self._acks.append(frame)
                self._acks_ready.set()
        except Exception:
            log.exception(
                "slack connection %s: hand-off crashed envelope_id=%s (not acked)", self.id, frame.envelope_id
            )
        finally:
            self._in_flight -= 1
            self._room.set()

    async def _write_acks(self, ws: ClientConnection) -> None:
        """Send queued acks; all acks queued meanwhile go out in one socket write (one frame each)."""
        while True:
            await self._acks_ready.wait()
            self._acks_ready.clear()
            batch, self._acks = self._acks, []
            if batch:
                await self._send_acks(ws, batch)
            if self._acks_closed and not self._acks:
                return

    async def _send_acks(self, ws: ClientConnection, batch: list[EnvelopeFrame]) -> None:
        try:
            await write_text_frames(ws, [build_ack(frame.envelope_id).text.encode() for frame in batch])
        except ConnectionClosed:
            for frame in batch:
                log.warning(
                    "slack connection %s: socket closed before the ack; Slack redelivers envelope_id=%s "
                    "dedupe_key=%s (already durable: the redelivery is acked as a duplicate)",
                    self.id,
                    frame.envelope_id,
                    frame.envelope.dedupe_key,
                )
            return
        self.acked += len(batch)
        for frame in batch:
            self._handoff.acked(frame.envelope)

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
