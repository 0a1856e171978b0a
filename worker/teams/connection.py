"""One SignalR hub connection over `websockets`: moves frames, owns its tasks, nothing more.

`HubConnection(url, deliver=…)`:

- `await open()`: websocket, JSON handshake (`handshake_timeout`);
- `run()`: reads frames and hands every delivery invocation to `deliver(connection, invocation,
  recv_at_ms)` as its own task (at most `max_in_flight` at once: the reader never waits for a publish,
  only for a free slot), answers nothing by itself except a `SocketReady` that carries an invocationId;
  sends a ping every `keepalive` seconds; ends the connection when nothing came in for `server_timeout`
  seconds (a silent or frozen server). Returns an `EndReason`.
- `ready`: set on `SocketReady` (or at once when `require_ready` is false, the draft contract).
- `await stop()`: stop reading, let in-flight deliveries finish and send their completions (up to
  `drain_timeout`), close the socket.

The protocol itself lives in `worker.teams.signalr`; what a delivery means lives in the connector.
The URL carries the access token: it is never logged (see `redact`), including by `websockets`'
own DEBUG lines (its logger is wrapped by `RedactingLogger`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from worker.teams import signalr
from worker.teams.negotiate import redact
from worker.teams.protocol import is_delivery_target, is_ready_target
from worker.wsio import write_text_frames

log = logging.getLogger(__name__)

_TOKEN_RE = re.compile(r"(access_token|id|token)=[^&\s]+", re.IGNORECASE)


class RedactingLogger(logging.LoggerAdapter[logging.Logger]):
    """Hands `websockets` a logger whose messages never carry query-string secrets."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        return msg, kwargs

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        text = str(msg) % args if args else str(msg)
        self.logger.log(level, "%s", _TOKEN_RE.sub(r"\1=<redacted>", text), **kwargs)


_WS_LOGGER = RedactingLogger(logging.getLogger("worker.teams.websocket"), {})


@dataclass(frozen=True, slots=True)
class Timings:
    """Every timing constant of a connection, production defaults; tests shrink them."""

    keepalive: float = 15.0
    server_timeout: float = 30.0
    handshake_timeout: float = 15.0
    ready_timeout: float = 30.0
    open_timeout: float = 15.0
    close_timeout: float = 2.0
    drain_timeout: float = 10.0
    negotiate_timeout: float = 15.0


@dataclass(frozen=True, slots=True)
class EndReason:
    kind: str
    """closed (server close message), dropped (socket ended), silent (nothing inbound), stopped, error."""
    detail: str = ""
    allow_reconnect: bool = False

    def __str__(self) -> str:
        return f"{self.kind}{': ' + self.detail if self.detail else ''}"


Deliver = Callable[["HubConnection", signalr.Invocation, int], Awaitable[None]]
InvalidFrame = Callable[[str], None]


def epoch_ms() -> int:
    return int(time.time() * 1000)


