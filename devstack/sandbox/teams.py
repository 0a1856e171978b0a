"""A sandbox Teams socket-mode service on 127.0.0.1: negotiate, SignalR hub, Bot Connector.

`async with TeamsSandbox() as sandbox:` starts an aiohttp server on port 0 that speaks:

- the service negotiate: shipped `POST /{geo}/v3/websockets/connect`, draft `POST /v3/websockets/connect`
  (also `/{cloud}/…` and `/{cloud}/{tenant}/…`), Bearer `sandbox.bot_token`, reply
  `{url, accessToken, expiresIn[, sessionId]}`; 401 on a wrong token or `unauthorized = True`; queued
  failures (`fail_negotiate(503, times=2, retry_after=1)`);
- the SignalR negotiate `POST /client/negotiate?hub=…&negotiateVersion=1` (`url_mode`: "negotiate",
  "redirect" = one `{url, accessToken}` hop first, "websocket" = the service hands out a ws:// URL);
- the hub websocket `GET /client/?hub=…&id=<connectionToken>&access_token=…` (connection tokens are
  single-use), JSON handshake, `SocketReady`, `Activity` invocations with invocationIds and
  `deadlineMs`, redelivery of unanswered or non-200 envelopes (same envelopeId unless
  `new_envelope_id_on_redelivery`), draft mode (one-way `activity`, every event to every session),
  server pings every `keepalive` s, a client-silence timeout, tokens that expire after `expires_in`
  (the socket is then closed with `allowReconnect`);
- a Bot Connector at `sandbox.service_url` (`/botconnector/v3/conversations/…`) recording replies
  (`BotReply.text`: what a person would read of one).

Test knobs: `silent`, `frozen`, `drop_all()`, `close_all(error, allow_reconnect)`, `send_raw()`,
`fail_replies()`. Helpers: `send_user_message(text)`, `send_card_action(data, verb)`,
`send_compose_query(command_id, text)`, `send_activity()`, `wait_replies(n)`, `wait_acked(n)`,
`wait_invoke_response(activity_id)`, `stats`.

Invoke responses: the completion of every invoke is recorded in `invoke_responses` (`InvokeCompletion`:
status, body, milliseconds after the send, `late`). The deadline (`deadline_ms`, sent as `deadlineMs`) is
enforced: a completion after it counts as missed (`late: true`, `stats["late_completions"]`; the user got
an error, the envelope was already redelivered). `on_completion(response)` is called as each invoke's
completion arrives (tests look at the queue at that moment).

HTTP injection for people (`python -m devstack dev` prints these commands):

    curl -X POST {base_url}/_sandbox/messages -d '{"text": "hello"}'
    curl -X POST {base_url}/_sandbox/card-actions -d '{"verb": "approve", "data": {"id": 1}, "wait": true}'
    curl -X POST {base_url}/_sandbox/compose-query -d '{"commandId": "searchTickets", "text": "printer", "wait": true}'
    curl {base_url}/_sandbox/replies        curl {base_url}/_sandbox/stats
    curl {base_url}/_sandbox/invoke-responses

With `"wait": true` an invoke injection answers once the bot completed it (or the deadline passed), with
`"response"`: the recorded invoke response or null.

Tokens: the sandbox accepts one static bearer token (`bot_token`) instead of Entra ID; point the
worker at it with `TEAMS_STATIC_TOKEN` (refused for non-local base URLs) and the functions with the
same setting (`BotConnectorClient` uses a `StaticTokenProvider` then).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import secrets
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from aiohttp import WSMsgType, web

from worker.teams import signalr

log = logging.getLogger(__name__)

UrlMode = Literal["negotiate", "redirect", "websocket"]


@dataclass
class SandboxEnvelope:
    envelope_id: str
    activity: dict[str, Any]
    kind: str
    protocol_version: int = 1
    cv: str = ""
    attempts: int = 0
    split: int = 1
    geo: str | None = None
    pascal_case: bool = False
    first_sent: float = field(default_factory=time.perf_counter)


@dataclass
class Session:
    connection_id: str
    geo: str
    token: str
    ws: web.WebSocketResponse
    request: web.Request
    opened_at: float
    ready: bool = False
    handshake_version: int | None = None
    last_inbound: float = field(default_factory=time.monotonic)
    outstanding: dict[str, tuple[SandboxEnvelope, asyncio.TimerHandle]] = field(default_factory=dict)
    missed: dict[str, tuple[SandboxEnvelope, float]] = field(default_factory=dict)
    """Invocations whose deadline passed (the last 1,000): their late completions are recognised."""
    sent_at: dict[str, float] = field(default_factory=dict)
    received: int = 0
    closed: bool = False
    silent: bool = False
    """Sends nothing (no pings, no deliveries) but still reads."""
    frozen: bool = False
    """Neither reads nor writes (a hung server process with the TCP connection still open)."""


@dataclass(frozen=True, slots=True)
class InvokeCompletion:
    """The completion of one invoke delivery, as the sandbox received it."""

    envelope_id: str
    activity_id: str | None
    name: str | None
    """The invoke name: adaptiveCard/action, composeExtension/query, …"""
    status: int | None
    body: Any
    ms: float
    """Milliseconds from the delivery to the completion."""
    late: bool
    """After `deadlineMs`: missed (Teams showed the user an error and the envelope was redelivered)."""


@dataclass(frozen=True)
class BotReply:
    method: str
    path: str
    conversation_id: str
    activity_id: str | None
    body: dict[str, Any] | None
    authorization: str

    @property
    def text(self) -> str:
        """What a person would read of it: the activity's text, else its first card's text ('' for a delete)."""
        body = self.body or {}
        text = body.get("text")
        if isinstance(text, str) and text.strip():
            return text
        attachments = body.get("attachments")
        for attachment in attachments if isinstance(attachments, list) else []:
            if not isinstance(attachment, dict):
                continue
            content = attachment.get("content")
            elements = content.get("body") if isinstance(content, dict) else None
            for element in elements if isinstance(elements, list) else []:
                if isinstance(element, dict) and isinstance(element.get("text"), str) and element["text"].strip():
                    return str(element["text"])
            return f"({attachment.get('contentType', 'attachment')})"
        return ""


class TeamsSandbox:
    def __init__(
        self,
        *,
        contract: Literal["shipped", "draft"] = "shipped",
        app_id: str = "sandbox-app-id",
        tenant_id: str = "sandbox-tenant",
        bot_token: str = "sandbox-bot-token",  # noqa: S107 - the sandbox's own fake token
        expires_in: float = 3600.0,
        deadline_ms: int = 5000,
        keepalive: float = 15.0,
        client_timeout: float = 30.0,
        url_mode: UrlMode = "negotiate",
        target: str = "Activity",
        pascal_case: bool = False,
        new_envelope_id_on_redelivery: bool = False,
        redeliver_delay: float = 0.0,
        strict_handshake: bool = False,
        send_socket_ready: bool | None = None,
        geos: tuple[str, ...] = ("amer", "emea", "apac"),
        negotiate_version: int = 1,
        ws_heartbeat: float | None = None,
        announced_deadline_ms: int | None = None,
    ) -> None:
        self.contract = contract
        self.app_id = app_id
        self.tenant_id = tenant_id
        self.bot_token = bot_token
        self.bot_key = f"28:{app_id}"
        self.expires_in = expires_in
        self.deadline_ms = deadline_ms
        """How long the service waits for a completion (then: missed, redelivered)."""
        self.announced_deadline_ms = announced_deadline_ms
        """The `deadlineMs` envelopes carry (default `deadline_ms`); a test knob for a service that is less
        patient than it says."""
        self.keepalive = keepalive
        self.client_timeout = client_timeout
        self.url_mode: UrlMode = url_mode
        self.target = target
        self.pascal_case = pascal_case
        self.new_envelope_id_on_redelivery = new_envelope_id_on_redelivery
        self.redeliver_delay = redeliver_delay
        self.strict_handshake = strict_handshake
        self.send_socket_ready = contract == "shipped" if send_socket_ready is None else send_socket_ready
        self.geos = geos
        self.negotiate_version = negotiate_version
        """0: the reply carries only `connectionId`, which is then also the connection token."""
        self.ws_heartbeat = ws_heartbeat
        """WebSocket-level pings from the server; a client that does not pong is dropped."""
        # knobs
        self.unauthorized = False
        self.negotiate_delay = 0.0
        self._closing = asyncio.Event()
        """Seconds the service negotiate takes to answer (a slow or hanging service)."""
        self._negotiate_failures: deque[tuple[int, float | None, str]] = deque()
        self._hostile_urls: deque[str] = deque()
        self._reply_failures: deque[tuple[int, dict[str, str], dict[str, Any]]] = deque()
        # state
        self.sessions: dict[str, Session] = {}
        self.pending: deque[SandboxEnvelope] = deque()
        self.replies: list[BotReply] = []
        self.created_conversations: list[dict[str, Any]] = []
        """Bodies of `POST /v3/conversations` (proactive 1:1 conversations the bot created)."""
        self.acked: dict[str, dict[str, Any]] = {}
        """envelopeId -> the completion result that acked it (status 200)."""
        self.completions: list[dict[str, Any]] = []
        self.invoke_responses: list[InvokeCompletion] = []
        """Every invoke's completion (in time or late), in arrival order."""
        self.on_completion: Any = None
        """Called with each `InvokeCompletion` as its completion arrives (before anything else happens)."""
        self.latencies: list[float] = []
        """Seconds from an envelope's first send to its status-200 completion (for benchmarks)."""
        self.last_ack_at = 0.0
        self.handshake_versions: list[int] = []
        self.stats: Counter[str] = Counter()
        self._access_tokens: dict[str, float] = {}  # token -> expiry (monotonic)
        self._connection_tokens: dict[str, str] = {}  # connectionToken -> access token (single use)
        self._ids = itertools.count(1)
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.base_url = ""
        self.port = 0

    # --- lifecycle ---

    @property
    def service_url(self) -> str:
        """The Bot Connector base that activities carry as `serviceUrl`."""
        return f"{self.base_url}/botconnector/"

    @property
    def hub_url(self) -> str:
        return f"{self.base_url}/client/?hub=bot"

    async def __aenter__(self) -> TeamsSandbox:
        app = web.Application()
        app.router.add_post("/v3/websockets/connect", self._service_negotiate)
        app.router.add_post("/{first}/v3/websockets/connect", self._service_negotiate)
        app.router.add_post("/{first}/{second}/v3/websockets/connect", self._service_negotiate)
        app.router.add_post("/{prefix:client2?}/negotiate", self._signalr_negotiate)
        app.router.add_get("/{prefix:client2?}/", self._hub)
        app.router.add_post("/botconnector/v3/conversations", self._create_conversation)
        app.router.add_route("*", "/botconnector/v3/conversations/{conversation}/activities", self._bot_connector)
        app.router.add_route(
            "*", "/botconnector/v3/conversations/{conversation}/activities/{activity}", self._bot_connector
        )
        app.router.add_post("/_sandbox/messages", self._inject_message)
        app.router.add_post("/_sandbox/card-actions", self._inject_card_action)
        app.router.add_post("/_sandbox/compose-query", self._inject_compose_query)
        app.router.add_get("/_sandbox/replies", self._list_replies)
        app.router.add_get("/_sandbox/invoke-responses", self._list_invoke_responses)
        app.router.add_get("/_sandbox/stats", self._get_stats)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._spawn(self._housekeeping())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._closing.set()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for session in list(self.sessions.values()):
            self._abort(session)
        if self._runner is not None:
            await self._runner.cleanup()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- knobs ---

    def fail_negotiate(self, status: int, times: int = 1, retry_after: float | None = None, body: str = "") -> None:
        """The next `times` service negotiates answer `status` (503 says "Socket mode is not available.")."""
        text = body or ("Socket mode is not available." if status == 503 else f"sandbox error {status}")
        for _ in range(times):
            self._negotiate_failures.append((status, retry_after, text))

    def fail_replies(
        self, status: int, times: int = 1, headers: dict[str, str] | None = None, body: dict[str, Any] | None = None
    ) -> None:
        """The next `times` Bot Connector calls answer `status` (e.g. 429 with Retry-After)."""
        for _ in range(times):
            self._reply_failures.append((status, headers or {}, body or {}))

    def ready_sessions(self) -> list[Session]:
        return [s for s in self.sessions.values() if s.ready and not s.closed]

    def live_sessions(self) -> list[Session]:
        """Ready sessions that are neither silent nor frozen: where deliveries go."""
        return [s for s in self.ready_sessions() if not s.silent and not s.frozen]

    def silence_all(self) -> int:
        """Every current session stops sending (new sessions behave); returns how many."""
        sessions = self.ready_sessions()
        for session in sessions:
            session.silent = True
        return len(sessions)

    def freeze_all(self) -> int:
        """Every current session stops reading and sending; returns how many."""
        sessions = self.ready_sessions()
        for session in sessions:
            session.frozen = True
        return len(sessions)

    def drop_all(self) -> int:
        """Cut every socket without a close frame (a network drop); returns how many."""
        sessions = [s for s in self.sessions.values() if not s.closed]
        for session in sessions:
            self._abort(session)
        return len(sessions)

    async def close_all(self, error: str | None = "sandbox closing", allow_reconnect: bool = False) -> None:
        """Send a SignalR close message (type 7) to every session, then close the sockets."""
        for session in list(self.sessions.values()):
            if session.closed:
                continue
            with contextlib.suppress(Exception):
                await session.ws.send_str(signalr.close(error, allow_reconnect))
            await self._end_session(session, "close message")

    async def send_raw(self, text: str | bytes, session: Session | None = None) -> None:
        """One websocket text message, as is (several frames, a partial frame, garbage; bytes are sent as a
        text frame unchanged, invalid UTF-8 included)."""
        for s in [session] if session else self.ready_sessions():
            if isinstance(text, bytes):
                await s.ws.send_frame(text, WSMsgType.TEXT)
            else:
                await s.ws.send_str(text)

    def hand_out_urls(self, *urls: str) -> None:
        """The next service negotiates answer with these `url`s (hostile ones included), then real ones."""
        self._hostile_urls.extend(urls)

    # --- helpers for tests and dev ---

    def new_activity(
        self, text: str = "hello", conversation_id: str | None = None, activity_type: str = "message"
    ) -> dict[str, Any]:
        n = next(self._ids)
        conversation_id = conversation_id or "a:sandbox-conversation"
        return {
            "type": activity_type,
            "id": f"1{int(time.time() * 1000)}{n:06d}",
            "timestamp": datetime.now(UTC).isoformat(),
            "serviceUrl": self.service_url,
            "channelId": "msteams",
            "from": {
                "id": "29:sandbox-user",
                "name": "Sandbox User",
                "aadObjectId": "00000000-0000-0000-0000-0000000000aa",
            },
            "conversation": {"id": conversation_id, "conversationType": "personal", "tenantId": self.tenant_id},
            "recipient": {"id": self.bot_key, "name": "relaybus"},
            "text": text,
            "locale": "en-US",
            "channelData": {"tenant": {"id": self.tenant_id}},
        }

    async def send_activity(
        self,
        activity: dict[str, Any],
        *,
        kind: str | None = None,
        envelope_id: str | None = None,
        protocol_version: int = 1,
        split: int = 1,
        geo: str | None = None,
    ) -> str:
        """Queue one envelope for delivery; returns its envelopeId."""
        envelope = SandboxEnvelope(
            envelope_id=envelope_id or secrets.token_hex(16),
            activity=activity,
            kind=kind or ("invoke" if activity.get("type") == "invoke" else "activity"),
            protocol_version=protocol_version,
            cv=secrets.token_urlsafe(12),
            split=max(1, split),
            geo=geo,
            pascal_case=self.pascal_case,
        )
        self.stats["events"] += 1
        await self._dispatch(envelope)
        return envelope.envelope_id

    def delivery_frame(self, activity: dict[str, Any], session: Session | None = None) -> str:
        """A tracked `Activity` invocation frame, not sent: for tests that batch frames with `send_raw`."""
        session = session or max(self.live_sessions(), key=lambda s: s.opened_at)
        envelope = SandboxEnvelope(envelope_id=secrets.token_hex(16), activity=activity, kind="activity")
        invocation_id = str(next(self._ids))
        timer = asyncio.get_running_loop().call_later(
            self.deadline_ms / 1000, self._deadline_passed, session, invocation_id
        )
        session.outstanding[invocation_id] = (envelope, timer)
        self.stats["events"] += 1
        return self._frame(envelope, invocation_id)

    async def send_user_message(self, text: str, conversation_id: str | None = None) -> str:
        """A user's message to the bot; returns the activity id."""
        activity = self.new_activity(text, conversation_id)
        await self.send_activity(activity)
        return str(activity["id"])

    async def send_card_action(
        self, data: dict[str, Any] | None = None, verb: str = "approve", conversation_id: str | None = None
    ) -> str:
        """An Adaptive Card `Action.Execute` (invoke `adaptiveCard/action`); returns the activity id."""
        activity = self.new_activity("", conversation_id, activity_type="invoke")
        activity.pop("text", None)
        activity["name"] = "adaptiveCard/action"
        activity["value"] = {"action": {"type": "Action.Execute", "verb": verb, "data": data or {}}}
        await self.send_activity(activity, kind="invoke")
        return str(activity["id"])

    async def send_compose_query(
        self,
        command_id: str,
        text: str = "",
        *,
        parameter: str = "searchText",
        conversation_id: str | None = None,
    ) -> str:
        """A search message extension query (invoke `composeExtension/query`); returns the activity id."""
        activity = self.new_activity("", conversation_id, activity_type="invoke")
        activity.pop("text", None)
        activity["name"] = "composeExtension/query"
        activity["value"] = {
            "commandId": command_id,
            "parameters": [{"name": parameter, "value": text}],
            "queryOptions": {"skip": 0, "count": 25},
        }
        await self.send_activity(activity, kind="invoke")
        return str(activity["id"])

    def invoke_response(self, activity_id: str) -> InvokeCompletion | None:
        """The first completion recorded for an invoke activity (None while there is none)."""
        for response in self.invoke_responses:
            if response.activity_id == activity_id:
                return response
        return None

    async def wait_invoke_response(self, activity_id: str, within: float | None = None) -> InvokeCompletion:
        """The first completion of an invoke activity (waits at most `within`, default the deadline + 1 s)."""
        await self.wait_for(
            lambda: self.invoke_response(activity_id) is not None,
            self.deadline_ms / 1000 + 1.0 if within is None else within,
        )
        found = self.invoke_response(activity_id)
        assert found is not None
        return found

    async def wait_for(self, predicate: Any, within: float = 5.0) -> None:
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(predicate)

    async def wait_replies(self, count: int = 1, within: float = 5.0) -> list[BotReply]:
        await self.wait_for(lambda: len(self.replies) >= count, within)
        return list(self.replies)

    async def wait_acked(self, count: int, within: float = 5.0) -> None:
        await self.wait_for(lambda: len(self.acked) >= count, within)

    async def wait_sessions(self, count: int = 1, within: float = 5.0) -> None:
        await self.wait_for(lambda: len(self.ready_sessions()) >= count, within)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # --- service negotiate ---

    def _bearer_ok(self, request: web.Request, token: str) -> bool:
        return request.headers.get("Authorization", "") == f"Bearer {token}"

    async def _service_negotiate(self, request: web.Request) -> web.Response:
        self.stats["service_negotiates"] += 1
        if self.negotiate_delay:
            with contextlib.suppress(TimeoutError):  # the sandbox closing ends the wait
                await asyncio.wait_for(self._closing.wait(), self.negotiate_delay)
        first = request.match_info.get("first")
        geo = first or "draft" if self.contract == "shipped" else "draft"
        if self.contract == "shipped" and (first not in self.geos or "second" in request.match_info):
            return web.json_response({"error": "unknown geo"}, status=404)
        if self.unauthorized or not self._bearer_ok(request, self.bot_token):
            self.stats["unauthorized"] += 1
            return web.json_response({"error": {"code": "Unauthorized"}}, status=401)
        if self._negotiate_failures:
            status, retry_after, text = self._negotiate_failures.popleft()
            headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
            self.stats[f"negotiate_{status}"] += 1
            return web.Response(status=status, text=text, headers=headers)
        access = "sbx-" + secrets.token_urlsafe(24)
        self._access_tokens[access] = time.monotonic() + self.expires_in
        if self._hostile_urls:
            return web.json_response({"url": self._hostile_urls.popleft(), "accessToken": access, "expiresIn": 60})
        url = f"{self.base_url}/client/?hub=bot&geo={geo}"
        if self.url_mode == "websocket":
            url = self._ws_url(self._new_connection_token(access), geo)
        body: dict[str, Any] = {"url": url, "accessToken": access, "expiresIn": self.expires_in}
        if self.contract == "draft":
            body["sessionId"] = secrets.token_hex(8)
        return web.json_response(body)

    def _new_connection_token(self, access: str) -> str:
        token = secrets.token_urlsafe(16)
        self._connection_tokens[token] = access
        return token

    def _ws_url(self, connection_token: str, geo: str, prefix: str = "client") -> str:
        return f"ws://127.0.0.1:{self.port}/{prefix}/?hub=bot&geo={geo}&id={connection_token}"

    def _access_ok(self, token: str | None) -> bool:
        expiry = self._access_tokens.get(token or "")
        return expiry is not None and expiry > time.monotonic()

    async def _signalr_negotiate(self, request: web.Request) -> web.Response:
        self.stats["signalr_negotiates"] += 1
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else request.query.get("access_token")
        if not self._access_ok(token):
            return web.json_response({"error": "invalid access token"}, status=401)
        assert token is not None
        geo = request.query.get("geo", "amer")
        prefix = request.match_info.get("prefix") or "client"
        if self.url_mode == "redirect" and prefix == "client":
            self.stats["redirects"] += 1
            new_token = "sbx-" + secrets.token_urlsafe(24)
            self._access_tokens[new_token] = self._access_tokens[token]
            return web.json_response({"url": f"{self.base_url}/client2/?hub=bot&geo={geo}", "accessToken": new_token})
        connection_token = self._new_connection_token(token)
        if self.negotiate_version == 0:
            return web.json_response(
                {
                    "negotiateVersion": 0,
                    "connectionId": connection_token,
                    "availableTransports": [{"transport": "WebSockets", "transferFormats": ["Text", "Binary"]}],
                }
            )
        return web.json_response(
            {
                "negotiateVersion": 1,
                "connectionId": secrets.token_hex(8),
                "connectionToken": connection_token,
                "availableTransports": [{"transport": "WebSockets", "transferFormats": ["Text", "Binary"]}],
            }
        )

    # --- hub ---

    async def _hub(self, request: web.Request) -> web.StreamResponse:
        connection_token = request.query.get("id", "")
        access = self._connection_tokens.pop(connection_token, None)
        if access is None:
            self.stats["rejected_connection_ids"] += 1
            return web.Response(status=404, text="No Connection with that ID")
        auth = request.headers.get("Authorization", "")
        token = request.query.get("access_token") or auth.removeprefix("Bearer ")
        if token != access or not self._access_ok(token):
            self.stats["rejected_tokens"] += 1
            return web.Response(status=401, text="invalid access token")
        ws = web.WebSocketResponse(autoping=True, heartbeat=self.ws_heartbeat, max_msg_size=16 * 1024 * 1024)
        await ws.prepare(request)
        session = Session(
            connection_id=secrets.token_hex(8),
            geo=request.query.get("geo", "amer"),
            token=token,
            ws=ws,
            request=request,
            opened_at=time.monotonic(),
        )
        self.sessions[session.connection_id] = session
        self.stats["connections"] += 1
        try:
            await self._serve(session)
        finally:
            await self._end_session(session, "socket ended")
        return ws

    async def _serve(self, session: Session) -> None:
        buffer = signalr.FrameBuffer()
        handshaken = False
        ws = session.ws
        async for message in ws:
            while session.frozen and not session.closed:  # noqa: ASYNC110 - a test knob, polled
                await asyncio.sleep(0.02)
            if message.type != WSMsgType.TEXT:
                if message.type == WSMsgType.BINARY:
                    self.stats["binary_frames"] += 1
                continue
            session.last_inbound = time.monotonic()
            for frame in buffer.feed(message.data):
                if not handshaken:
                    handshaken = True
                    if not await self._handshake(session, frame):
                        return
                    continue
                await self._on_frame(session, frame)

    async def _handshake(self, session: Session, frame: str) -> bool:
        try:
            protocol, version = signalr.server_parse_handshake(frame)
        except (ValueError, signalr.SignalRProtocolError):
            await session.ws.send_str(signalr.encode({"error": "invalid handshake"}))
            return False
        session.handshake_version = version
        self.handshake_versions.append(version)
        if protocol != "json" or (self.strict_handshake and version != 1) or version > 2:
            await session.ws.send_str(signalr.encode({"error": f"unsupported protocol {protocol} v{version}"}))
            return False
        await session.ws.send_str("{}" + signalr.RECORD_SEPARATOR)
        if self.send_socket_ready:
            await session.ws.send_str(
                signalr.invocation("SocketReady", [{"botKey": self.bot_key, "connectionId": session.connection_id}])
            )
        session.ready = True
        await self._notify()
        await self._flush_pending()
        return True

    async def _on_frame(self, session: Session, frame: str) -> None:
        event = signalr.parse_message(frame)
        if isinstance(event, signalr.Ping):
            self.stats["pings_received"] += 1
        elif isinstance(event, signalr.Completion):
            await self._on_completion(session, event)
        elif isinstance(event, signalr.Close):
            self.stats["client_closes"] += 1
            await self._end_session(session, "client close")
        elif isinstance(event, signalr.MalformedFrame):
            self.stats["malformed_from_client"] += 1
        else:
            self.stats["other_from_client"] += 1

    async def _on_completion(self, session: Session, completion: signalr.Completion) -> None:
        entry = session.outstanding.pop(completion.invocation_id, None)
        result = completion.result if isinstance(completion.result, dict) else {}
        self.completions.append(result)
        sent_at = session.sent_at.pop(completion.invocation_id, None)
        if entry is None:
            missed = session.missed.pop(completion.invocation_id, None)
            if missed is not None:  # after the deadline: missed, whatever it says
                self.stats["late_completions"] += 1
                if missed[0].kind == "invoke":
                    self._record_invoke(missed[0], result, missed[1], late=True)
            else:
                self.stats["untracked_completions"] += 1
            await self._notify()
            return
        envelope, timer = entry
        timer.cancel()
        if envelope.kind == "invoke" and sent_at is not None:
            self._record_invoke(envelope, result, sent_at, late=False)
        status = result.get("status")
        self.stats[f"status_{status}"] += 1
        if status == 200:
            if envelope.envelope_id not in self.acked:
                self.acked[envelope.envelope_id] = result
                self.last_ack_at = time.perf_counter()
                self.latencies.append(self.last_ack_at - envelope.first_sent)
        elif status == 400:
            self.stats["rejected"] += 1
        else:
            self._redeliver(envelope, f"status {status}")
        await self._notify()

    def _record_invoke(self, envelope: SandboxEnvelope, result: dict[str, Any], sent_at: float, *, late: bool) -> None:
        status = result.get("status")
        name = envelope.activity.get("name")
        activity_id = envelope.activity.get("id")
        response = InvokeCompletion(
            envelope_id=envelope.envelope_id,
            activity_id=activity_id if isinstance(activity_id, str) else None,
            name=name if isinstance(name, str) else None,
            status=status if isinstance(status, int) and not isinstance(status, bool) else None,
            body=result.get("body"),
            ms=round((time.perf_counter() - sent_at) * 1000, 3),
            late=late,
        )
        if self.on_completion is not None:
            self.on_completion(response)
        self.invoke_responses.append(response)

    # --- delivery ---

    def _frame(self, envelope: SandboxEnvelope, invocation_id: str | None) -> str:
        argument: dict[str, Any] = {
            "protocolVersion": envelope.protocol_version,
            "envelopeId": envelope.envelope_id,
            "type": envelope.kind,
            "ackRequired": invocation_id is not None,
            "botKey": self.bot_key,
            "deadlineMs": self.announced_deadline_ms or self.deadline_ms,
            "headers": {},
            "cv": envelope.cv,
            "payload": envelope.activity,
        }
        if envelope.pascal_case:
            argument = {k[:1].upper() + k[1:]: v for k, v in argument.items()}
        target = self.target if self.contract == "shipped" else "activity"
        return signalr.invocation(target, [argument], invocation_id)

    async def _dispatch(self, envelope: SandboxEnvelope) -> None:
        sessions = self.live_sessions()
        if self.contract == "draft":
            if not sessions:
                self.pending.append(envelope)
                return
            for session in sessions:
                await self._send(session, envelope, None)
            return
        if envelope.geo:
            sessions = [s for s in sessions if s.geo == envelope.geo] or sessions
        if not sessions:
            self.pending.append(envelope)
            return
        session = max(sessions, key=lambda s: s.opened_at)  # the newest connection takes new work
        invocation_id = str(next(self._ids))
        loop = asyncio.get_running_loop()
        timer = loop.call_later(self.deadline_ms / 1000, self._deadline_passed, session, invocation_id)
        session.outstanding[invocation_id] = (envelope, timer)
        if envelope.kind == "invoke":
            session.sent_at[invocation_id] = time.perf_counter()
        await self._send(session, envelope, invocation_id)

    async def _send(self, session: Session, envelope: SandboxEnvelope, invocation_id: str | None) -> None:
        envelope.attempts += 1
        self.stats["deliveries"] += 1
        frame = self._frame(envelope, invocation_id)
        parts = envelope.split
        envelope.split = 1
        try:
            if parts <= 1:
                await session.ws.send_str(frame)
            else:
                size = max(1, len(frame) // parts)
                chunks = [frame[i : i + size] for i in range(0, len(frame), size)]
                for chunk in chunks:
                    await session.ws.send_str(chunk)
        except (ConnectionError, RuntimeError):
            self.stats["send_failures"] += 1

    def _deadline_passed(self, session: Session, invocation_id: str) -> None:
        entry = session.outstanding.pop(invocation_id, None)
        if entry is not None:
            self.stats["deadline_missed"] += 1
            sent_at = session.sent_at.pop(invocation_id, time.perf_counter())
            session.missed[invocation_id] = (entry[0], sent_at)
            if len(session.missed) > 1000:
                session.missed.pop(next(iter(session.missed)))
            self._redeliver(entry[0], "deadline passed")

    def _redeliver(self, envelope: SandboxEnvelope, why: str) -> None:
        if envelope.envelope_id in self.acked:
            return
        self.stats["redeliveries"] += 1
        if self.new_envelope_id_on_redelivery:
            envelope.envelope_id = secrets.token_hex(16)
        log.debug("sandbox redelivers %s (%s)", envelope.envelope_id, why)

        async def later() -> None:
            if self.redeliver_delay:
                await asyncio.sleep(self.redeliver_delay)
            await self._dispatch(envelope)

        self._spawn(later())

    async def _flush_pending(self) -> None:
        while self.pending and self.live_sessions():
            await self._dispatch(self.pending.popleft())

    async def _end_session(self, session: Session, why: str) -> None:
        if session.closed:
            return
        session.closed = True
        self.sessions.pop(session.connection_id, None)
        outstanding = list(session.outstanding.values())
        session.outstanding.clear()
        for envelope, timer in outstanding:
            timer.cancel()
            self._redeliver(envelope, f"connection ended ({why})")
        with contextlib.suppress(Exception):
            await session.ws.close()
        await self._notify()

    def _abort(self, session: Session) -> None:
        transport = session.request.transport
        if transport is not None:
            transport.abort()
        self._spawn(self._end_session(session, "dropped"))

    async def _housekeeping(self) -> None:
        """Server pings, client-silence timeouts, token expiry."""
        last_ping = time.monotonic()
        step = max(0.01, min(self.keepalive, self.client_timeout) / 5)
        while True:
            await asyncio.sleep(step)
            now = time.monotonic()
            ping_due = now - last_ping >= self.keepalive
            if ping_due:
                last_ping = now
            for session in list(self.sessions.values()):
                if session.closed:
                    continue
                if session.frozen:
                    continue
                if now - session.last_inbound > self.client_timeout:
                    self.stats["client_timeouts"] += 1
                    with contextlib.suppress(Exception):
                        await session.ws.send_str(
                            signalr.close("Server timeout elapsed without receiving a message from the client.", True)
                        )
                    await self._end_session(session, "client silent")
                    continue
                if self._access_tokens.get(session.token, 0) <= now:
                    self.stats["expired_closes"] += 1
                    with contextlib.suppress(Exception):
                        await session.ws.send_str(signalr.close("access token expired", True))
                    await self._end_session(session, "token expired")
                    continue
                if ping_due and not session.silent and session.ready:
                    with contextlib.suppress(Exception):
                        await session.ws.send_str(signalr.ping())

    # --- Bot Connector ---

    async def _bot_connector(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        if auth != f"Bearer {self.bot_token}":
            return web.json_response({"error": {"code": "Unauthorized"}}, status=401)
        if self._reply_failures:
            status, headers, failure = self._reply_failures.popleft()
            self.stats[f"reply_{status}"] += 1
            return web.json_response(failure, status=status, headers=headers)
        body: dict[str, Any] | None = None
        if request.can_read_body:
            with contextlib.suppress(ValueError):
                body = await request.json()
        reply = BotReply(
            method=request.method,
            path=request.path,
            conversation_id=request.match_info["conversation"],
            activity_id=request.match_info.get("activity"),
            body=body,
            authorization="Bearer <redacted>",
        )
        self.replies.append(reply)
        self.stats["replies"] += 1
        await self._notify()
        if request.method == "DELETE":
            return web.Response(status=200)
        return web.json_response({"id": reply.activity_id if request.method == "PUT" else f"reply-{next(self._ids)}"})

    async def _create_conversation(self, request: web.Request) -> web.Response:
        """POST /v3/conversations (proactive 1:1): a `ConversationResourceResponse`; the same user and bot get
        the same conversation again, as on Teams. Recorded in `created_conversations`."""
        if request.headers.get("Authorization", "") != f"Bearer {self.bot_token}":
            return web.json_response({"error": {"code": "Unauthorized"}}, status=401)
        body = await _json_body(request)
        members = body.get("members")
        member = members[0] if isinstance(members, list) and len(members) == 1 else None
        user = member.get("id") if isinstance(member, dict) else None
        bot = body.get("bot")
        tenant = body.get("channelData", {}).get("tenant", {}) if isinstance(body.get("channelData"), dict) else {}
        tenant_id = tenant.get("id") if isinstance(tenant, dict) else None
        if not isinstance(user, str) or not isinstance(bot, dict) or not isinstance(tenant_id, str):
            message = "needs one member, bot and channelData.tenant.id"
            return web.json_response({"error": {"code": "BadArgument", "message": message}}, status=400)
        self.created_conversations.append(body)
        self.stats["conversations_created"] += 1
        conversation_id = f"a:sandbox-personal-{tenant_id}-{user}"
        return web.json_response({"id": conversation_id, "activityId": f"created-{next(self._ids)}"}, status=201)

    # --- injection endpoints ---

    async def _inject_message(self, request: web.Request) -> web.Response:
        data = await _json_body(request)
        activity = self.new_activity(str(data.get("text", "hello")), data.get("conversationId"))
        envelope_id = await self.send_activity(activity)
        return web.json_response({"activityId": activity["id"], "envelopeId": envelope_id})

    async def _inject_card_action(self, request: web.Request) -> web.Response:
        data = await _json_body(request)
        activity_id = await self.send_card_action(
            data.get("data") if isinstance(data.get("data"), dict) else {}, str(data.get("verb", "approve"))
        )
        return web.json_response({"activityId": activity_id, **await self._http_response(data, activity_id)})

    async def _inject_compose_query(self, request: web.Request) -> web.Response:
        data = await _json_body(request)
        activity_id = await self.send_compose_query(
            str(data.get("commandId", "searchTickets")),
            str(data.get("text", "")),
            parameter=str(data.get("parameter", "searchText")),
        )
        return web.json_response({"activityId": activity_id, **await self._http_response(data, activity_id)})

    async def _http_response(self, data: dict[str, Any], activity_id: str) -> dict[str, Any]:
        """`{"response": …}` once the invoke was completed (or its deadline passed), when asked to `wait`."""
        if data.get("wait") is not True:
            return {}
        with contextlib.suppress(TimeoutError):
            await self.wait_for(lambda: self.invoke_response(activity_id) is not None, self.deadline_ms / 1000 + 0.5)
        response = self.invoke_response(activity_id)
        return {"response": asdict(response) if response is not None else None}

    async def _list_invoke_responses(self, _request: web.Request) -> web.Response:
        return web.json_response([asdict(r) for r in self.invoke_responses])

    async def _list_replies(self, _request: web.Request) -> web.Response:
        return web.json_response(
            [
                {"method": r.method, "path": r.path, "conversationId": r.conversation_id, "body": r.body}
                for r in self.replies
            ]
        )

    async def _get_stats(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {
                **self.stats,
                "sessions": len(self.ready_sessions()),
                "acked": len(self.acked),
                "pending": len(self.pending),
            }
        )


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except (ValueError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}
