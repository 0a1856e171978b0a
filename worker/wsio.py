"""Write many websocket text frames in one socket write (the connectors' ack and completion path).

`websockets` sends each message with its own `transport.write`, one system call per ack. Under load a
connector finishes many hand-offs in one event-loop iteration; their acks (Slack) or completions
(Teams) are queued and written together here: still one websocket frame per message, as the platforms
expect, but one system call for all of them.

`FrameWriter(ws)`: `send_nowait(frame)` queues a frame and returns the future of its batch (True once
written, False if the socket was gone), without suspending the caller: the hand-off path attaches the
acked counter to it (`worker.handoff`). `run()` is the writer task (owned by the connection's
TaskGroup): each time it wakes it writes everything queued meanwhile; `close()` makes it write what is
left and return.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from websockets.asyncio.connection import Connection
from websockets.exceptions import ConnectionClosed, WebSocketException

log = logging.getLogger(__name__)


async def write_text_frames(ws: Connection, frames: Iterable[bytes]) -> None:
    """Frame every UTF-8 text in `frames` and write them at once; raises `ConnectionClosed` like `send`."""
    async with ws.send_context():
        protocol = ws.protocol
        for frame in frames:
            protocol.send_text(frame)
        ws.transport.write(b"".join(protocol.data_to_send()))


class FrameWriter:
    """Batches the text frames queued while the writer task waits into one socket write."""

    def __init__(self, ws: Connection, name: str = "connection") -> None:
        self._ws = ws
        self.name = name
        self._outbox: list[bytes] = []
        self._batch: asyncio.Future[bool] | None = None
        self._wakeup = asyncio.Event()
        self._closing = False
        self._failed = False
        self.frames = 0
        """Frames that reached the socket."""

    def send_nowait(self, frame: bytes) -> asyncio.Future[bool]:
        """Queue one UTF-8 text frame; the future says whether its batch was written."""
        batch = self._batch
        if batch is None:
            batch = self._batch = asyncio.get_running_loop().create_future()
            if self._closing or self._failed:
                batch.set_result(False)
                self._batch = None
                return batch
            self._wakeup.set()
        self._outbox.append(frame)
        return batch

    async def send(self, frame: bytes) -> bool:
        """Queue one frame and wait until its batch was written (pings, answers outside the hot path)."""
        return await asyncio.shield(self.send_nowait(frame))

    def close(self) -> None:
        """Write what is queued, then let `run()` return; later frames are refused (False)."""
        self._closing = True
        self._wakeup.set()

    async def run(self) -> None:
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                batch, future = self._outbox, self._batch
                self._outbox, self._batch = [], None
                if future is not None:
                    ok = False
                    if not self._failed:
                        try:
                            await write_text_frames(self._ws, batch)
                            ok = True
                            self.frames += len(batch)
                        except (ConnectionClosed, WebSocketException, OSError):
                            self._failed = True
                            log.warning(
                                "%s: socket closed before %d queued frame(s) were written; the platform "
                                "redelivers (what is already durable is then answered as a duplicate)",
                                self.name,
                                len(batch),
                            )
                    future.set_result(ok)
                if self._closing and self._batch is None:
                    return
        finally:
            future = self._batch
            self._outbox, self._batch = [], None
            if future is not None and not future.done():
                future.set_result(False)