class HubConnection:
    def __init__(
        self,
        url: str,
        deliver: Deliver,
        *,
        name: str = "teams",
        timings: Timings | None = None,
        max_in_flight: int = 1000,
        require_ready: bool = True,
        on_invalid: InvalidFrame | None = None,
        context: Mapping[str, str] | None = None,
    ) -> None:
        self._url = url
        self._deliver = deliver
        self.name = name
        self.timings = timings or Timings()
        self._require_ready = require_ready
        self._on_invalid = on_invalid or (lambda _reason: None)
        self.context = dict(context or {})
        self.protocol = signalr.ClientProtocol()
        self.ready = asyncio.Event()
        self.connection_id: str | None = None
        self.bot_key: str | None = None
        self._ws: ClientConnection | None = None
        self._max_in_flight = max_in_flight
        self._deliveries = 0  # deliveries under way (the backpressure count)
        self._room = asyncio.Event()  # set whenever a delivery finishes (wakes a reader waiting for a slot)
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._backlog: list[signalr.Event] = []
        self._outbox: list[bytes] = []
        self._outbox_written: asyncio.Future[bool] | None = None
        self._reader: asyncio.Task[EndReason] | None = None
        self._end: EndReason | None = None
        self._last_inbound = time.monotonic()
        self._waiting_for_slot = False
        self._stopping = False
        self.received = 0

    def __repr__(self) -> str:
        return f"HubConnection({self.name}, {redact(self._url)}, connection_id={self.connection_id})"

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def ended(self) -> EndReason | None:
        return self._end

    async def open(self) -> None:
        """Connect and complete the handshake; raises on failure (the socket is closed then)."""
        t = self.timings
        self._ws = await connect(
            self._url,
            open_timeout=t.open_timeout,
            close_timeout=t.close_timeout,
            max_size=16 * 1024 * 1024,
            compression=None,
            logger=_WS_LOGGER,
        )
        try:
            await self._ws.send(self.protocol.initiate())
            async with asyncio.timeout(t.handshake_timeout):
                while not self.protocol.handshake_done:
                    self._backlog.extend(self.protocol.receive(await self._ws.recv()))
        except BaseException:
            await self._abort()
            raise
        self._last_inbound = time.monotonic()
        if not self._require_ready:
            self.ready.set()

    async def run(self) -> EndReason:
        """Serve until the socket ends, the server goes silent or `stop()`; always closes the socket."""
        if self._ws is None:
            raise RuntimeError("open() first")
        self._reader = asyncio.create_task(self._read(), name=f"teams-read-{self.name}")
        helpers = [
            asyncio.create_task(self._ping(), name=f"teams-ping-{self.name}"),
            asyncio.create_task(self._watch(), name=f"teams-watch-{self.name}"),
        ]
        try:
            try:
                reason = await self._reader
            except asyncio.CancelledError:
                if self._end is None:
                    raise
                reason = self._end
            self._end = self._end or reason
            return self._end
        finally:
            for task in helpers:
                task.cancel()
            if not self._reader.done():
                self._reader.cancel()
            await asyncio.gather(self._reader, *helpers, return_exceptions=True)
            await self._drain()
            await self._abort()

    async def stop(self, detail: str = "stopping") -> None:
        """Stop reading new frames; `run()` then drains in-flight deliveries and closes."""
        self._stopping = True
        self._finish(EndReason("stopped", detail, allow_reconnect=True))

    async def send(self, frame: str) -> bool:
        """Send one encoded frame; False when the socket is already gone.

        Frames sent during one event-loop iteration (completions of deliveries that finished
        together) go out in one socket write: the first sender waits one iteration, then writes
        everything queued meanwhile; the others wait for that write.
        """
        ws = self._ws
        if ws is None:
            return False
        self._outbox.append(frame.encode())
        if self._outbox_written is not None:
            return await asyncio.shield(self._outbox_written)
        written = self._outbox_written = asyncio.get_running_loop().create_future()
        ok = False
        try:
            await asyncio.sleep(0)
            batch, self._outbox, self._outbox_written = self._outbox, [], None
            await write_text_frames(ws, batch)
            ok = True
        except (ConnectionClosed, WebSocketException, OSError):
            pass
        finally:
            if self._outbox_written is written:  # cancelled before writing: nothing of this batch was sent
                self._outbox, self._outbox_written = [], None
            written.set_result(ok)
        return ok

    async def send_completion(self, invocation_id: str, result: Any) -> bool:
        return await self.send(signalr.completion(invocation_id, result))

    # --- internals ---

    def _finish(self, reason: EndReason) -> None:
        if self._end is None:
            self._end = reason
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()

    async def _read(self) -> EndReason:
        assert self._ws is not None
        ws = self._ws
        backlog, self._backlog = self._backlog, []
        for event in backlog:
            await self._handle(event)
        while True:
            try:
                data = await ws.recv()
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else None
                return EndReason("dropped", f"websocket closed (code {code})", allow_reconnect=True)
            self._last_inbound = time.monotonic()
            try:
                events = self.protocol.receive(data)
            except signalr.SignalRProtocolError as exc:
                self._on_invalid("overflow")
                return EndReason("error", str(exc))
            for event in events:
                reason = await self._handle(event)
                if reason is not None:
                    return reason

    async def _handle(self, event: signalr.Event) -> EndReason | None:
        if isinstance(event, signalr.Invocation):
            if is_delivery_target(event.target):
                if not self.ready.is_set():
                    log.info("delivery before SocketReady on %s: treating the socket as ready", self.name)
                    self.ready.set()
                self.received += 1
                await self._spawn(event)
            elif is_ready_target(event.target):
                self._socket_ready(event)
            else:
                log.debug("ignoring invocation of %r on %s", event.target, self.name)
                if event.invocation_id is not None:
                    await self.send(signalr.completion(event.invocation_id, error=f"unknown target {event.target}"))
        elif isinstance(event, signalr.Close):
            return EndReason("closed", event.error or "", allow_reconnect=event.allow_reconnect)
        elif isinstance(event, signalr.MalformedFrame):
            self._on_invalid(event.reason)
            log.warning("malformed frame on %s: %s %s", self.name, event.reason, event.detail)
        # pings, acks, sequences, completions and stream messages need nothing from this client
        return None

    def _socket_ready(self, event: signalr.Invocation) -> None:
        info = event.arguments[0] if event.arguments and isinstance(event.arguments[0], dict) else {}
        keys = {k[:1].lower() + k[1:]: v for k, v in info.items()}
        self.connection_id = str(keys.get("connectionId") or "") or self.connection_id
        self.bot_key = str(keys.get("botKey") or "") or self.bot_key
        self.ready.set()
        if event.invocation_id is not None:
            task = asyncio.create_task(self.send(signalr.completion(event.invocation_id, None)))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    async def _spawn(self, invocation: signalr.Invocation) -> None:
        recv_at = epoch_ms()
        if self._deliveries >= self._max_in_flight:  # backpressure: the reader waits for a slot
            self._waiting_for_slot = True
            try:
                while self._deliveries >= self._max_in_flight:
                    self._room.clear()
                    await self._room.wait()
            finally:
                self._waiting_for_slot = False
                self._last_inbound = time.monotonic()
        self._deliveries += 1
        task = asyncio.create_task(self._run_delivery(invocation, recv_at))
        self._in_flight.add(task)
        task.add_done_callback(self._delivery_done)

    def _delivery_done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._deliveries -= 1
        self._room.set()

    async def _run_delivery(self, invocation: signalr.Invocation, recv_at: int) -> None:
        try:
            await self._deliver(self, invocation, recv_at)
        except Exception:
            log.exception("delivery failed on %s (invocation %s)", self.name, invocation.invocation_id)

    async def _ping(self) -> None:
        frame = signalr.ping()
        while True:
            await asyncio.sleep(self.timings.keepalive)
            await self.send(frame)

    async def _watch(self) -> None:
        timeout = self.timings.server_timeout
        step = min(1.0, timeout / 4)
        while True:
            await asyncio.sleep(step)
            if self._waiting_for_slot:
                continue
            silent_for = time.monotonic() - self._last_inbound
            if silent_for > timeout:
                log.warning("nothing from the server on %s for %.1f s: replacing it", self.name, silent_for)
                self._finish(EndReason("silent", f"nothing inbound for {silent_for:.1f} s", allow_reconnect=True))
                return

    async def _drain(self) -> None:
        if self._in_flight:
            _done, pending = await asyncio.wait(set(self._in_flight), timeout=self.timings.drain_timeout)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("%d deliveries still in flight on %s after the drain timeout", len(pending), self.name)
                await asyncio.gather(*pending, return_exceptions=True)

    async def _abort(self) -> None:
        ws = self._ws
        if ws is None:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.timings.close_timeout):
                await ws.close()
        ws.transport.abort()
