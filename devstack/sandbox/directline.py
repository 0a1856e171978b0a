"""A local Direct Line 3.0 service with a scripted agent, for tests, benchmarks and `python -m devstack dev`.

    async with DirectLineSandbox(token_lifetime=2.0) as dl:      # aiohttp on 127.0.0.1, port 0
        settings = DirectLineSettings(secret=dl.secret, base_url=dl.base_url)
        conversation_id = await dl.start_conversation()          # what the function side does over HTTP
        await dl.say(conversation_id, "a proactive hello")       # the agent speaks (stored, streamed)

What it does like Direct Line (`{base_url}` = `http://127.0.0.1:<port>/v3/directline`):

- `POST /tokens/generate` (secret) → `{conversationId, token, expires_in}`: a token for a new conversation;
  `POST /tokens/refresh` (a token) → a new token with a new `expires_in`; an expired token cannot be refreshed:
  403 `{"error": {"code": "TokenExpired"}}`. Lifetimes are `token_lifetime` seconds (Direct Line: 1800).
- `POST /conversations` (secret, or a generated token) → 201 `{conversationId, token, expires_in, streamUrl,
  referenceGrammarId}`; `GET /conversations/{id}?watermark=` (the secret or the conversation's token) → 200 with a
  new token and a new `streamUrl` that replays what came after the watermark. A `streamUrl` works once, within
  `stream_url_lifetime` (60 s): else the upgrade is refused with 403. An unknown (or `forget()`-ten)
  conversation: 404. A token of another conversation: 403.
- The stream: `{"activities": [...], "watermark": "n"}` messages (a replay in frames of up to 50), and empty
  keep-alive messages every `keepalive_interval`; what the client sends is ignored (directlinejs sends empty
  pings). One socket per conversation: a second one is closed with reason `collision`.
- `GET /conversations/{id}/activities?watermark=` → `{activities, watermark}` (typing is WebSocket only, as in
  Direct Line: it is streamed, never stored); `POST /conversations/{id}/activities` → `{"id": "<id>|0000007"}`.
  Every activity (the user's too) is echoed on the stream, as Direct Line does.
- Errors on demand: `fail_next(status, count, retry_after)` answers the next REST calls with 429/502/…
  (and `Retry-After`).

The scripted agent (`from: {id: sandbox-agent, role: bot}`) answers each user message: `card` → an Adaptive
Card (TextBlock, FactSet, Action.Submit, Action.OpenUrl); `suggest` → suggested actions; `late` → typing, then an
answer after `late_delay`; `proactive` → an answer, and another one unprompted after `proactive_delay`; `big` →
a 50,000-character answer; `end` → `endOfConversation`; `silent` → nothing; a card submit (`value`) → "You chose
…"; anything else → typing, then "Echo: <text>".

Test knobs: `drop(id)` (abrupt close), `freeze(id)` (a socket that goes silent, like a sleeping laptop),
`forget(id)` (404 from now on), `send_raw(id, text)` (any frame), `say(id, ...)` (the agent speaks),
`expire_tokens()`, `stats`, `wait_for(predicate)`.

HTTP control endpoints: `GET {base_url}/_sandbox/stats`, `POST {base_url}/_sandbox/say` `{"conversation","text"}`,
`POST {base_url}/_sandbox/fail` `{"status","count","retry_after"}`, `POST {base_url}/_sandbox/push`
`{"conversations","count","per_frame"}` (benchmarks). Run alone: `python -m devstack.sandbox.directline`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Self

from aiohttp import WSCloseCode, web

log = logging.getLogger(__name__)

SECRET = "sandbox-directline-secret"  # noqa: S105 (the sandbox's public test secret)
AGENT = {"id": "sandbox-agent", "name": "Sandbox Agent", "role": "bot"}
REPLAY_FRAME = 50
BIG_TEXT = 50_000


@dataclass
class DirectLineSandboxStats:
    tokens_generated: int = 0
    tokens_refreshed: int = 0
    expired_rejections: int = 0
    """Requests answered 403 TokenExpired."""
    conversations_started: int = 0
    resumes: int = 0
    sockets_opened: int = 0
    collisions: int = 0
    streams_refused: int = 0
    """Upgrades refused: a streamUrl used twice or older than its lifetime."""
    posts: int = 0
    polls: int = 0
    frames_sent: int = 0
    activities_streamed: int = 0
    failures_injected: int = 0
    not_found: int = 0


@dataclass
class _Socket:
    ws: web.WebSocketResponse
    request: web.Request
    frozen: bool = False


@dataclass
class _Conversation:
    id: str
    activities: list[dict[str, Any]] = field(default_factory=list)
    socket: _Socket | None = None
    forgotten: bool = False
    replaying: bool = False
    typing_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def watermark(self) -> str:
        return str(len(self.activities))


@dataclass
class _Token:
    conversation_id: str | None
    expires_at: float


@dataclass
class _StreamGrant:
    conversation_id: str
    watermark: int
    issued_at: float
    used: bool = False


class DirectLineSandbox:
    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        secret: str = SECRET,
        token_lifetime: float = 1800.0,
        stream_url_lifetime: float = 60.0,
        keepalive_interval: float | None = 10.0,
        agent: bool = True,
        late_delay: float = 1.0,
        proactive_delay: float = 1.0,
        typing: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self.secret = secret
        self.token_lifetime = token_lifetime
        self.stream_url_lifetime = stream_url_lifetime
        self.keepalive_interval = keepalive_interval
        self.agent = agent
        self.late_delay = late_delay
        self.proactive_delay = proactive_delay
        self.typing = typing
        self.stats = DirectLineSandboxStats()
        self.conversations: dict[str, _Conversation] = {}
        self.tokens: dict[str, _Token] = {}
        self._streams: dict[str, _StreamGrant] = {}
        self._failures: deque[tuple[int, float | None]] = deque()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._base = ""
        self.on_user_activity: Callable[[str, dict[str, Any]], None] | None = None

    # --- lifecycle ---------------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        app = web.Application()
        p = "/v3/directline"
        app.router.add_post(f"{p}/tokens/generate", self._http_generate)
        app.router.add_post(f"{p}/tokens/refresh", self._http_refresh)
        app.router.add_post(f"{p}/conversations", self._http_start)
        app.router.add_get(f"{p}/conversations/{{cid}}", self._http_resume)
        app.router.add_get(f"{p}/conversations/{{cid}}/stream", self._http_stream)
        app.router.add_get(f"{p}/conversations/{{cid}}/activities", self._http_get_activities)
        app.router.add_post(f"{p}/conversations/{{cid}}/activities", self._http_post_activity)
        app.router.add_get(f"{p}/_sandbox/stats", self._http_stats)
        app.router.add_post(f"{p}/_sandbox/say", self._http_say)
        app.router.add_post(f"{p}/_sandbox/fail", self._http_fail)
        app.router.add_post(f"{p}/_sandbox/push", self._http_push)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self._base = f"http://{self.host}:{self.port}"
        self._spawn(self._keepalives())
        log.info("direct line sandbox listening on %s", self.base_url)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for conversation in self.conversations.values():
            sock = conversation.socket
            if sock is not None and sock.request.transport is not None:
                sock.request.transport.abort()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        """`DIRECTLINE_BASE_URL`: `http://127.0.0.1:<port>/v3/directline`."""
        return f"{self._base}/v3/directline"

    # --- knobs ------------------------------------------------------------------------------------------------

    def fail_next(self, status: int = 429, count: int = 1, retry_after: float | None = 1.0) -> None:
        """The next `count` REST calls answer `status` (with `Retry-After` when given)."""
        self._failures.extend([(status, retry_after)] * count)

    def drop(self, conversation_id: str) -> bool:
        """Close the conversation's socket abruptly (no close frame), like a network failure."""
        conversation = self.conversations.get(conversation_id)
        sock = conversation.socket if conversation else None
        if conversation is None or sock is None:
            return False
        conversation.socket = None
        if sock.request.transport is not None:
            sock.request.transport.abort()
        return True

    def freeze(self, conversation_id: str) -> bool:
        """The socket goes silent both ways (no keep-alives, no pongs, nothing read): a sleeping laptop."""
        conversation = self.conversations.get(conversation_id)
        sock = conversation.socket if conversation else None
        if sock is None:
            return False
        sock.frozen = True
        if sock.request.transport is not None:
            sock.request.transport.pause_reading()
        return True

    def forget(self, conversation_id: str) -> None:
        """The service no longer knows the conversation: 404 from now on, its socket closed."""
        conversation = self.conversations.get(conversation_id)
        if conversation is not None:
            conversation.forgotten = True
            self.drop(conversation_id)

    def expire_tokens(self) -> None:
        for token in self.tokens.values():
            token.expires_at = 0.0

    async def send_raw(self, conversation_id: str, text: str | bytes) -> bool:
        """Send any message on the conversation's socket (malformed frames included)."""
        conversation = self.conversations.get(conversation_id)
        sock = conversation.socket if conversation else None
        if sock is None or sock.ws.closed:
            return False
        if isinstance(text, bytes):
            await sock.ws.send_bytes(text)
        else:
            await sock.ws.send_str(text)
        return True

    async def start_conversation(self) -> str:
        """A new conversation, as `POST /conversations` would start it (returns its id)."""
        return self._new_conversation().id

    async def say(self, conversation_id: str, text_or_activity: str | dict[str, Any]) -> dict[str, Any]:
        """The agent sends an activity into the conversation (stored, and streamed if a socket is open)."""
        activity = (
            {"type": "message", "text": text_or_activity} if isinstance(text_or_activity, str) else text_or_activity
        )
        return await self._add(self.conversations[conversation_id], {"from": dict(AGENT), **activity})

    async def push(self, conversation_id: str, count: int, *, per_frame: int = 1) -> None:
        """Benchmarks: `count` agent messages at once, streamed `per_frame` to a message."""
        conversation = self.conversations[conversation_id]
        batch: list[dict[str, Any]] = []
        for i in range(count):
            batch.append(self._store(conversation, {"from": dict(AGENT), "type": "message", "text": f"m{i}"}))
            if len(batch) >= per_frame:
                await self._stream(conversation, batch)
                batch = []
        if batch:
            await self._stream(conversation, batch)

    def bot_activities(self, conversation_id: str) -> list[dict[str, Any]]:
        return [a for a in self.conversations[conversation_id].activities if _role(a) == "bot"]

    def user_activities(self, conversation_id: str) -> list[dict[str, Any]]:
        return [a for a in self.conversations[conversation_id].activities if _role(a) != "bot"]

    def socket_open(self, conversation_id: str) -> bool:
        conversation = self.conversations.get(conversation_id)
        return conversation is not None and conversation.socket is not None and not conversation.socket.ws.closed

    async def wait_for(self, predicate: Callable[[], bool], within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            while not predicate():
                async with self._changed:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.01):
                            await self._changed.wait()

    # --- the store -------------------------------------------------------------------------------------------

    def _new_conversation(self, conversation_id: str | None = None) -> _Conversation:
        cid = conversation_id or f"sbx{secrets.token_hex(8)}-us"
        conversation = self.conversations[cid] = _Conversation(cid)
        self.stats.conversations_started += 1
        return conversation

    def _store(self, conversation: _Conversation, activity: dict[str, Any]) -> dict[str, Any]:
        stored = {
            **activity,
            "id": f"{conversation.id}|{len(conversation.activities):07d}",
            "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "channelId": "directline",
            "conversation": {"id": conversation.id},
        }
        stored.setdefault("type", "message")
        conversation.activities.append(stored)
        return stored

    async def _add(self, conversation: _Conversation, activity: dict[str, Any]) -> dict[str, Any]:
        if activity.get("type") == "typing":
            live = {
                **activity,
                "id": f"{conversation.id}|typing{next(conversation.typing_ids):05d}",
                "channelId": "directline",
                "conversation": {"id": conversation.id},
            }
            await self._stream(conversation, [live])
            return live
        stored = self._store(conversation, activity)
        await self._stream(conversation, [stored])
        return stored

    async def _stream(self, conversation: _Conversation, activities: list[dict[str, Any]]) -> None:
        await self._notify()
        sock = conversation.socket
        if sock is None or sock.frozen or sock.ws.closed:
            return
        frame = {"activities": activities, "watermark": conversation.watermark}
        with contextlib.suppress(ConnectionError, RuntimeError):
            await sock.ws.send_str(json.dumps(frame))
            self.stats.frames_sent += 1
            self.stats.activities_streamed += len(activities)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # --- auth ------------------------------------------------------------------------------------------------

    def _token(self, conversation_id: str | None) -> tuple[str, float]:
        token = "sbx." + secrets.token_urlsafe(24)
        self.tokens[token] = _Token(conversation_id, time.time() + self.token_lifetime)
        return token, self.token_lifetime

    def _auth(self, request: web.Request, conversation_id: str | None) -> web.Response | _Token | None:
        """None: the secret; a `_Token`: a valid token; a Response: the refusal to send."""
        header = request.headers.get("Authorization", "")
        value = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if not value:
            return _error(401, "BadArgument", "Missing token or secret")
        if value == self.secret:
            return None
        token = self.tokens.get(value)
        if token is None:
            return _error(403, "BadArgument", "Invalid token or secret")
        if token.expires_at <= time.time():
            self.stats.expired_rejections += 1
            return _error(403, "TokenExpired", "Token expired")
        if conversation_id is not None and token.conversation_id not in (None, conversation_id):
            return _error(403, "BadArgument", "Token not valid for this conversation")
        return token

    def _injected(self) -> web.Response | None:
        if not self._failures:
            return None
        status, retry_after = self._failures.popleft()
        self.stats.failures_injected += 1
        headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else None
        code = "Throttled" if status == 429 else "BotUnavailable"
        return _error(status, code, f"injected {status}", headers)

    def _conversation(self, conversation_id: str) -> _Conversation | web.Response:
        conversation = self.conversations.get(conversation_id)
        if conversation is None or conversation.forgotten:
            self.stats.not_found += 1
            return _error(404, "BadArgument", "Conversation not found")
        return conversation

    def _grant_body(self, conversation: _Conversation, watermark: str | None) -> dict[str, Any]:
        token, expires_in = self._token(conversation.id)
        start = _position(watermark)
        stream_token = secrets.token_urlsafe(18)
        self._streams[stream_token] = _StreamGrant(conversation.id, start, time.time())
        ws_base = self._base.replace("http://", "ws://", 1)
        query = f"watermark={watermark}&t={stream_token}" if watermark else f"t={stream_token}"
        return {
            "conversationId": conversation.id,
            "token": token,
            "expires_in": expires_in,
            "streamUrl": f"{ws_base}/v3/directline/conversations/{conversation.id}/stream?{query}",
            "referenceGrammarId": "sandbox-grammar",
        }

    # --- REST ---------------------------------------------------------------------------------------------------

    async def _http_generate(self, request: web.Request) -> web.StreamResponse:
        refused = self._injected() or self._auth(request, None)
        if isinstance(refused, web.Response):
            return refused
        if refused is not None:
            return _error(403, "BadArgument", "tokens/generate takes the secret")
        conversation = self._new_conversation()
        token, expires_in = self._token(conversation.id)
        self.stats.tokens_generated += 1
        return web.json_response({"conversationId": conversation.id, "token": token, "expires_in": expires_in})

    async def _http_refresh(self, request: web.Request) -> web.StreamResponse:
        refused = self._injected() or self._auth(request, None)
        if isinstance(refused, web.Response):
            return refused
        if refused is None:
            return _error(403, "BadArgument", "tokens/refresh takes a token, not the secret")
        token, expires_in = self._token(refused.conversation_id)
        self.stats.tokens_refreshed += 1
        return web.json_response({"conversationId": refused.conversation_id, "token": token, "expires_in": expires_in})

    async def _http_start(self, request: web.Request) -> web.StreamResponse:
        refused = self._injected() or self._auth(request, None)
        if isinstance(refused, web.Response):
            return refused
        if refused is not None and refused.conversation_id is not None:
            conversation = self.conversations.get(refused.conversation_id) or self._new_conversation(
                refused.conversation_id
            )
        else:
            conversation = self._new_conversation()
        return web.json_response(self._grant_body(conversation, None), status=201)

    async def _http_resume(self, request: web.Request) -> web.StreamResponse:
        cid = request.match_info["cid"]
        refused = self._injected() or self._auth(request, cid)
        if isinstance(refused, web.Response):
            return refused
        found = self._conversation(cid)
        if isinstance(found, web.Response):
            return found
        self.stats.resumes += 1
        return web.json_response(self._grant_body(found, request.query.get("watermark") or None))

    async def _http_get_activities(self, request: web.Request) -> web.StreamResponse:
        cid = request.match_info["cid"]
        refused = self._injected() or self._auth(request, cid)
        if isinstance(refused, web.Response):
            return refused
        found = self._conversation(cid)
        if isinstance(found, web.Response):
            return found
        self.stats.polls += 1
        start = _position(request.query.get("watermark"))
        return web.json_response({"activities": found.activities[start:], "watermark": found.watermark})

    async def _http_post_activity(self, request: web.Request) -> web.StreamResponse:
        cid = request.match_info["cid"]
        refused = self._injected() or self._auth(request, cid)
        if isinstance(refused, web.Response):
            return refused
        found = self._conversation(cid)
        if isinstance(found, web.Response):
            return found
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "BadArgument", "the body is not JSON")
        if not isinstance(body, dict) or not isinstance(body.get("type"), str):
            return _error(400, "MissingProperty", "an activity needs a type")
        sender = body.get("from")
        if not isinstance(sender, dict) or not isinstance(sender.get("id"), str):
            body["from"] = {"id": "anonymous"}
        self.stats.posts += 1
        stored = await self._add(found, body)
        if self.on_user_activity is not None:
            self.on_user_activity(cid, stored)
        if self.agent and body.get("type") == "message":
            self._spawn(self._agent(found, stored))
        return web.json_response({"id": stored["id"]})

    # --- the stream -----------------------------------------------------------------------------------------------

    async def _http_stream(self, request: web.Request) -> web.StreamResponse:
        cid = request.match_info["cid"]
        grant = self._streams.get(request.query.get("t", ""))
        now = time.time()
        if (
            grant is None
            or grant.conversation_id != cid
            or grant.used
            or now - grant.issued_at > self.stream_url_lifetime
        ):
            self.stats.streams_refused += 1
            return _error(403, "BadArgument", "the streamUrl is expired or was used")
        grant.used = True
        found = self._conversation(cid)
        if isinstance(found, web.Response):
            return found
        ws = web.WebSocketResponse(autoping=True, heartbeat=None)
        await ws.prepare(request)
        if found.replaying or (found.socket is not None and not found.socket.ws.closed):
            self.stats.collisions += 1
            await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"collision")
            return ws
        sock = _Socket(ws, request)
        self.stats.sockets_opened += 1
        found.replaying = True
        try:
            sent = grant.watermark
            while sent < len(found.activities):  # what came after the watermark, then live (no await between)
                chunk = found.activities[sent : sent + REPLAY_FRAME]
                sent += len(chunk)
                await ws.send_str(json.dumps({"activities": chunk, "watermark": str(sent)}))
                self.stats.frames_sent += 1
                self.stats.activities_streamed += len(chunk)
            found.socket = sock
            found.replaying = False
            await self._notify()
            async for _message in ws:
                pass  # clients' empty pings; nothing a client sends on the stream means anything
        except (ConnectionError, RuntimeError):
            pass
        finally:
            found.replaying = False
            if found.socket is sock:
                found.socket = None
            await self._notify()
        return ws

    async def _keepalives(self) -> None:
        if self.keepalive_interval is None:
            return
        while True:
            await asyncio.sleep(self.keepalive_interval)
            for conversation in list(self.conversations.values()):
                sock = conversation.socket
                if sock is not None and not sock.frozen and not sock.ws.closed:
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        await sock.ws.send_str("")

    # --- the agent ------------------------------------------------------------------------------------------------

    async def _agent(self, conversation: _Conversation, activity: dict[str, Any]) -> None:
        if _role(activity) == "bot":
            return
        reply_to = activity["id"]
        value = activity.get("value")
        text = str(activity.get("text") or "").strip()
        command = text.lower()

        async def send(extra: dict[str, Any]) -> None:
            await self._add(conversation, {"from": dict(AGENT), "replyToId": reply_to, **extra})

        if value is not None and not text:
            await send({"type": "message", "text": f"You chose: {json.dumps(value, sort_keys=True)}"})
        elif command == "silent":
            return
        elif command == "card":
            await send({"type": "message", "attachments": [_card()]})
        elif command == "suggest":
            await send(
                {
                    "type": "message",
                    "text": "Pick one:",
                    "suggestedActions": {
                        "actions": [
                            {"type": "imBack", "title": "Red", "value": "red"},
                            {"type": "postBack", "title": "Blue", "value": {"color": "blue"}},
                        ]
                    },
                }
            )
        elif command == "late":
            if self.typing:
                await send({"type": "typing"})
            await asyncio.sleep(self.late_delay)
            await send({"type": "message", "text": "Here is the late answer."})
        elif command == "proactive":
            await send({"type": "message", "text": "I will get back to you."})
            await asyncio.sleep(self.proactive_delay)
            await self._add(conversation, {"from": dict(AGENT), "type": "message", "text": "A proactive message."})
        elif command == "big":
            await send({"type": "message", "text": "x" * BIG_TEXT})
        elif command == "end":
            await send({"type": "message", "text": "Goodbye."})
            await send({"type": "endOfConversation", "code": "completedSuccessfully"})
        else:
            if self.typing:
                await send({"type": "typing"})
            await send({"type": "message", "text": f"Echo: {text}"})

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- control --------------------------------------------------------------------------------------------------

    async def _http_stats(self, _request: web.Request) -> web.StreamResponse:
        return web.json_response({**asdict(self.stats), "conversations": len(self.conversations)})

    async def _http_say(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        cid = str(body.get("conversation", ""))
        if cid not in self.conversations:
            return _error(404, "BadArgument", "Conversation not found")
        stored = await self.say(cid, str(body.get("text", "")))
        return web.json_response({"id": stored["id"]})

    async def _http_push(self, request: web.Request) -> web.StreamResponse:
        """Benchmarks: `{"conversations": [...] | null (all), "count": n, "per_frame": k}` agent messages each."""
        body = await request.json()
        ids = body.get("conversations") or list(self.conversations)
        count, per_frame = int(body.get("count", 1)), int(body.get("per_frame", 1))
        for cid in ids:
            if cid in self.conversations:
                await self.push(str(cid), count, per_frame=per_frame)
        return web.json_response({"ok": True, "pushed": count * len(ids)})

    async def _http_fail(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        retry = body.get("retry_after")
        self.fail_next(int(body.get("status", 429)), int(body.get("count", 1)), float(retry) if retry else None)
        return web.json_response({"ok": True})


def _card() -> dict[str, Any]:
    return {
        "contentType": "application/vnd.microsoft.card.adaptive",
        "content": {
            "type": "AdaptiveCard",
            "version": "1.5",
            "body": [
                {"type": "TextBlock", "text": "Your order", "weight": "Bolder", "size": "Medium"},
                {"type": "TextBlock", "text": "Two coffees, ready at 10:00.", "wrap": True},
                {"type": "FactSet", "facts": [{"title": "Size", "value": "Large"}, {"title": "Milk", "value": "Oat"}]},
            ],
            "actions": [
                {"type": "Action.Submit", "title": "Confirm", "data": {"choice": "confirm"}},
                {"type": "Action.Submit", "title": "Cancel", "data": {"choice": "cancel"}},
                {"type": "Action.OpenUrl", "title": "Menu", "url": "https://example.com/menu"},
            ],
        },
    }


def _role(activity: dict[str, Any]) -> str | None:
    sender = activity.get("from")
    role = sender.get("role") if isinstance(sender, dict) else None
    return role if isinstance(role, str) else None


def _position(watermark: str | None) -> int:
    if watermark and watermark.isdigit():
        return int(watermark)
    return 0


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


async def _main(port: int, token_lifetime: float) -> None:
    async with DirectLineSandbox(port=port, token_lifetime=token_lifetime) as sandbox:
        print(f"direct line sandbox: DIRECTLINE_BASE_URL={sandbox.base_url} DIRECTLINE_SECRET={sandbox.secret}")
        await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m devstack.sandbox.directline")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token-lifetime", type=float, default=1800.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args.port, args.token_lifetime))
