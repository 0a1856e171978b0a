"""One SignalR hub connection over `websockets`: moves frames, owns its tasks, decides nothing.

`HubConnection(url, deliver=…)`:

- `await open()`: websocket, JSON handshake (`handshake_timeout`);
- `run()`: reads frames and hands every delivery invocation to `deliver(connection, invocation,
  recv_at_ms)` as its own task (at most `max_in_flight` at once: the reader never waits for a publish,
  only for a free slot, and pauses while the handoff's circuit breaker is open); answers nothing by itself
  except a `SocketReady` that carries an invocationId; sends a ping every `keepalive` seconds; ends the
  connection when nothing came in for `server_timeout` seconds (a silent or frozen server). Returns an
  `EndReason`. Every task (reader, ping, watchdog, deliveries) belongs to the connection's TaskGroups:
  when `run()` returns, none is left.
- `ready`: set on `SocketReady` (or at once when `require_ready` is false, the draft contract).
- `stop()`: stop reading; `run()` then lets in-flight deliveries finish and send their completions (up to
  `drain_timeout`) and closes the socket.
- `send(frame)`: frames sent in one event-loop iteration go out in one socket write (`worker.wsio`).

The protocol lives in `worker.teams.signalr` (SignalR) and `worker.teams.protocol` (what a delivery is and
how it is answered); rotation and backoff in `worker.teams.pool`. The URL carries the access token: it is
never logged (`shared.redact`), including by `websockets`' own DEBUG lines (its logger is wrapped).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from shared.redact import redact, redact_url
from worker import tls
from worker.teams import signalr
from worker.teams.protocol import is_delivery_target, is_ready_target, normalise_keys
from worker.wsio import FrameWriter

log = logging.getLogger(__name__)


class RedactingLogger(logging.LoggerAdapter[logging.Logger]):
    """Hands `websockets` a logger whose messages never carry secrets."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        return msg, kwargs

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        text = str(msg) % args if args else str(msg)
        self.logger.log(level, "%s", redact(text), **kwargs)


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
Admission = Callable[[], Awaitable[None] | None]
"""Called before each delivery is read further: returns an awaitable while reading must pause, else None."""


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
        admission: Admission | None = None,
        context: Mapping[str, str] | None = None,
    ) -> None:
        self._url = url
        self._deliver = deliver
        self.name = name
        self.timings = timings or Timings()
        self._require_ready = require_ready
        self._on_invalid = on_invalid or (lambda _reason: None)
        self._admission = admission
        self.context = dict(context or {})
        self.protocol = signalr.ClientProtocol()
        self.ready = asyncio.Event()
        self.connection_id: str | None = None
        self.bot_key: str | None = None
        self._ws: ClientConnection | None = None
        self._writer: FrameWriter | None = None
        self._max_in_flight = max_in_flight
        self._deliveries = 0  # deliveries under way (the backpressure count)
        self._room = asyncio.Event()  # set whenever a delivery finishes (wakes a reader waiting for a slot)
        self._backlog: list[signalr.Event] = []
        self._reader: asyncio.Task[EndReason] | None = None
        self._end: EndReason | None = None
        self._last_inbound = time.monotonic()
        self._waiting = False  # the reader waits on purpose (backpressure, breaker): not a silent server
        self._stopping = False
        self.received = 0

    def __repr__(self) -> str:
        return f"HubConnection({self.name}, {redact_url(self._url)}, connection_id={self.connection_id})"

    @property
    def in_flight(self) -> int:
        return self._deliveries

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
            ssl=tls.for_url(self._url),  # one shared TLS context (worker/tls.py)
        )
        self._writer = FrameWriter(self._ws, f"teams connection {self.name}")
        try:
            await self._ws.send(self.protocol.initiate())
            async with asyncio.timeout(t.handshake_timeout):
                while not self.protocol.handshake_done:
                    self._backlog.extend(self.protocol.receive(await self._ws.recv(decode=False)))
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
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.TaskGroup() as helpers:
                assert self._writer is not None
                writer = self._writer
                helpers.create_task(writer.run(), name=f"teams-writer-{self.name}")
                ping = helpers.create_task(self._ping(), name=f"teams-ping-{self.name}")
                watch = helpers.create_task(self._watch(), name=f"teams-watch-{self.name}")
                try:
                    async with asyncio.timeout(None) as drain_deadline, asyncio.TaskGroup() as tg:
                        self._reader = tg.create_task(self._read(tg), name=f"teams-read-{self.name}")
                        if self._stopping:
                            self._reader.cancel()
                        await asyncio.wait([self._reader])
                        # leaving this TaskGroup waits for in-flight deliveries (and completions), within a bound
                        drain_deadline.reschedule(loop.time() + self.timings.drain_timeout)
                except TimeoutError:
                    log.warning(
                        "%d deliveries still in flight on %s after the drain timeout: cut off (the service "
                        "redelivers what was not answered)",
                        self._deliveries,
                        self.name,
                    )
                finally:
                    ping.cancel()
                    watch.cancel()
                    writer.close()  # writes the completions queued so far, then returns
        finally:
            await self._abort()
        reader = self._reader
        if self._end is None and reader is not None and reader.done() and not reader.cancelled():
            self._end = reader.result()
        return self._end or EndReason("stopped", "run ended")

    def stop(self, detail: str = "stopping") -> None:
        """Stop reading new frames; `run()` then drains in-flight deliveries and closes."""
        self._stopping = True
        self._finish(EndReason("stopped", detail, allow_reconnect=True))

    async def send(self, frame: str) -> bool:
        """Send one encoded frame; False when the socket is already gone."""
        writer = self._writer
        if writer is None:
            return False
        return await writer.send(frame.encode())

    def send_nowait(self, frame: str) -> asyncio.Future[bool] | bool:
        """Queue one encoded frame; its batch's future says whether it was written (False: no socket)."""
        writer = self._writer
        if writer is None:
            return False
        return writer.send_nowait(frame.encode())

    def send_completion(self, invocation_id: str, result: Any) -> asyncio.Future[bool] | bool:
        return self.send_nowait(signalr.completion(invocation_id, result))

    # --- internals ---

    def _finish(self, reason: EndReason) -> None:
        if self._end is None:
            self._end = reason
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()

    async def _read(self, tg: asyncio.TaskGroup) -> EndReason:
        assert self._ws is not None
        ws = self._ws
        backlog, self._backlog = self._backlog, []
        for event in backlog:
            await self._handle(event, tg)
        while True:
            try:
                data = await ws.recv(decode=False)  # bytes: invalid UTF-8 is one malformed frame, not a crash
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
                reason = await self._handle(event, tg)
                if reason is not None:
                    return reason

    async def _handle(self, event: signalr.Event, tg: asyncio.TaskGroup) -> EndReason | None:
        if isinstance(event, signalr.Invocation):
            if is_delivery_target(event.target):
                if not self.ready.is_set():
                    log.info("delivery before SocketReady on %s: treating the socket as ready", self.name)
                    self.ready.set()
                self.received += 1
                await self._spawn(event, tg)
            elif is_ready_target(event.target):
                self._socket_ready(event, tg)
            else:
                log.debug("ignoring invocation of %r on %s", event.target[:80], self.name)
                if event.invocation_id is not None:
                    frame = signalr.completion(event.invocation_id, error=f"unknown target {event.target[:80]}")
                    tg.create_task(self.send(frame))
        elif isinstance(event, signalr.Close):
            return EndReason("closed", redact(event.error or ""), allow_reconnect=event.allow_reconnect)
        elif isinstance(event, signalr.MalformedFrame):
            self._on_invalid(event.reason)
            log.warning("malformed frame on %s: %s %s", self.name, event.reason, event.detail)
        # pings, acks, sequences, completions and stream messages need nothing from this client
        return None

    def _socket_ready(self, event: signalr.Invocation, tg: asyncio.TaskGroup) -> None:
        info = event.arguments[0] if event.arguments and isinstance(event.arguments[0], dict) else {}
        keys = normalise_keys(info, probe="connectionId")
        connection_id, bot_key = keys.get("connectionId"), keys.get("botKey")
        self.connection_id = str(connection_id)[:200] if connection_id else self.connection_id
        self.bot_key = str(bot_key)[:200] if bot_key else self.bot_key
        self.ready.set()
        if event.invocation_id is not None:
            tg.create_task(self.send(signalr.completion(event.invocation_id, None)))

    async def _spawn(self, invocation: signalr.Invocation, tg: asyncio.TaskGroup) -> None:
        recv_at = epoch_ms()
        if self._deliveries >= self._max_in_flight:  # backpressure: the reader waits for a slot
            self._waiting = True
            try:
                while self._deliveries >= self._max_in_flight:
                    self._room.clear()
                    await self._room.wait()
            finally:
                self._waiting = False
                self._last_inbound = time.monotonic()
        self._deliveries += 1
        tg.create_task(self._run_delivery(invocation, recv_at))
        if self._admission is not None:
            pause = self._admission()
            if pause is not None:  # the queue backend keeps failing: read no more until it recovers
                self._waiting = True
                try:
                    await pause
                finally:
                    self._waiting = False
                    self._last_inbound = time.monotonic()

    async def _run_delivery(self, invocation: signalr.Invocation, recv_at: int) -> None:
        try:
            await self._deliver(self, invocation, recv_at)
        except Exception:
            log.exception("delivery failed on %s (invocation %s)", self.name, invocation.invocation_id)
        finally:
            self._deliveries -= 1
            self._room.set()

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
            if self._waiting:
                continue
            silent_for = time.monotonic() - self._last_inbound
            if silent_for > timeout:
                log.warning("nothing from the server on %s for %.1f s: replacing it", self.name, silent_for)
                self._finish(EndReason("silent", f"nothing inbound for {silent_for:.1f} s", allow_reconnect=True))
                return

    async def _abort(self) -> None:
        ws = self._ws
        if ws is None:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.timings.close_timeout):
                await ws.close()
        ws.transport.abort()
