"""Write many websocket text frames in one socket write (the connectors' ack and completion path).

`websockets` sends each message with its own `transport.write`, one system call per ack. Under load a
connector finishes many hand-offs in one event-loop iteration; their acks (Slack) or completions
(Teams) are queued and written together here: still one websocket frame per message, as the platforms
expect, but one system call for all of them.
"""

from __future__ import annotations

from collections.abc import Iterable

from websockets.asyncio.connection import Connection


async def write_text_frames(ws: Connection, frames: Iterable[bytes]) -> None:
    """Frame every UTF-8 text in `frames` and write them at once; raises `ConnectionClosed` like `send`."""
    async with ws.send_context():
        protocol = ws.protocol
        for frame in frames:
            protocol.send_text(frame)
        ws.transport.write(b"".join(protocol.data_to_send()))
