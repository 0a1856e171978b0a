"""Write many websocket text frames in one socket write (the connectors' ack and completion path).

`websockets` sends each message with its own `transport.write`, one system call per ack. Under load a
connector finishes many hand-offs in one event-loop iteration; their acks (Slack) or completions
(Teams) are queued and written together here: still one websocket frame per message, as the platforms
expect, but one system call for all of them.

`FrameWriter(ws).send(frame)` is what both connectors' answer actions await: the first frame of an
event-loop iteration waits one iteration for company, then writes everything queued meanwhile; every
sender learns whether its frame reached the socket (False when the socket was already closed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from websockets.asyncio.connection import Connection
from websockets.exceptions import ConnectionClosed, WebSocketException


async def write_text_frames(ws: Connection, frames: Iterable[bytes]) -> None:
    """Frame every UTF-8 text in `frames` and write them at once; raises `ConnectionClosed` like `send`."""
    async with ws.send_context():
        protocol = ws.protocol
        for frame in frames:
            protocol.send_text(frame)
        ws.transport.write(b"".join(protocol.data_to_send()))


class FrameWriter:
    """Batches the text frames sent during one event-loop iteration into one socket write."""

    def __init__(self, ws: Connection) -> None:
        self._ws = ws
        self._outbox: list[bytes] = []
        self._written: asyncio.Future[bool] | None = None
        self.frames = 0
        """Frames that reached the socket."""

    async def send(self, frame: bytes) -> bool:
        """Queue one UTF-8 text frame; True once written, False if the socket is gone."""
        self._outbox.append(frame)
        if self._written is not None:
            return await asyncio.shield(self._written)
        written = self._written = asyncio.get_running_loop().create_future()
        ok = False
        try:
            await asyncio.sleep(0)
            batch, self._outbox, self._written = self._outbox, [], None
            await write_text_frames(self._ws, batch)
            ok = True
            self.frames += len(batch)
        except (ConnectionClosed, WebSocketException, OSError):
            pass
        finally:
            if self._written is written:  # cancelled before writing: nothing of this batch was sent
                self._outbox, self._written = [], None
            written.set_result(ok)
        return ok
