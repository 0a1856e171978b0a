"""A local Azure SignalR Service (serverless mode) for the dev stack and the tests, on loopback.

The Azure SignalR emulator is a .NET tool these machines do not have; this service speaks the parts of the
serverless contract relaybus uses, faithfully enough for `@microsoft/signalr` in node and in a browser:

- access tokens it signs itself: HS256 with a per-process access key, the key of `connection_string`
  (`Endpoint=http://127.0.0.1:<port>;AccessKey=<key>;Version=1.0;`, what `AzureSignalRConnectionString`
  takes). Client tokens carry `aud` = `<endpoint>/client/?hub=<hub>` and the user id in `nameid` (what the
  `signalRConnectionInfo` binding mints); data-plane tokens carry `aud` = the request's URL;
- the client side: `POST /client/negotiate?hub=<hub>` (CORS for browser origins on loopback) → a single-use
  connection token, then the WebSocket at `/client/?hub=<hub>&id=<token>&access_token=<token>`: the SignalR JSON
  hub protocol (`worker.teams.signalr`: handshake, invocations, pings every `keepalive` s, a client silent for
  `client_timeout` s is closed, `Close` frames);
- the data plane (REST v1), what the `signalR` output binding and `functions.live` call:
  `POST /api/v1/hubs/{hub}` (broadcast), `POST …/groups/{group}`, `POST …/users/{user}`,
  `POST …/connections/{id}`, `PUT|DELETE …/groups/{group}/users/{user}`, `DELETE …/users/{user}/groups`,
  `PUT|DELETE …/groups/{group}/connections/{id}`; 202 for sends, 200 for group changes; a message body over
  1 MB is 413, a bad token 401;
- a user added to a group is in it with all their connections, present and future (as on Azure), until removed.

Each connection has a bounded send queue drained by its own writer: a client that does not read (a frozen
browser tab) fills it and is then closed (`stats["slow_closed"]`), so a push never waits for a slow client.
Knobs for tests: `throttle(times, retry_after)` (429s), `fail(status, times)`.

    async with LocalSignalRService() as service:
        service.connection_string        # for AzureSignalRConnectionString

`python -m devstack.signalr_service` runs one until Ctrl-C (printing its connection string) — the benchmark
runs it in a process of its own that way (`--json`: one JSON line with the endpoint and key, then serve).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import secrets
import sys
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import jwt
from aiohttp import WSMsgType, web

from shared.urls import is_loopback, split
from worker.teams import signalr

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 1024 * 1024
SEND_QUEUE = 1024
"""Frames a connection may have waiting before it counts as a client that does not read, and is closed."""
CONNECTION_TOKEN_SECONDS = 15.0
NAMEID = "nameid"
_NAMEID_CLAIMS = (NAMEID, "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/nameidentifier", "sub")
_TRANSPORTS = [{"transport": "WebSockets", "transferFormats": ["Text", "Binary"]}]


@dataclass(eq=False)
class Connection:
    connection_id: str
    hub: str
    user: str | None
    ws: web.WebSocketResponse
    request: web.Request
    queue: asyncio.Queue[str] = field(default_factory=lambda: asyncio.Queue(SEND_QUEUE))
    last_inbound: float = field(default_factory=time.monotonic)
    ready: bool = False
    closed: bool = False
    frames_sent: int = 0


class LocalSignalRService:
    """See the module docstring."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        access_key: str | None = None,
        keepalive: float = 15.0,
        client_timeout: float = 30.0,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        send_queue: int = SEND_QUEUE,
    ) -> None:
        if not is_loopback(host):
            raise ValueError(f"the local SignalR Service listens on loopback only, not {host!r}")
        self.host = host
        self.port = port
        self.access_key = access_key or secrets.token_urlsafe(32)
        self.keepalive = keepalive
        self.client_timeout = client_timeout
        self.max_message_bytes = max_message_bytes
        self.send_queue = send_queue
        self.connections: dict[str, Connection] = {}
        self.user_groups: dict[tuple[str, str], set[str]] = {}
        """(hub, group) -> users in it (with every connection they have)."""
        self.connection_groups: dict[tuple[str, str], set[str]] = {}
        """(hub, group) -> connection ids added one by one."""
        self.stats: Counter[str] = Counter()
        self.sent: deque[dict[str, Any]] = deque(maxlen=1000)
        """The last data-plane sends: {"hub", "to", "target", "arguments"} (tests)."""
        self._pending: dict[str, tuple[str, str | None, float]] = {}
        """connection token -> (hub, user, expiry): single use."""
        self._faults: deque[tuple[int, dict[str, str]]] = deque()
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._changed = asyncio.Condition()

    # -- lifecycle ---------------------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def connection_string(self) -> str:
        return f"Endpoint={self.endpoint};AccessKey={self.access_key};Version=1.0;"

    async def start(self) -> LocalSignalRService:
        app = web.Application(client_max_size=self.max_message_bytes + 64 * 1024)
        app.router.add_route("OPTIONS", "/client/negotiate", self._preflight)
        app.router.add_post("/client/negotiate", self._negotiate)
        app.router.add_get("/client/", self._client)
        app.router.add_route("*", "/api/health", self._health)
        api = "/api/v1/hubs/{hub}"
        app.router.add_post(api, self._broadcast)
        app.router.add_post(api + "/groups/{group}", self._send_group)
        app.router.add_post(api + "/users/{user}", self._send_user)
        app.router.add_post(api + "/connections/{connection}", self._send_connection)
        app.router.add_route("PUT", api + "/groups/{group}/users/{user}", self._add_user)
        app.router.add_route("DELETE", api + "/groups/{group}/users/{user}", self._remove_user)
        app.router.add_route("DELETE", api + "/users/{user}/groups", self._remove_user_everywhere)
        app.router.add_route("PUT", api + "/groups/{group}/connections/{connection}", self._add_connection)
        app.router.add_route("DELETE", api + "/groups/{group}/connections/{connection}", self._remove_connection)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        self._spawn(self._housekeeping())
        log.info("local SignalR Service listening endpoint=%s", self.endpoint)
        return self

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for connection in list(self.connections.values()):
            await self._close(connection, "the service is stopping")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> LocalSignalRService:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- knobs ---------------------------------------------------------------------------------------------------

    def throttle(self, times: int = 1, retry_after: float = 1.0) -> None:
        """The next `times` data-plane calls answer 429 with `Retry-After`."""
        for _ in range(times):
            self._faults.append((429, {"Retry-After": f"{retry_after:g}"}))

    def fail(self, status: int, times: int = 1) -> None:
        """The next `times` data-plane calls answer `status`."""
        for _ in range(times):
            self._faults.append((status, {}))

    # -- what tests look at -------------------------------------------------------------------------------------

    def users_in(self, group: str, hub: str = "relaybus") -> set[str]:
        return set(self.user_groups.get((hub, group), set()))

    def ready_connections(self, user: str | None = None) -> list[Connection]:
        return [c for c in self.connections.values() if c.ready and (user is None or c.user == user)]

    async def wait_connections(self, count: int, *, within: float = 10.0) -> None:
        """Until `count` connections have completed their handshake."""
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: len(self.ready_connections()) >= count)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- tokens --------------------------------------------------------------------------------------------------

    def _claims(self, token: str | None, audience: str) -> dict[str, Any] | None:
        if not token:
            return None
        try:
            claims: dict[str, Any] = jwt.decode(
                token, self.access_key, algorithms=["HS256"], options={"require": ["exp"], "verify_aud": False}
            )
        except jwt.InvalidTokenError:
            return None
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        wanted = _normal(audience)
        if not any(isinstance(a, str) and _normal(a) == wanted for a in audiences):
            return None
        return claims

    @staticmethod
    def _user(claims: dict[str, Any]) -> str | None:
        for name in _NAMEID_CLAIMS:
            value = claims.get(name)
            if isinstance(value, str) and value:
                return value
        return None

    def _client_audience(self, hub: str) -> str:
        return f"{self.endpoint}/client/?hub={hub}"

    # -- the client side -----------------------------------------------------------------------------------------

    def _cors(self, request: web.Request) -> dict[str, str]:
        origin = request.headers.get("Origin")
        parts = split(origin)
        if origin is None or parts is None or not parts.loopback:
            return {}
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Credentials": "true",
            "Access-Control-Allow-Methods": "POST, GET, OPTIONS",
            "Access-Control-Allow-Headers": request.headers.get(
                "Access-Control-Request-Headers", "authorization, content-type, x-requested-with, x-signalr-user-agent"
            ),
            "Access-Control-Max-Age": "600",
            "Vary": "Origin",
        }

    async def _preflight(self, request: web.Request) -> web.Response:
        return web.Response(status=204, headers=self._cors(request))

    async def _negotiate(self, request: web.Request) -> web.Response:
        self.stats["negotiates"] += 1
        cors = self._cors(request)
        hub = request.query.get("hub", "")
        auth = request.headers.get("Authorization", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else request.query.get("access_token")
        claims = self._claims(token, self._client_audience(hub)) if hub else None
        if claims is None:
            self.stats["rejected_tokens"] += 1
            return web.json_response({"error": "invalid access token"}, status=401, headers=cors)
        connection_token = secrets.token_urlsafe(24)
        connection_id = secrets.token_urlsafe(12)
        self._pending[connection_token] = (hub, self._user(claims), time.monotonic() + CONNECTION_TOKEN_SECONDS)
        if request.query.get("negotiateVersion", "0") == "0":
            body: dict[str, Any] = {"connectionId": connection_token, "availableTransports": _TRANSPORTS}
        else:
            body = {
                "negotiateVersion": 1,
                "connectionId": connection_id,
                "connectionToken": connection_token,
                "availableTransports": _TRANSPORTS,
            }
        return web.json_response(body, headers=cors)

    async def _client(self, request: web.Request) -> web.StreamResponse:
        hub = request.query.get("hub", "")
        pending = self._pending.pop(request.query.get("id", ""), None)
        if pending is None or pending[0] != hub or pending[2] < time.monotonic():
            self.stats["rejected_connection_tokens"] += 1
            return web.Response(status=404, text="No Connection with that ID")
        auth = request.headers.get("Authorization", "")
        token = request.query.get("access_token") or (auth[7:] if auth.lower().startswith("bearer ") else None)
        claims = self._claims(token, self._client_audience(hub))
        if claims is None or self._user(claims) != pending[1]:
            self.stats["rejected_tokens"] += 1
            return web.Response(status=401, text="invalid access token")
        ws = web.WebSocketResponse(autoping=True, max_msg_size=self.max_message_bytes + 64 * 1024)
        await ws.prepare(request)
        connection = Connection(secrets.token_urlsafe(12), hub, pending[1], ws, request)
        connection.queue = asyncio.Queue(self.send_queue)
        self.connections[connection.connection_id] = connection
        self.stats["connections"] += 1
        try:
            async with asyncio.TaskGroup() as group:
                writer = group.create_task(self._writer(connection))
                await self._reader(connection)
                writer.cancel()
        except* (ConnectionError, RuntimeError):
            pass
        finally:
            await self._close(connection, "")
        return ws

    async def _reader(self, connection: Connection) -> None:
        buffer = signalr.FrameBuffer()
        handshaken = False
        async for message in connection.ws:
            if message.type != WSMsgType.TEXT:
                if message.type == WSMsgType.BINARY:
                    self.stats["binary_frames"] += 1
                continue
            connection.last_inbound = time.monotonic()
            try:
                frames = buffer.feed(message.data)
            except signalr.SignalRProtocolError:
                await self._close(connection, "frame too large")
                return
            for frame in frames:
                if not handshaken:
                    handshaken = True
                    if not await self._handshake(connection, frame):
                        return
                    continue
                event = signalr.parse_message(frame)
                if isinstance(event, signalr.Close):
                    return
                if isinstance(event, signalr.Invocation):
                    # serverless: no hub server to invoke; a blocking invocation is answered with an error
                    self.stats["client_invocations"] += 1
                    if event.invocation_id is not None:
                        self._enqueue(
                            connection,
                            signalr.completion(event.invocation_id, error="no upstream in serverless mode"),
                        )
                elif isinstance(event, signalr.MalformedFrame):
                    self.stats["malformed_frames"] += 1

    async def _handshake(self, connection: Connection, frame: str) -> bool:
        try:
            protocol, version = signalr.server_parse_handshake(frame)
        except (ValueError, TypeError, signalr.SignalRProtocolError):
            await connection.ws.send_str(signalr.encode({"error": "invalid handshake"}))
            return False
        if protocol != "json" or version != 1:
            await connection.ws.send_str(
                signalr.encode({"error": f"Requested protocol '{protocol}' v{version} is not available."})
            )
            return False
        await connection.ws.send_str("{}" + signalr.RECORD_SEPARATOR)
        connection.ready = True
        await self._notify()
        return True

    async def _writer(self, connection: Connection) -> None:
        """Drain the connection's queue, several frames to one websocket message when they are waiting."""
        queue = connection.queue
        while True:
            frames = [await queue.get()]
            while not queue.empty() and len(frames) < 64:
                frames.append(queue.get_nowait())
            text = "".join(frames)
            await connection.ws.send_str(text)
            connection.frames_sent += len(frames)
            self.stats["frames_out"] += len(frames)

    def _enqueue(self, connection: Connection, frame: str) -> None:
        if connection.closed:
            return
        try:
            connection.queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.stats["slow_closed"] += 1
            log.info("closing connection %s: it does not read (send queue full)", connection.connection_id)
            self._spawn(self._close(connection, "the client does not read its messages"))

    async def _close(self, connection: Connection, error: str) -> None:
        if connection.closed:
            return
        connection.closed = True
        self.connections.pop(connection.connection_id, None)
        for members in self.connection_groups.values():
            members.discard(connection.connection_id)
        if error:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.ws.send_str(signalr.close(error)), 1.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(connection.ws.close(), 1.0)
        transport = connection.request.transport
        if transport is not None and not connection.ws.closed:
            transport.abort()
        await self._notify()

    async def _housekeeping(self) -> None:
        last_ping = time.monotonic()
        step = max(0.05, min(self.keepalive, self.client_timeout) / 5)
        while True:
            await asyncio.sleep(step)
            now = time.monotonic()
            for token, (_hub, _user, expiry) in list(self._pending.items()):
                if expiry < now:
                    self._pending.pop(token, None)
            ping = now - last_ping >= self.keepalive
            if ping:
                last_ping = now
            for connection in list(self.connections.values()):
                if now - connection.last_inbound > self.client_timeout:
                    self.stats["client_timeouts"] += 1
                    await self._close(connection, "Server timeout elapsed without receiving a message from the client.")
                elif ping and connection.ready:
                    self._enqueue(connection, signalr.ping())

    # -- the data plane ----------------------------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _authorised(self, request: web.Request) -> web.Response | None:
        """None when the call may proceed; else its error answer (a fault knob, a bad token)."""
        self.stats["rest_calls"] += 1
        if self._faults:
            status, headers = self._faults.popleft()
            self.stats[f"rest_{status}"] += 1
            return web.json_response(
                {"code": "Injected", "message": f"injected {status}"}, status=status, headers=headers
            )
        auth = request.headers.get("Authorization", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else None
        if self._claims(token, str(request.url.with_query(None))) is None:
            self.stats["rest_401"] += 1
            return web.json_response({"code": "Unauthorized", "message": "invalid access token"}, status=401)
        return None

    async def _message(self, request: web.Request) -> tuple[str | None, web.Response | None]:
        """The invocation frame of a send's body, or the error answer."""
        refused = await self._authorised(request)
        if refused is not None:
            return None, refused
        body = await request.read()
        if len(body) > self.max_message_bytes:
            self.stats["rest_413"] += 1
            return None, web.json_response({"code": "TooLarge", "message": "message too large"}, status=413)
        try:
            data = json.loads(body)
            target, arguments = data["target"], data.get("arguments", [])
            if not isinstance(target, str) or not isinstance(arguments, list):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            self.stats["rest_400"] += 1
            return None, web.json_response({"code": "BadRequest", "message": "target and arguments"}, status=400)
        self.stats["messages_in"] += 1
        self.sent.append(
            {"hub": request.match_info["hub"], "to": request.path, "target": target, "arguments": arguments}
        )
        return signalr.invocation(target, arguments), None

    def _deliver(self, connections: Iterable[Connection], frame: str) -> int:
        count = 0
        for connection in connections:
            if connection.ready:
                self._enqueue(connection, frame)
                count += 1
        self.stats["deliveries"] += count
        return count

    def _in_group(self, hub: str, group: str) -> list[Connection]:
        users = self.user_groups.get((hub, group), set())
        ids = self.connection_groups.get((hub, group), set())
        return [c for c in self.connections.values() if c.hub == hub and (c.user in users or c.connection_id in ids)]

    async def _broadcast(self, request: web.Request) -> web.Response:
        frame, refused = await self._message(request)
        if frame is None:
            assert refused is not None
            return refused
        hub = request.match_info["hub"]
        self._deliver((c for c in self.connections.values() if c.hub == hub), frame)
        return web.Response(status=202)

    async def _send_group(self, request: web.Request) -> web.Response:
        frame, refused = await self._message(request)
        if frame is None:
            assert refused is not None
            return refused
        self._deliver(self._in_group(request.match_info["hub"], request.match_info["group"]), frame)
        return web.Response(status=202)

    async def _send_user(self, request: web.Request) -> web.Response:
        frame, refused = await self._message(request)
        if frame is None:
            assert refused is not None
            return refused
        hub, user = request.match_info["hub"], request.match_info["user"]
        self._deliver((c for c in self.connections.values() if c.hub == hub and c.user == user), frame)
        return web.Response(status=202)

    async def _send_connection(self, request: web.Request) -> web.Response:
        frame, refused = await self._message(request)
        if frame is None:
            assert refused is not None
            return refused
        connection = self.connections.get(request.match_info["connection"])
        if connection is None or connection.hub != request.match_info["hub"]:
            return web.Response(status=404)
        self._deliver([connection], frame)
        return web.Response(status=202)

    async def _add_user(self, request: web.Request) -> web.Response:
        refused = await self._authorised(request)
        if refused is not None:
            return refused
        key = (request.match_info["hub"], request.match_info["group"])
        self.user_groups.setdefault(key, set()).add(request.match_info["user"])
        self.stats["group_adds"] += 1
        return web.Response(status=200)

    async def _remove_user(self, request: web.Request) -> web.Response:
        refused = await self._authorised(request)
        if refused is not None:
            return refused
        key = (request.match_info["hub"], request.match_info["group"])
        self.user_groups.get(key, set()).discard(request.match_info["user"])
        self.stats["group_removes"] += 1
        return web.Response(status=200)

    async def _remove_user_everywhere(self, request: web.Request) -> web.Response:
        refused = await self._authorised(request)
        if refused is not None:
            return refused
        hub, user = request.match_info["hub"], request.match_info["user"]
        for (group_hub, _group), users in self.user_groups.items():
            if group_hub == hub:
                users.discard(user)
        return web.Response(status=200)

    async def _add_connection(self, request: web.Request) -> web.Response:
        refused = await self._authorised(request)
        if refused is not None:
            return refused
        connection = self.connections.get(request.match_info["connection"])
        if connection is None:
            return web.Response(status=404)
        key = (request.match_info["hub"], request.match_info["group"])
        self.connection_groups.setdefault(key, set()).add(connection.connection_id)
        return web.Response(status=200)

    async def _remove_connection(self, request: web.Request) -> web.Response:
        refused = await self._authorised(request)
        if refused is not None:
            return refused
        key = (request.match_info["hub"], request.match_info["group"])
        self.connection_groups.get(key, set()).discard(request.match_info["connection"])
        return web.Response(status=200)


def _normal(url: str) -> str:
    """An audience compared without case in scheme and host, percent-escapes and a trailing slash."""
    text = unquote(url.strip())
    parts = split(text)
    if parts is None:
        return text
    scheme_host, sep, rest = text.partition("://")
    host, slash, path = rest.partition("/")
    return f"{scheme_host.lower()}{sep}{host.lower()}{slash}{path}".rstrip("/")


# -- a small client (tests and the benchmark; browsers and node use @microsoft/signalr) ------------------------


class NegotiateRefused(Exception):
    """A negotiate answered other than 200: `status` and the JSON body's `error` (the reason), if any."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        self.reason = body.get("error") if isinstance(body, dict) else None
        super().__init__(f"negotiate answered {status}: {self.reason or str(body)[:120]}")


def negotiate_url(url: str) -> str:
    """Where a SignalR client negotiates for the hub at `url` (as @microsoft/signalr builds it)."""
    base, sep, query = url.partition("?")
    base = base if base.endswith("/") else base + "/"
    return f"{base}negotiate?{query + '&' if sep and query else ''}negotiateVersion=1"


@dataclass(eq=False)
class LiveHubClient:
    """One client connection: `invocation()` waits for the next server invocation (answering nothing else)."""

    ws: Any
    connection_id: str
    user_id: str | None
    buffer: signalr.FrameBuffer = field(default_factory=signalr.FrameBuffer)
    waiting: deque[signalr.Invocation] = field(default_factory=deque)
    closed: signalr.Close | None = None
    last_sent: float = field(default_factory=time.monotonic)

    async def invocation(self, within: float = 5.0) -> signalr.Invocation:
        """The next invocation (`TimeoutError` when none comes within `within` s, `ConnectionError` if closed)."""
        async with asyncio.timeout(within):
            while not self.waiting:
                await self._read()
        return self.waiting.popleft()

    async def _read(self) -> None:
        if time.monotonic() - self.last_sent > 10.0:
            await self.ws.send_str(signalr.ping())
            self.last_sent = time.monotonic()
        message = await self.ws.receive()
        if message.type != WSMsgType.TEXT:
            raise ConnectionError(f"the connection ended ({message.type.name})")
        for frame in self.buffer.feed(message.data):
            event = signalr.parse_message(frame)
            if isinstance(event, signalr.Invocation):
                self.waiting.append(event)
            elif isinstance(event, signalr.Close):
                self.closed = event
                raise ConnectionError(f"the service closed the connection: {event.error}")

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.send_str(signalr.close())
        await self.ws.close()


async def connect_hub(
    http: Any, url: str, *, token: str | None = None, headers: dict[str, str] | None = None
) -> LiveHubClient:
    """Negotiate at `url` (an aiohttp `ClientSession` `http`; following a redirect to the service, as a
    function's negotiate answers `{url, accessToken}`), open the WebSocket and do the handshake.
    `NegotiateRefused` when a negotiate says no."""
    sent = dict(headers or {})
    access = token
    if token:
        sent["Authorization"] = f"Bearer {token}"
    for _ in range(10):
        async with http.post(negotiate_url(url), headers=sent) as response:
            try:
                data = await response.json(content_type=None)
            except ValueError:
                data = await response.text()
            if response.status != 200:
                raise NegotiateRefused(response.status, data)
        if isinstance(data, dict) and "url" in data and "accessToken" in data:
            url, access = str(data["url"]), str(data["accessToken"])
            sent = {"Authorization": f"Bearer {access}"}
            continue
        break
    else:
        raise NegotiateRefused(508, "too many redirects")
    connection_token = str(data.get("connectionToken") or data["connectionId"])
    base, sep, query = url.partition("?")
    ws_url = base.replace("http", "ws", 1) + "?" + (query + "&" if sep and query else "")
    ws_url += f"id={connection_token}" + (f"&access_token={access}" if access else "")
    ws = await http.ws_connect(ws_url, max_msg_size=MAX_MESSAGE_BYTES + 64 * 1024, autoping=True)
    await ws.send_str(signalr.handshake_request())
    handshake = await ws.receive(timeout=5.0)
    if handshake.type != WSMsgType.TEXT or not handshake.data.startswith("{}"):
        await ws.close()
        raise ConnectionError(f"handshake refused: {str(handshake.data)[:120]}")
    connection = LiveHubClient(ws, str(data.get("connectionId")), None)
    rest = handshake.data.split(signalr.RECORD_SEPARATOR, 1)[1] if signalr.RECORD_SEPARATOR in handshake.data else ""
    for frame in connection.buffer.feed(rest):
        event = signalr.parse_message(frame)
        if isinstance(event, signalr.Invocation):
            connection.waiting.append(event)
    return connection


async def _serve(args: argparse.Namespace) -> None:
    async with LocalSignalRService(port=args.port, send_queue=args.send_queue) as service:
        if args.json:
            print(json.dumps({"endpoint": service.endpoint, "access_key": service.access_key}), flush=True)
        else:
            print(f"local SignalR Service at {service.endpoint} (Ctrl-C stops it)", flush=True)
            print("AzureSignalRConnectionString=<its connection string: the key is printed only with --json>")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError):
            import signal

            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
        if args.json:
            # with --json the parent owns us: stdin closing (the parent gone) stops the service too
            reader = asyncio.StreamReader()
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

            async def until_eof() -> None:
                while await reader.read(4096):
                    pass
                stop.set()

            service._spawn(until_eof())
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.signalr_service", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free one)")
    parser.add_argument("--json", action="store_true", help="print the endpoint and key as JSON; stop at stdin EOF")
    parser.add_argument(
        "--send-queue", type=int, default=SEND_QUEUE, help="frames a client may have waiting before it is closed"
    )
    args = parser.parse_args(argv)
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())


__all__ = ["MAX_MESSAGE_BYTES", "Connection", "LiveHubClient", "LocalSignalRService", "NegotiateRefused", "connect_hub"]
