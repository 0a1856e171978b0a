"""A local Slack, faithful to Socket Mode, for tests, benchmarks and `python -m devstack dev`.

    async with SlackSandbox() as slack:            # aiohttp on 127.0.0.1, port 0
        settings = SlackSettings(app_token=slack.app_token, api_url=slack.api_url)
        event_id = await slack.send_user_message("hello")   # an app_mention, delivered when a socket is open
        await slack.wait_acked_keys({event_id})

What it does like Slack:

- `POST {api_url}apps.connections.open` with the app-level token (anything else: `invalid_auth`) returns a
  single-use `ws://…/link/?ticket=…` URL; a Tier-1-like rate limit (`open_rate_limit` per
  `open_rate_window` seconds) answers HTTP 429 `ratelimited` with `Retry-After`.
- On connect: `hello` (num_connections, connection_info.app_id, debug_info); more than
  `max_connections` (10) sockets: `disconnect` `too_many_websockets` and close.
- Envelopes of all three types go to ONE random open socket; events sent while no socket is open wait
  for one. Not acked within `ack_deadline` (3 s): events_api envelopes are retried with a new envelope_id,
  `retry_attempt` 1..3 and `retry_reason` "timeout" after `retry_delays` (preferring another socket);
  interactive and slash-command envelopes are not retried unless `retry_interactive` (the user sees an
  error: counted in `stats.expired`).
- Ack payloads (synchronous answers) are taken only from an ack in time for an envelope that
  `accepts_response_payload` (slash commands, `view_submission`, `block_suggestion`): every ack is recorded
  in `acks` (`AckRecord`: payload, milliseconds after the send, `late`); a late ack is what Slack does with
  it: ignored (`late: true`, counted in `stats.late_acks`, its payload never shown to the user).
  `on_ack(record)` is called as each ack arrives (tests look at the queue at that moment).
- `disconnect(reason)`: `warning` / `refresh_requested` stop deliveries to the socket and close it
  `retire_after` seconds later; `too_many_websockets` / `link_disabled` close it at once.
- Server pings every `server_ping_interval`; inbound frames of 20 KB or more: close 1009.
- Web API methods the example bot uses (`chat.postMessage`, `chat.update`, `views.open`,
  `views.update`, `auth.test`) with the bot token, and `response_url`s (5 posts each); every call is
  recorded in `replies` (`RecordedCall.text`: what a person would read of it).

Test knobs: `freeze()` (a half-open socket: nothing read, nothing sent), `drop()` (abrupt close),
`send_raw()`, `rate_limit_web()`, `stats`.

Interactions that take an answer in the ack: `send_slash_command(command, text)`,
`send_view_submission(callback_id, values)` (`values`: {block_id: {action_id: text or a state value}}),
`send_block_suggestion(action_id, value)`; `wait_ack(key)` returns the `AckRecord` (or None when the
deadline passed without one).

HTTP control endpoints (for `dev` and for a sandbox running in another process):

- `POST {api_url}_sandbox/events` inject: `{"kind":"message","text":…,"channel"?,"user"?}`,
  `{"kind":"command","command":"/ticket","text":…}`, `{"kind":"action","action_id":…,"value"?}`,
  `{"kind":"view_submission","callback_id":…,"values":{block_id:{action_id:text}}}`,
  `{"kind":"block_suggestion","action_id":…,"value":…,"block_id"?}` or
  `{"kind":"raw","type":"events_api","payload":{…},"accepts_response_payload"?}`; answers
  `{"ok":true,"key":…}`; with `"wait":true` it answers once the envelope was acked (or its deadline
  passed), adding `"ack"`: the ack record (payload, ms, late) or null.
- `GET {api_url}_sandbox/acks`: every ack received (`AckRecord`s, payloads included).
- `POST {api_url}_sandbox/push` `{"count":n,"rate":per_second|null}`: bulk events_api delivery (benchmarks).
- `GET {api_url}_sandbox/stats`, `GET {api_url}_sandbox/replies`,
  `POST {api_url}_sandbox/disconnect` `{"reason":…}`, `POST {api_url}_sandbox/reset`.

Run alone: `python -m devstack.sandbox.slack [--port 8765]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Self

from aiohttp import WSMsgType, web

log = logging.getLogger(__name__)

APP_TOKEN = "xapp-1-sandbox_A0SANDBOX_public"  # noqa: S105 (the sandbox's public test token)
BOT_TOKEN = "xoxb-sandbox_public"  # noqa: S105
MAX_FRAME = 20 * 1024
RESPONSE_URL_POSTS = 5
WEB_METHODS = frozenset(
    {"chat.postMessage", "chat.update", "views.open", "views.update", "auth.test", "assistant.threads.setStatus"}
)


@dataclass
class SandboxStats:
    delivered: int = 0
    """Envelope frames sent (first deliveries and redeliveries)."""
    acked: int = 0
    """Acks received in time for an outstanding envelope."""
    redelivered: int = 0
    late_acks: int = 0
    """Acks for unknown or expired envelope ids."""
    expired: int = 0
    """Envelopes given up on (retries exhausted or not retried)."""
    opens: int = 0
    opens_rate_limited: int = 0
    connections_opened: int = 0
    oversized_frames: int = 0


@dataclass(frozen=True, slots=True)
class RecordedCall:
    """One Web API call or response_url post the sandbox received."""

    method: str
    """`chat.postMessage`, … or `response_url`."""
    body: dict[str, Any]
    token: str | None
    url: str
    at: float

    @property
    def text(self) -> str:
        """What a person would read of it: the message text, else its first block's text, else a view's title."""
        text = self.body.get("text")
        if isinstance(text, str) and text.strip():
            return text
        found = _blocks_text(self.body.get("blocks"))
        if found:
            return found
        view = self.body.get("view")
        if isinstance(view, str):
            with contextlib.suppress(ValueError):
                view = json.loads(view)
        if isinstance(view, dict):
            title = view.get("title")
            if isinstance(title, dict) and isinstance(title.get("text"), str):
                return str(title["text"])
            return _blocks_text(view.get("blocks"))
        return ""


@dataclass(frozen=True, slots=True)
class AckRecord:
    """One ack the sandbox received for an envelope it delivered (in time or late)."""

    envelope_id: str
    key: str
    envelope_type: str
    interaction: str | None
    """The payload's `type` (view_submission, block_suggestion, block_actions, …) or the slash command."""
    payload: dict[str, Any] | None
    """The ack's `payload`; Slack shows it only when the ack came in time for an envelope that accepts one."""
    accepts_response_payload: bool
    ms: float
    """Milliseconds from the send to the ack."""
    late: bool
    """After `ack_deadline`: Slack ignored it (the envelope was retried, or the user saw an error)."""


