"""One Direct Line websocket (a conversation's `streamUrl`): frames in, nothing else.

The connection parses each message (`worker.directline.protocol.parse_frame`) and hands it to its owner's
bounded queue (`frames`): when the owner is slow to publish, the reader waits, which is the backpressure. It
never publishes, never decides about watermarks.

Its tasks (reader, keepalive) belong to its `TaskGroup`; `run()` returns when the socket ended, with
`end_reason` saying why. The keepalive pings the server (and sends the empty messages botframework-directlinejs
sends) and is the watchdog: no inbound traffic (frames, keep-alives, pongs) for `liveness_timeout` is a dead
socket, typically a laptop that slept, and it is aborted so the owner reconnects with its watermark. A close
with reason `collision` (another socket took the conversation) sets `collision`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from shared.redact import describe_exception, redact_url
from worker.directline.protocol import Frame, parse_frame

log = logging.getLogger(__name__)

COLLISION = "collision"


class StreamConnection:
    def __init__(
        self,
        conversation_id: str,
        url: str,
        frames: asyncio.Queue[Frame],
        *,
        name: str,
        open_timeout: float = 15.0,
        ping_interval: float = 20.0,
        liveness_timeout: float = 65.0,
        max_frame_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self.conversation_id = conversation_id
        self.url = url
        self.name = name
        self._frames = frames
        self._open_timeout = open_timeout
        self._ping_interval = ping_interval
        self._liveness_timeout = liveness_timeout
        self._max_frame_bytes = max_frame_bytes
        self.connected = asyncio.Event()
        self.end_reason = ""
        self.collision = False
        self.refused_status: int | None = None
        """The HTTP status when the server refused the upgrade (an expired or reused streamUrl: 403)."""
        self.frames_received = 0
        self._ws: ClientConnection | None = None
        self._last_inbound = 0.0

    def abort(self, reason: str) -> None:
        """Drop the socket now (the reader ends, `run()` returns)."""
        self.end_reason = self.end_reason or reason
        if self._ws is not None:
            self._ws.transport.abort()

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()

    async def run(self) -> None:
        try:
            ws = await connect(
                self.url,
                open_timeout=self._open_timeout,
                close_timeout=2.0,
                ping_interval=None,  # our own keepalive: its pongs feed the watchdog
                max_size=self._max_frame_bytes * 2,
                max_queue=16,
                compression=None,
            )
        except InvalidStatus as exc:
            self.refused_status = exc.response.status_code
            self.end_reason = f"websocket refused: HTTP {exc.response.status_code}"
            log.warning("direct line %s: %s url=%s", self.name, self.end_reason, redact_url(self.url))
            return
        except Exception as exc:  # DNS, TLS, handshake, timeout, a URL websockets refuses
            self.end_reason = f"websocket connect failed: {describe_exception(exc)}"
            log.warning("direct line %s: %s url=%s", self.name, self.end_reason, redact_url(self.url))
            return
        self._ws = ws
        self._last_inbound = asyncio.get_running_loop().time()
        self.connected.set()
        try:
            async with asyncio.TaskGroup() as tg:
                reader = tg.create_task(self._read(ws), name=f"directline-read-{self.name}")
                keepalive = tg.create_task(self._keepalive(ws), name=f"directline-keepalive-{self.name}")
                await asyncio.wait([reader])
                keepalive.cancel()
        finally:
            with contextlib.suppress(Exception):
                await ws.close()
            code, reason = ws.close_code, ws.close_reason
            if reason == COLLISION:
                self.collision = True
            if not self.end_reason:
                self.end_reason = (
                    "closed" if code is None else f"closed code={code}" + (f" reason={reason}" if reason else "")
                )

    async def _read(self, ws: ClientConnection) -> None:
        loop = asyncio.get_running_loop()
        limit = self._max_frame_bytes
        try:
            while True:
                data = await ws.recv(decode=False)
                self._last_inbound = loop.time()
                self.frames_received += 1
                await self._frames.put(parse_frame(data, max_frame_bytes=limit))
        except ConnectionClosed:
            pass

    async def _keepalive(self, ws: ClientConnection) -> None:
        loop = asyncio.get_running_loop()
        tick = min(self._ping_interval, self._liveness_timeout / 4)
        next_ping = loop.time() + self._ping_interval
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            silent = now - self._last_inbound
            if silent > self._liveness_timeout:
                log.warning(
                    "direct line %s: nothing received for %.1f s (asleep, or a half-open socket): reconnecting",
                    self.name,
                    silent,
                )
                self.abort(f"silent for {silent:.1f} s")
                return
            if now >= next_ping:
                next_ping = now + self._ping_interval
                try:
                    pong = asyncio.ensure_future(await ws.ping())
                except ConnectionClosed:
                    return
                pong.add_done_callback(self._on_pong)

    def _on_pong(self, pong: asyncio.Future[float]) -> None:
        if not pong.cancelled() and pong.exception() is None:
            with contextlib.suppress(RuntimeError):
                self._last_inbound = asyncio.get_running_loop().time()