@dataclass(frozen=True, slots=True)
class Injected:
    """What a helper injected: `key` is the event_id (events_api) or first envelope_id."""

    key: str
    envelope_type: str
    response_url: str | None = None
    trigger_id: str | None = None


@dataclass
class _Item:
    key: str
    envelope_type: str
    payload: dict[str, Any]
    accepts_response_payload: bool
    attempt: int = 0
    envelope_id: str = ""
    connection: str | None = None
    sent_at: float = 0.0
    deadline: asyncio.TimerHandle | None = None
    measure: bool = False


@dataclass
class _Conn:
    id: str
    ws: web.WebSocketResponse
    request: web.Request
    opened_at: float
    ready: bool = False
    retiring: bool = False
    frozen: bool = False
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)


class SlackSandbox:
    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ack_deadline: float = 3.0,
        retry_delays: tuple[float, ...] = (0.0, 60.0, 300.0),
        retry_interactive: bool = False,
        open_rate_limit: int | None = None,
        open_rate_window: float = 60.0,
        max_connections: int = 10,
        server_ping_interval: float | None = 10.0,
        retire_after: float = 10.0,
        connection_lifetime: float | None = None,
        app_token: str = APP_TOKEN,
        bot_token: str = BOT_TOKEN,
        team_id: str = "T0SANDBOX",
        app_id: str = "A0SANDBOX",
        bot_user_id: str = "U0SANDBOXBOT",
        seed: int | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.ack_deadline = ack_deadline
        self.retry_delays = retry_delays
        self.retry_interactive = retry_interactive
        self.open_rate_limit = open_rate_limit
        self.open_rate_window = open_rate_window
        self.max_connections = max_connections
        self.server_ping_interval = server_ping_interval
        self.retire_after = retire_after
        self.connection_lifetime = connection_lifetime
        self.app_token = app_token
        self.bot_token = bot_token
        self.team_id = team_id
        self.app_id = app_id
        self.bot_user_id = bot_user_id
        self.stats = SandboxStats()
        self.replies: list[RecordedCall] = []
        self.ack_payloads: dict[str, dict[str, Any]] = {}
        """Ack payloads received in time, by envelope_id (inline slash-command answers, view responses)."""
        self.acks: list[AckRecord] = []
        """Every ack received for a delivered envelope, in time or late, in arrival order."""
        self.on_ack: Callable[[AckRecord], None] | None = None
        """Called with each ack record as the ack arrives (before anything else happens)."""
        self.acked_keys: set[str] = set()
        self.delivered_keys: set[str] = set()
        self.latencies: list[float] = []
        """Seconds from send to ack, for envelopes sent by `push()`."""
        self.push_started_at: float | None = None
        self.last_ack_at: float | None = None
        """Event-loop times of the first `push()` send and of the latest ack (benchmarks)."""
        self._rng = random.Random(seed)
        self._ids = itertools.count(1)
        self._conns: dict[str, _Conn] = {}
        self._tickets: set[str] = set()
        self._opens: deque[float] = deque()
        self._hostile_urls: deque[str] = deque()
        self._web_429: deque[float] = deque()
        self._backlog: deque[_Item] = deque()
        self._inflight: dict[str, _Item] = {}
        self._expired: dict[str, _Item] = {}
        """Envelopes whose deadline passed, by envelope_id (the last 10,000), to recognise their late acks."""
        self._response_urls: dict[str, int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._changed = asyncio.Condition()
        self._notify_pending = False
        self._runner: web.AppRunner | None = None
        self._base = ""

    # --- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/api/_sandbox/events", self._http_inject)
        app.router.add_post("/api/_sandbox/push", self._http_push)
        app.router.add_get("/api/_sandbox/stats", self._http_stats)
        app.router.add_get("/api/_sandbox/replies", self._http_replies)
        app.router.add_get("/api/_sandbox/acks", self._http_acks)
        app.router.add_post("/api/_sandbox/disconnect", self._http_disconnect)
        app.router.add_post("/api/_sandbox/reset", self._http_reset)
        app.router.add_post("/api/{method}", self._http_api)
        app.router.add_get("/link/", self._ws_handler)
        app.router.add_post("/response/{token}", self._http_response_url)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self._base = f"http://{self.host}:{self.port}"
        log.info("slack sandbox listening on %s", self.api_url)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for item in self._inflight.values():
            if item.deadline is not None:
                item.deadline.cancel()
        for conn in list(self._conns.values()):
            for task in list(conn.tasks):
                task.cancel()
            transport = conn.request.transport
            if transport is not None:
                transport.abort()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def api_url(self) -> str:
        """The Web API base URL, with a trailing slash (`SLACK_API_URL`)."""
        return f"{self._base}/api/"

    @property
    def connections(self) -> list[str]:
        """Ids of the sockets Slack considers open (including frozen ones), oldest first."""
        return list(self._conns)

    def ready_connections(self) -> list[str]:
        return [c.id for c in self._conns.values() if c.ready and not c.retiring]

    # --- knobs -----------------------------------------------------------------------------------

    def rate_limit_web(self, count: int = 1, retry_after: float = 1.0) -> None:
        """The next `count` Web API calls answer HTTP 429 with this Retry-After."""
        self._web_429.extend([retry_after] * count)

    async def disconnect(self, reason: str, connection: str | None = None) -> None:
        """Send `{"type":"disconnect","reason":…}` to one socket (default: every open one)."""
        targets = [self._conns[connection]] if connection else list(self._conns.values())
        for conn in targets:
            await self._disconnect(conn, reason)

    def freeze(self, connection: str | None = None) -> list[str]:
        """Make sockets half-open: the server stops reading (no pongs) and sending. Returns their ids."""
        targets = [self._conns[connection]] if connection else list(self._conns.values())
        for conn in targets:
            conn.frozen = True
            transport = conn.request.transport
            if transport is not None:
                transport.pause_reading()
        return [c.id for c in targets]

    def drop(self, connection: str | None = None) -> list[str]:
        """Close sockets abruptly (no close frame), like a network failure. Returns their ids."""
        targets = [self._conns[connection]] if connection else list(self._conns.values())
        for conn in targets:
            self._forget(conn)
            transport = conn.request.transport
            if transport is not None:
                transport.abort()
        return [c.id for c in targets]

    async def send_raw(self, frame: str | bytes, connection: str | None = None, *, text: bool = False) -> None:
        """Send a raw frame (anything, even invalid) to one socket (default: every open one). Bytes go as a
        binary frame, or with `text=True` as a text frame as they are (invalid UTF-8 included)."""
        targets = [self._conns[connection]] if connection else list(self._conns.values())
        for conn in targets:
            if isinstance(frame, bytes) and text:
                await conn.ws.send_frame(frame, WSMsgType.TEXT)
            elif isinstance(frame, bytes):
                await conn.ws.send_bytes(frame)
            else:
                await conn.ws.send_str(frame)

    def hand_out_urls(self, *urls: str) -> None:
        """The next apps.connections.open calls return these URLs (hostile ones included), then real ones."""
        self._hostile_urls.extend(urls)

    def reset_stats(self) -> None:
        self.stats = SandboxStats()
        self.latencies.clear()
        self.push_started_at = self.last_ack_at = None
        self.acked_keys.clear()
        self.delivered_keys.clear()
        self.acks.clear()
        self.ack_payloads.clear()

    # --- injection helpers -----------------------------------------------------------------------

    async def send_user_message(self, text: str, channel: str = "C0SANDBOX", user: str = "U0SANDBOXUSER") -> str:
        """A user mentions the bot: an `app_mention` events_api envelope. Returns its event_id."""
        ts = self._ts()
        event = {
            "type": "app_mention",
            "user": user,
            "text": f"<@{self.bot_user_id}> {text}",
            "ts": ts,
            "channel": channel,
            "event_ts": ts,
            "client_msg_id": str(uuid.uuid4()),
        }
        return await self.send_event(event)

    async def send_event(self, event: dict[str, Any], event_id: str | None = None) -> str:
        """Deliver any Events API event wrapped in its `event_callback`. Returns the event_id."""
        event_id = event_id or self._event_id()
        payload = {
            "token": "sandbox-verification-token",
            "team_id": self.team_id,
            "api_app_id": self.app_id,
            "event": event,
            "type": "event_callback",
            "event_id": event_id,
            "event_time": int(time.time()),
            "authorizations": [
                {
                    "enterprise_id": None,
                    "team_id": self.team_id,
                    "user_id": self.bot_user_id,
                    "is_bot": True,
                    "is_enterprise_install": False,
                }
            ],
            "is_ext_shared_channel": False,
            "event_context": f"4-sandbox-{event_id}",
        }
        await self.deliver("events_api", payload, key=event_id)
        return event_id

    async def send_slash_command(
        self, command: str, text: str = "", channel: str = "C0SANDBOX", user: str = "U0SANDBOXUSER"
    ) -> Injected:
        response_url = self._new_response_url()
        trigger_id = self._trigger_id()
        payload = {
            "token": "sandbox-verification-token",
            "team_id": self.team_id,
            "team_domain": "sandbox",
            "channel_id": channel,
            "channel_name": "general",
            "user_id": user,
            "user_name": "sandbox.user",
            "command": command,
            "text": text,
            "api_app_id": self.app_id,
            "is_enterprise_install": "false",
            "response_url": response_url,
            "trigger_id": trigger_id,
        }
        key = await self.deliver("slash_commands", payload, accepts_response_payload=True)
        return Injected(key, "slash_commands", response_url, trigger_id)

    async def send_block_action(
        self,
        action_id: str,
        value: str = "",
        *,
        channel: str = "C0SANDBOX",
        user: str = "U0SANDBOXUSER",
        message_ts: str | None = None,
        message: dict[str, Any] | None = None,
    ) -> Injected:
        """A user clicks a button (`block_actions`) on a message (default: a synthetic one)."""
        ts = message_ts or self._ts()
        response_url = self._new_response_url()
        trigger_id = self._trigger_id()
        payload: dict[str, Any] = {
            "type": "block_actions",
            "user": {"id": user, "username": "sandbox.user", "name": "sandbox.user", "team_id": self.team_id},
            "api_app_id": self.app_id,
            "token": "sandbox-verification-token",
            "container": {"type": "message", "message_ts": ts, "channel_id": channel, "is_ephemeral": False},
            "trigger_id": trigger_id,
            "team": {"id": self.team_id, "domain": "sandbox"},
            "enterprise": None,
            "is_enterprise_install": False,
            "channel": {"id": channel, "name": "general"},
            "message": message or {"type": "message", "user": self.bot_user_id, "ts": ts, "text": "", "blocks": []},
            "state": {"values": {}},
            "response_url": response_url,
            "actions": [
                {
                    "action_id": action_id,
                    "block_id": "sandbox-block",
                    "text": {"type": "plain_text", "text": action_id},
                    "value": value,
                    "type": "button",
                    "action_ts": self._ts(),
                }
            ],
        }
        key = await self.deliver("interactive", payload)
        return Injected(key, "interactive", response_url, trigger_id)

    async def send_view_submission(
        self,
        callback_id: str,
        values: dict[str, dict[str, Any]] | None = None,
        *,
        user: str = "U0SANDBOXUSER",
        private_metadata: str = "",
    ) -> Injected:
        """A user submits a modal (`view_submission`, answered in the ack with a `response_action`).

        `values`: {block_id: {action_id: value}}; a text value becomes a `plain_text_input`'s state, a dict is
        used as the state value itself (e.g. `{"type": "external_select", "selected_option": {…}}`)."""
        state = {
            block: {
                action: value if isinstance(value, dict) else {"type": "plain_text_input", "value": value}
                for action, value in actions.items()
            }
            for block, actions in (values or {}).items()
        }
        view_id = f"V{next(self._ids):08d}"
        payload: dict[str, Any] = {
            "type": "view_submission",
            "team": {"id": self.team_id, "domain": "sandbox"},
            "user": {"id": user, "username": "sandbox.user", "name": "sandbox.user", "team_id": self.team_id},
            "api_app_id": self.app_id,
            "token": "sandbox-verification-token",
            "trigger_id": self._trigger_id(),
            "view": {
                "id": view_id,
                "team_id": self.team_id,
                "type": "modal",
                "callback_id": callback_id,
                "private_metadata": private_metadata,
                "title": {"type": "plain_text", "text": callback_id},
                "blocks": [],
                "state": {"values": state},
                "hash": f"{int(time.time())}.sandbox",
                "root_view_id": view_id,
                "app_id": self.app_id,
                "bot_id": "B0SANDBOX",
            },
            "response_urls": [],
            "is_enterprise_install": False,
            "enterprise": None,
        }
        key = await self.deliver("interactive", payload, accepts_response_payload=True)
        return Injected(key, "interactive", None, payload["trigger_id"])

    async def send_block_suggestion(
        self, action_id: str, value: str = "", *, block_id: str = "sandbox-block", user: str = "U0SANDBOXUSER"
    ) -> Injected:
        """A user types into an external select (`block_suggestion`, answered with `options`/`option_groups`)."""
        view_id = f"V{next(self._ids):08d}"
        payload: dict[str, Any] = {
            "type": "block_suggestion",
            "user": {"id": user, "username": "sandbox.user", "name": "sandbox.user", "team_id": self.team_id},
            "container": {"type": "view", "view_id": view_id},
            "api_app_id": self.app_id,
            "token": "sandbox-verification-token",
            "action_id": action_id,
            "block_id": block_id,
            "value": value,
            "team": {"id": self.team_id, "domain": "sandbox"},
            "enterprise": None,
            "is_enterprise_install": False,
            "view": {"id": view_id, "team_id": self.team_id, "type": "modal", "callback_id": "", "blocks": []},
        }
        key = await self.deliver("interactive", payload, accepts_response_payload=True)
        return Injected(key, "interactive")

    def ack_for(self, key: str) -> AckRecord | None:
        """The first ack recorded for an envelope (by its key, or envelope_id), None while there is none."""
        for record in self.acks:
            if record.key == key or record.envelope_id == key:
                return record
        return None

    async def wait_ack(self, key: str, within: float | None = None) -> AckRecord | None:
        """The ack of an envelope once it arrived, or None when its deadline passed without one (waits at most
        `within` seconds, default the ack deadline plus a second)."""

        def settled() -> bool:
            return self.ack_for(key) is not None or self._gave_up(key)

        await self.wait_for(settled, self.ack_deadline + 1.0 if within is None else within)
        return self.ack_for(key)

    def _gave_up(self, key: str) -> bool:
        return any(item.key == key for item in self._expired.values()) and not any(
            item.key == key for item in self._inflight.values()
        )

    async def deliver(
        self,
        envelope_type: str,
        payload: dict[str, Any],
        *,
        key: str | None = None,
        accepts_response_payload: bool = False,
        connection: str | None = None,
        envelope_id: str | None = None,
    ) -> str:
        """Deliver one envelope (to `connection`, or a random open socket, or when one opens)."""
        item = _Item(key or "", envelope_type, payload, accepts_response_payload)
        item.envelope_id = envelope_id or self._envelope_id()
        item.key = item.key or item.envelope_id
        self.delivered_keys.add(item.key)
        await self._send(item, connection)
        return item.key

    async def push(self, count: int, rate: float | None = None) -> list[str]:
        """Bulk events_api delivery for benchmarks: `count` events as fast as sockets take them, or at
        `rate` per second; ack latencies are recorded in `latencies`. Returns the event ids."""
        keys = []
        loop = asyncio.get_running_loop()
        start = loop.time()
        if self.push_started_at is None:
            self.push_started_at = start
        for n in range(count):
            if rate:
                delay = start + n / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            event_id = self._event_id()
            ts = f"{time.time():.6f}"
            payload: dict[str, Any] = {
                "team_id": self.team_id,
                "api_app_id": self.app_id,
                "type": "event_callback",
                "event_id": event_id,
                "event_time": int(time.time()),
                "event": {
                    "type": "message",
                    "user": "U0SANDBOXUSER",
                    "text": f"bench {n}",
                    "ts": ts,
                    "channel": f"C0BENCH{n % 16:02d}",
                    "event_ts": ts,
                },
            }
            item = _Item(event_id, "events_api", payload, False, measure=True)
            item.envelope_id = self._envelope_id()
            self.delivered_keys.add(event_id)
            await self._send(item, None)
            keys.append(event_id)
        return keys

    # --- waiting ---------------------------------------------------------------------------------

    async def wait_for(self, predicate: Callable[[], bool], within: float = 10.0) -> None:
        """Wait until `predicate()` holds: re-checked on every ack, reply and connection change, and every
        10 ms (so predicates on other objects work too). Raises TimeoutError after `within` seconds."""
        async with asyncio.timeout(within):
            while not predicate():
                async with self._changed:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.01):
                            await self._changed.wait()

    async def wait_acked_keys(self, keys: set[str] | list[str], within: float = 10.0) -> None:
        wanted = set(keys)
        await self.wait_for(lambda: wanted <= self.acked_keys, within)

    async def wait_acked(self, count: int, within: float = 10.0) -> None:
        await self.wait_for(lambda: self.stats.acked >= count, within)

    async def wait_connections(self, count: int, within: float = 10.0) -> None:
        """Wait until `count` sockets said hello and are not retiring."""
        await self.wait_for(lambda: len(self.ready_connections()) >= count, within)

    async def wait_for_reply(
        self, predicate: Callable[[RecordedCall], bool] | None = None, within: float = 10.0
    ) -> RecordedCall:
        """The first recorded Web API call / response_url post matching `predicate`."""
        found: list[RecordedCall] = []

        def match() -> bool:
            found[:] = [r for r in self.replies if predicate is None or predicate(r)][:1]
            return bool(found)

        await self.wait_for(match, within)
        return found[0]

    def _notify(self) -> None:
        if self._notify_pending:
            return  # one wake-up covers every change made before it runs
        self._notify_pending = True
        task = asyncio.get_running_loop().create_task(self._notify_async())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _notify_async(self) -> None:
        self._notify_pending = False
        async with self._changed:
            self._changed.notify_all()

    # --- delivery engine -------------------------------------------------------------------------

    def _pick(self, exclude: str | None = None) -> _Conn | None:
        candidates = [c for c in self._conns.values() if c.ready and not c.retiring]
        if exclude is not None and len(candidates) > 1:
            candidates = [c for c in candidates if c.id != exclude] or candidates
        if not candidates:
            return None
        return candidates[0] if len(candidates) == 1 else self._rng.choice(candidates)

    async def _send(self, item: _Item, connection: str | None, exclude: str | None = None) -> None:
        conn = self._conns.get(connection) if connection else self._pick(exclude)
        if conn is None:
            self._backlog.append(item)
            return
        frame = {
            "envelope_id": item.envelope_id,
            "type": item.envelope_type,
            "payload": item.payload,
            "accepts_response_payload": item.accepts_response_payload,
        }
        if item.envelope_type == "events_api":
            frame["retry_attempt"] = item.attempt
            frame["retry_reason"] = "timeout" if item.attempt else ""
        loop = asyncio.get_running_loop()
        item.connection = conn.id
        item.sent_at = loop.time()
        self._inflight[item.envelope_id] = item
        item.deadline = loop.call_later(self.ack_deadline, self._expire, item.envelope_id)
        self.stats.delivered += 1
        if item.attempt:
            self.stats.redelivered += 1
        if conn.frozen:
            return  # into the void, as on a half-open socket
        with contextlib.suppress(ConnectionError, RuntimeError):  # gone: the ack deadline redelivers
            await conn.ws.send_str(json.dumps(frame))

    def _expire(self, envelope_id: str) -> None:
        item = self._inflight.pop(envelope_id, None)
        if item is None:
            return
        self._expired[envelope_id] = item
        if len(self._expired) > 10_000:
            self._expired.pop(next(iter(self._expired)))
        retried = item.envelope_type == "events_api" or self.retry_interactive
        if not retried or item.attempt >= len(self.retry_delays):
            self.stats.expired += 1
            log.info("sandbox: envelope %s (key %s) never acked, giving up", envelope_id, item.key)
            self._notify()
            return
        delay = self.retry_delays[item.attempt]
        retry = _Item(
            item.key,
            item.envelope_type,
            item.payload,
            item.accepts_response_payload,
            item.attempt + 1,
            self._envelope_id(),
            measure=item.measure,
        )
        self._spawn(self._redeliver(retry, delay, item.connection))

    async def _redeliver(self, item: _Item, delay: float, previous: str | None) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        await self._send(item, None, exclude=previous)

    async def _flush_backlog(self) -> None:
        while self._backlog and self._pick() is not None:
            await self._send(self._backlog.popleft(), None)

    def _on_ack(self, conn: _Conn, data: str) -> None:
        try:
            obj = json.loads(data)
        except ValueError:
            log.info("sandbox: connection %s sent a non-JSON frame", conn.id)
            return
        envelope_id = obj.get("envelope_id") if isinstance(obj, dict) else None
        item = self._inflight.pop(envelope_id, None) if isinstance(envelope_id, str) else None
        now = asyncio.get_running_loop().time()
        payload = obj.get("payload") if isinstance(obj, dict) else None
        payload = payload if isinstance(payload, dict) else None
        if item is None:
            self.stats.late_acks += 1
            late = self._expired.get(envelope_id) if isinstance(envelope_id, str) else None
            if late is not None:  # after the deadline: Slack ignores it, payload and all
                self._record_ack(late, payload, now, late=True)
                self._notify()
            return
        if item.deadline is not None:
            item.deadline.cancel()
        self.stats.acked += 1
        self.acked_keys.add(item.key)
        self.last_ack_at = now
        if item.measure:
            self.latencies.append(now - item.sent_at)
        if item.envelope_type != "events_api" or payload is not None:
            self._record_ack(item, payload, now, late=False)
        if payload is not None and item.accepts_response_payload:
            self.ack_payloads[item.envelope_id] = payload
        self._notify()

    def _record_ack(self, item: _Item, payload: dict[str, Any] | None, now: float, *, late: bool) -> None:
        interaction = item.payload.get("type") if item.envelope_type == "interactive" else item.payload.get("command")
        record = AckRecord(
            envelope_id=item.envelope_id,
            key=item.key,
            envelope_type=item.envelope_type,
            interaction=interaction if isinstance(interaction, str) else None,
            payload=payload,
            accepts_response_payload=item.accepts_response_payload,
            ms=round((now - item.sent_at) * 1000, 3),
            late=late,
        )
        if self.on_ack is not None:
            self.on_ack(record)
        self.acks.append(record)

    # --- websocket -------------------------------------------------------------------------------

    async def _ws_handler(self, request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket", "")
        if ticket not in self._tickets:
            return web.json_response({"ok": False, "error": "invalid_ticket"}, status=401)
        self._tickets.discard(ticket)
        ws = web.WebSocketResponse(autoping=True, max_msg_size=0, compress=False)
        await ws.prepare(request)
        loop = asyncio.get_running_loop()
        conn = _Conn(f"S{next(self._ids)}", ws, request, loop.time())
        self.stats.connections_opened += 1
        if len(self._conns) >= self.max_connections:
            await ws.send_str(json.dumps({"type": "disconnect", "reason": "too_many_websockets"}))
            await ws.close()
            return ws
        self._conns[conn.id] = conn
        try:
            await ws.send_str(
                json.dumps(
                    {
                        "type": "hello",
                        "num_connections": len(self._conns),
                        "debug_info": {
                            "host": f"applink-sandbox-{conn.id}",
                            "build_number": 1,
                            "approximate_connection_time": int(self.connection_lifetime or 18060),
                        },
                        "connection_info": {"app_id": self.app_id},
                    }
                )
            )
            conn.ready = True
            if self.server_ping_interval:
                self._spawn(self._pinger(conn), conn)
            if self.connection_lifetime:
                self._spawn(self._end_of_life(conn), conn)
            self._notify()
            await self._flush_backlog()
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    if len(msg.data.encode()) >= MAX_FRAME:
                        self.stats.oversized_frames += 1
                        await ws.close(code=1009, message=b"Max frame length of 20480")
                        break
                    self._on_ack(conn, msg.data)
                elif msg.type is WSMsgType.BINARY and len(msg.data) >= MAX_FRAME:
                    self.stats.oversized_frames += 1
                    await ws.close(code=1009, message=b"Max frame length of 20480")
                    break
        finally:
            self._forget(conn)
        return ws

    def _forget(self, conn: _Conn) -> None:
        if self._conns.pop(conn.id, None) is not None:
            for task in list(conn.tasks):
                if task is not asyncio.current_task():
                    task.cancel()
            self._notify()

    async def _disconnect(self, conn: _Conn, reason: str) -> None:
        frame = json.dumps({"type": "disconnect", "reason": reason, "debug_info": {"host": f"applink-{conn.id}"}})
        if not conn.frozen:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await conn.ws.send_str(frame)
        if reason in ("warning", "refresh_requested"):
            conn.retiring = True
            self._notify()
            self._spawn(self._close_later(conn, self.retire_after), conn)
        else:
            conn.retiring = True
            await conn.ws.close()

    async def _close_later(self, conn: _Conn, delay: float) -> None:
        await asyncio.sleep(delay)
        await conn.ws.close()

    async def _end_of_life(self, conn: _Conn) -> None:
        assert self.connection_lifetime is not None
        await asyncio.sleep(self.connection_lifetime)
        await self._disconnect(conn, "refresh_requested")

    async def _pinger(self, conn: _Conn) -> None:
        assert self.server_ping_interval is not None
        while not conn.ws.closed:
            await asyncio.sleep(self.server_ping_interval)
            if not conn.frozen:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await conn.ws.ping()

    def _spawn(self, coro: Any, conn: _Conn | None = None) -> None:
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro)
        owner = self._tasks if conn is None else conn.tasks
        owner.add(task)
        task.add_done_callback(owner.discard)

    # --- Web API ---------------------------------------------------------------------------------

    async def _http_api(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        body = await _read_body(request)
        token = _bearer(request) or _str(body.get("token"))
        if method == "apps.connections.open":
            return self._connections_open(token)
        if self._web_429:
            return web.json_response(
                {"ok": False, "error": "ratelimited"},
                status=429,
                headers={"Retry-After": f"{self._web_429.popleft():g}"},
            )
        if method not in WEB_METHODS:
            return web.json_response({"ok": False, "error": "unknown_method"}, status=404)
        if token != self.bot_token:
            return web.json_response({"ok": False, "error": "invalid_auth" if token else "not_authed"})
        body.pop("token", None)
        self._record(method, body, token, request)
        return web.json_response(self._web_answer(method, body))

    def _connections_open(self, token: str | None) -> web.Response:
        self.stats.opens += 1
        if not token:
            return web.json_response({"ok": False, "error": "not_authed"})
        if token != self.app_token:
            return web.json_response({"ok": False, "error": "invalid_auth"})
        if self.open_rate_limit is not None:
            now = time.monotonic()
            while self._opens and self._opens[0] <= now - self.open_rate_window:
                self._opens.popleft()
            if len(self._opens) >= self.open_rate_limit:
                self.stats.opens_rate_limited += 1
                retry_after = max(1, round(self._opens[0] + self.open_rate_window - now + 0.5))
                return web.json_response(
                    {"ok": False, "error": "ratelimited"}, status=429, headers={"Retry-After": str(retry_after)}
                )
            self._opens.append(now)
        if self._hostile_urls:
            return web.json_response({"ok": True, "url": self._hostile_urls.popleft()})
        ticket = uuid.uuid4().hex
        self._tickets.add(ticket)
        ws_base = self._base.replace("http://", "ws://", 1)
        return web.json_response({"ok": True, "url": f"{ws_base}/link/?ticket={ticket}&app_id={self.app_id}"})

    def _web_answer(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        if method == "auth.test":
            return {"ok": True, "team_id": self.team_id, "user_id": self.bot_user_id, "bot_id": "B0SANDBOX"}
        if method == "assistant.threads.setStatus":  # the typing status of a thread (the Direct Line bridge)
            if not body.get("channel_id") or not body.get("thread_ts"):
                return {"ok": False, "error": "invalid_arguments"}
            return {"ok": True}
        if method == "chat.postMessage":
            channel = _str(body.get("channel"))
            if not channel:
                return {"ok": False, "error": "channel_not_found"}
            if not body.get("text") and not body.get("blocks") and not body.get("attachments"):
                return {"ok": False, "error": "no_text"}
            ts = self._ts()
            message = {"type": "message", "user": self.bot_user_id, "ts": ts, "text": body.get("text", "")}
            if body.get("thread_ts"):
                message["thread_ts"] = body["thread_ts"]
            return {"ok": True, "channel": channel, "ts": ts, "message": message}
        if method == "chat.update":
            if not body.get("channel") or not body.get("ts"):
                return {"ok": False, "error": "message_not_found"}
            return {"ok": True, "channel": body["channel"], "ts": body["ts"], "text": body.get("text", "")}
        view = body.get("view")
        if isinstance(view, str):
            with contextlib.suppress(ValueError):
                view = json.loads(view)
        if not isinstance(view, dict):
            return {"ok": False, "error": "invalid_arguments"}
        if method == "views.open":
            if not body.get("trigger_id"):
                return {"ok": False, "error": "invalid_trigger_id"}
            return {"ok": True, "view": {"id": f"V{next(self._ids):08d}", "team_id": self.team_id, **view}}
        if not body.get("view_id") and not body.get("external_id"):
            return {"ok": False, "error": "not_found"}
        return {"ok": True, "view": {"id": body.get("view_id") or f"V{next(self._ids):08d}", **view}}

    async def _http_response_url(self, request: web.Request) -> web.StreamResponse:
        token = request.match_info["token"]
        used = self._response_urls.get(token)
        if used is None:
            return web.json_response({"ok": False, "error": "expired_url"}, status=404)
        if used >= RESPONSE_URL_POSTS:
            return web.json_response({"ok": False, "error": "used_url"}, status=404)
        self._response_urls[token] = used + 1
        body = await _read_body(request)
        self._record("response_url", body, None, request)
        return web.json_response({"ok": True})

    def _record(self, method: str, body: dict[str, Any], token: str | None, request: web.Request) -> None:
        self.replies.append(RecordedCall(method, body, token, str(request.url), time.time()))
        log.info("sandbox: received %s %s", method, json.dumps(body)[:200])
        self._notify()

    # --- control endpoints -----------------------------------------------------------------------

    async def _http_inject(self, request: web.Request) -> web.StreamResponse:
        body = await _read_body(request)
        kind = body.get("kind", "message")
        if kind == "message":
            key = await self.send_user_message(
                str(body.get("text", "")), str(body.get("channel", "C0SANDBOX")), str(body.get("user", "U0SANDBOXUSER"))
            )
            return web.json_response({"ok": True, "key": key})
        if kind == "command":
            injected = await self.send_slash_command(str(body.get("command", "/ticket")), str(body.get("text", "")))
        elif kind == "action":
            injected = await self.send_block_action(
                str(body.get("action_id", "")), str(body.get("value", "")), message_ts=_str(body.get("message_ts"))
            )
        elif kind == "view_submission":
            values = body.get("values")
            injected = await self.send_view_submission(
                str(body.get("callback_id", "")), values if isinstance(values, dict) else {}
            )
        elif kind == "block_suggestion":
            injected = await self.send_block_suggestion(
                str(body.get("action_id", "")),
                str(body.get("value", "")),
                block_id=str(body.get("block_id", "sandbox-block")),
            )
        elif kind == "raw" and isinstance(body.get("payload"), dict):
            key = await self.deliver(
                str(body.get("type", "events_api")),
                body["payload"],
                key=_str(body.get("key")),
                accepts_response_payload=body.get("accepts_response_payload") is True,
            )
            return web.json_response({"ok": True, "key": key, **await self._http_ack(body, key)})
        else:
            return web.json_response({"ok": False, "error": "unknown kind"}, status=400)
        return web.json_response({"ok": True, **asdict(injected), **await self._http_ack(body, injected.key)})

    async def _http_ack(self, body: dict[str, Any], key: str) -> dict[str, Any]:
        """`{"ack": record or null}` once the envelope was acked or given up on, when the request said `wait`."""
        if body.get("wait") is not True:
            return {}
        with contextlib.suppress(TimeoutError):
            await self.wait_ack(key)
        record = self.ack_for(key)
        return {"ack": asdict(record) if record is not None else None}

    async def _http_acks(self, request: web.Request) -> web.StreamResponse:
        return web.json_response([asdict(a) for a in self.acks])

    async def _http_push(self, request: web.Request) -> web.StreamResponse:
        body = await _read_body(request)
        count = int(body.get("count", 1000))
        rate = body.get("rate")
        self._spawn(self.push(count, float(rate) if rate else None))
        return web.json_response({"ok": True})

    async def _http_stats(self, request: web.Request) -> web.StreamResponse:
        lat = sorted(self.latencies)
        return web.json_response(
            {
                **asdict(self.stats),
                "connections": self.connections,
                "outstanding": len(self._inflight) + len(self._backlog),
                "latency_count": len(lat),
                "latency_p50": _quantile(lat, 0.5),
                "latency_p99": _quantile(lat, 0.99),
                "push_seconds": (
                    self.last_ack_at - self.push_started_at
                    if self.last_ack_at is not None and self.push_started_at is not None
                    else None
                ),
            }
        )

    async def _http_replies(self, request: web.Request) -> web.StreamResponse:
        return web.json_response([asdict(r) for r in self.replies])

    async def _http_disconnect(self, request: web.Request) -> web.StreamResponse:
        body = await _read_body(request)
        await self.disconnect(str(body.get("reason", "refresh_requested")), _str(body.get("connection")))
        return web.json_response({"ok": True})

    async def _http_reset(self, request: web.Request) -> web.StreamResponse:
        self.reset_stats()
        return web.json_response({"ok": True})

    # --- ids -------------------------------------------------------------------------------------

    def _event_id(self) -> str:
        return f"Ev{next(self._ids):08d}{self._rng.randrange(16**6):06X}"

    def _envelope_id(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _trigger_id(self) -> str:
        return f"{next(self._ids)}.{self._rng.randrange(10**12)}.sandbox"

    def _ts(self) -> str:
        return f"{time.time():.6f}"

    def new_response_url(self) -> str:
        """A fresh response_url on this sandbox (5 posts, like Slack's)."""
        return self._new_response_url()

    def _new_response_url(self) -> str:
        token = uuid.uuid4().hex
        self._response_urls[token] = 0
        return f"{self._base}/response/{token}"


async def _read_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    if request.content_type == "application/json":
        try:
            data = await request.json()
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}
    form = await request.post()
    return {k: v for k, v in form.items() if isinstance(v, str)}


def _blocks_text(blocks: Any) -> str:
    """The text of the first block that has one (`blocks` may be a list or its JSON text)."""
    if isinstance(blocks, str):
        try:
            blocks = json.loads(blocks)
        except ValueError:
            return ""
    if not isinstance(blocks, list):
        return ""
    for block in blocks:
        text = block.get("text") if isinstance(block, dict) else None
        if isinstance(text, dict):
            text = text.get("text")
        if isinstance(text, str) and text.strip():
            return text
    return ""


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    return header[7:] if header.startswith("Bearer ") else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _quantile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def _main(port: int, ack_deadline: float) -> None:
    async with SlackSandbox(port=port, ack_deadline=ack_deadline) as sandbox:
        print(
            json.dumps({"api_url": sandbox.api_url, "app_token": sandbox.app_token, "bot_token": sandbox.bot_token}),
            flush=True,
        )
        await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Run the sandbox Slack alone.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ack-deadline", type=float, default=3.0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args.port, args.ack_deadline))
