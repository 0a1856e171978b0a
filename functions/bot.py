r"""Handler registration and dispatch (the function side).

Users register handlers with decorators on a `Bot` (see `handlers/`); keys are strings or regular
expressions, as in Bolt:

    @bot.slack.event("app_mention")                  # Events API, by event type (subtype= narrows)
    @bot.slack.message(re.compile(r"^deploy (\w+)"))  # message events by text (matches in ctx.extras)
    @bot.slack.command("/ticket")                    # slash commands
    @bot.slack.action("ack_button")                  # block_actions, by action_id (and block_id=)
    @bot.slack.options("ticket_assignee")            # external select options (block_suggestion)
    @bot.slack.view("ticket_modal")                  # view_submission / view_closed, by callback_id
    @bot.slack.shortcut("open_ticket")               # global and message shortcuts, by callback_id
    @bot.teams.message                               # every Teams message (or .message("text", conversation_type=…))
    @bot.teams.activity("conversationUpdate")
    @bot.teams.invoke("adaptiveCard/action")

A handler is `async def handler(ctx: SlackContext | TeamsContext) -> Response | None`; returning an answer
(`functions.responses`) answers synchronously where the platform takes one. Several handlers may listen to the
same key: they run in registration order. Middleware (`@bot.middleware`, or `middleware=[…]` per listener)
can inspect, enrich or stop an envelope; `@bot.error` handles what listeners raise; the bot's own events
are ignored by default. Exceptions propagate so that the message is retried; raise `DeadLetterError` for
a message that can never succeed. An envelope no handler wants is logged and completed.

`Bot.discover(package)` imports every module of a package (`handlers/`), so a new module is found
without editing a list; a module that cannot be imported is one `HandlerLoadError` line naming the
file and the line, not a traceback through the rest of the bot.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import re
import sys
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from functions.context import Context, ReplyClients

if TYPE_CHECKING:
    from functions.state import StateStore
from shared.envelope import Envelope, Kind, Platform
from shared.errors import DeadLetterError, RecipientGone, RelaybusError, UnsafeReplyTarget
from shared.redact import redact

SETTLEMENT_ERRORS: tuple[type[BaseException], ...] = (DeadLetterError, RecipientGone, UnsafeReplyTarget)
"""Exceptions that say how to settle a message: they pass the error handler untouched (`functions.triggers`
adds `Retry` when retries are in place: `register_settlement_error`)."""


def register_settlement_error(kind: type[BaseException]) -> None:
    """Let another settlement signal (e.g. `Retry`) pass the error handler untouched."""
    global SETTLEMENT_ERRORS
    if kind not in SETTLEMENT_ERRORS:
        SETTLEMENT_ERRORS = (*SETTLEMENT_ERRORS, kind)


log = logging.getLogger(__name__)

Handler = Callable[..., Awaitable[Any]]
"""`async def handler(ctx) -> Response | None` (a `functions.responses.Response` answers synchronously)."""
H = TypeVar("H", bound=Handler)
Next = Callable[[], Awaitable[Any]]
Middleware = Callable[[Any, Next], Awaitable[Any]]
"""`async def mw(ctx, next_) -> Response | None`: inspect or enrich `ctx`, `return await next_()` to go on, or
return without calling it to stop the envelope (no listener runs; what it returns is the answer)."""
ErrorHandler = Callable[[Any, Exception], Awaitable[Any]]
Key = str | re.Pattern[str] | None
_NO_SUBTYPE: Any = object()


@dataclass(frozen=True, slots=True)
class Dispatched:
    """What dispatch did: whether a handler ran, and the answer (the first non-None a listener returned)."""

    ran: bool
    response: Any = None

    def __bool__(self) -> bool:
        return self.ran


class HandlerLoadError(RelaybusError):
    """A module under the handlers package could not be imported; the message names the file and line."""


def _matches(key: Key, value: object) -> re.Match[str] | bool:
    """Exact string, regular expression (searched), or None (anything)."""
    if key is None:
        return True
    if not isinstance(value, str):
        return False
    if isinstance(key, re.Pattern):
        return key.search(value) or False
    return key == value


def _show(key: Key) -> str:
    if key is None:
        return "*"
    return f"/{key.pattern}/" if isinstance(key, re.Pattern) else key


@dataclass(eq=False)
class Listener:
    """One registered handler: what it listens to, its own middleware, and when it was registered."""

    group: str
    key: Key
    handler: Handler
    middleware: tuple[Middleware, ...]
    seq: int
    test: Callable[[Any], re.Match[str] | bool] | None = None
    """A further condition on the context (a subtype, a text pattern, a conversation type)."""
    detail: str = ""

    def describe(self) -> str:
        return f"{self.group} {_show(self.key)}{self.detail}"


class _Registry:
    """Listeners by group: exact keys in a dict (the common case), patterns in a list; registration order kept."""

    def __init__(self) -> None:
        self._exact: dict[tuple[str, str], list[Listener]] = {}
        self._other: dict[str, list[Listener]] = {}
        self._all: list[Listener] = []

    def add(self, listener: Listener) -> None:
        if isinstance(listener.key, str):
            self._exact.setdefault((listener.group, listener.key), []).append(listener)
        else:
            self._other.setdefault(listener.group, []).append(listener)
        self._all.append(listener)

    def candidates(self, group: str, key: str | None) -> list[Listener]:
        exact = self._exact.get((group, key), []) if key is not None else []
        other = [listener for listener in self._other.get(group, []) if key is not None or listener.key is None]
        if not other:
            return exact
        if key is not None:
            other = [listener for listener in other if _matches(listener.key, key)]
        return sorted([*exact, *other], key=lambda listener: listener.seq)

    def keys(self) -> list[tuple[str, str]]:
        return sorted({(listener.group, _show(listener.key)) for listener in self._all})

    def listeners(self) -> list[Listener]:
        return sorted(self._all, key=lambda listener: (listener.group, _show(listener.key), listener.seq))


class _Handlers:
    def __init__(self, bot: Bot) -> None:
        self._bot = bot
        self._registry = _Registry()

    def _register(
        self,
        group: str,
        key: Key,
        middleware: Sequence[Middleware] = (),
        test: Callable[[Any], re.Match[str] | bool] | None = None,
        detail: str = "",
    ) -> Callable[[H], H]:
        def decorator(handler: H) -> H:
            self._registry.add(Listener(group, key, handler, tuple(middleware), self._bot._next_seq(), test, detail))
            return handler

        return decorator

    def registered(self) -> list[tuple[str, str]]:
        return self._registry.keys()

    def listeners(self) -> list[Listener]:
        return self._registry.listeners()


class SlackHandlers(_Handlers):
    """`@bot.slack.…` decorators, the Bolt ones: event, message, command, action, view, shortcut, options."""

    def event(
        self, event_type: str | re.Pattern[str], *, subtype: Any = _NO_SUBTYPE, middleware: Sequence[Middleware] = ()
    ) -> Callable[[H], H]:
        """Events API events by type; `subtype=None` only events without a subtype, `subtype="x"` only those."""
        if subtype is _NO_SUBTYPE:
            return self._register("event", event_type, middleware)

        def has_subtype(ctx: Any) -> bool:
            return bool(_matches(subtype, ctx.event.subtype)) if subtype is not None else ctx.event.subtype is None

        return self._register("event", event_type, middleware, has_subtype, f" subtype={_show(subtype)}")

    def message(
        self,
        text: str | re.Pattern[str] | None = None,
        *,
        subtype: Any = None,
        middleware: Sequence[Middleware] = (),
    ) -> Callable[[H], H]:
        """`message` events whose text contains `text` (a string) or matches it (a regular expression; its
        match is in `ctx.extras["matches"]`). By default only plain messages (no subtype), as Bolt does."""
        pattern = re.compile(re.escape(text)) if isinstance(text, str) else text

        def fits(ctx: Any) -> re.Match[str] | bool:
            event = ctx.event
            if subtype is None and event.subtype is not None:
                return False
            if subtype is not None and not _matches(subtype, event.subtype):
                return False
            if pattern is None:
                return True
            found = pattern.search(event.text or "")
            if found:
                ctx.extras["matches"] = found.groups() or (found.group(0),)
            return found or False

        return self._register("event", "message", middleware, fits, f" text={_show(pattern)}" if pattern else "")

    def command(self, command: str | re.Pattern[str], *, middleware: Sequence[Middleware] = ()) -> Callable[[H], H]:
        if isinstance(command, str) and not command.startswith("/"):
            raise ValueError("slash commands start with '/'")
        return self._register("command", command, middleware)

    def action(
        self,
        action_id: str | re.Pattern[str] | None = None,
        *,
        block_id: str | re.Pattern[str] | None = None,
        middleware: Sequence[Middleware] = (),
    ) -> Callable[[H], H]:
        """`block_actions` by `action_id` and/or `block_id` (strings or regular expressions)."""
        return self._action("action", action_id, block_id, middleware)

    def options(
        self,
        action_id: str | re.Pattern[str] | None = None,
        *,
        block_id: str | re.Pattern[str] | None = None,
        middleware: Sequence[Middleware] = (),
    ) -> Callable[[H], H]:
        """External select `block_suggestion` by `action_id` / `block_id`; return `Options` or `OptionGroups`."""
        return self._action("options", action_id, block_id, middleware)

    def _action(self, group: str, action_id: Key, block_id: Key, middleware: Sequence[Middleware]) -> Callable[[H], H]:
        if block_id is None:
            return self._register(group, action_id, middleware)

        def in_block(ctx: Any) -> bool:
            payload = ctx.envelope.payload
            items = payload.get("actions") if group == "action" else [payload]
            return any(
                isinstance(item, dict)
                and _matches(action_id, item.get("action_id"))
                and _matches(block_id, item.get("block_id"))
                for item in items or []
            )

        return self._register(group, action_id, middleware, in_block, f" block_id={_show(block_id)}")

    def view(self, callback_id: str | re.Pattern[str], *, middleware: Sequence[Middleware] = ()) -> Callable[[H], H]:
        """`view_submission` and `view_closed` by `callback_id`."""
        return self._register("view", callback_id, middleware)

    def shortcut(
        self, callback_id: str | re.Pattern[str], *, middleware: Sequence[Middleware] = ()
    ) -> Callable[[H], H]:
        """Global and message shortcuts by `callback_id`."""
        return self._register("shortcut", callback_id, middleware)

    async def post(
        self,
        channel: Any,
        text: str | None = None,
        *,
        blocks: Sequence[Mapping[str, Any]] | None = None,
        app: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Proactive: chat.postMessage to a channel id or a stored Slack `ConversationReference`, with the bot
        token of `app` (one of several apps, `RELAYBUS_SLACK_APPS`), else of the reference's app, else the
        single app's."""
        from functions.state.proactive import post

        client = self._bot.clients.slack_for(_app_of(channel, app))
        return await post(client, channel, text, blocks=blocks, **extra)

    def find(self, ctx: Any) -> list[Listener]:
        envelope: Envelope = ctx.envelope
        payload = envelope.payload
        if envelope.kind is Kind.EVENTS_API:
            event = payload.get("event")
            return self._registry.candidates("event", _str(event.get("type")) if isinstance(event, dict) else None)
        if envelope.kind is Kind.SLASH_COMMANDS:
            return self._registry.candidates("command", _str(payload.get("command")))
        if envelope.kind is Kind.INTERACTIVE:
            kind = payload.get("type")
            if kind == "block_actions":
                found: list[Listener] = []
                for action in payload.get("actions") or []:
                    if isinstance(action, dict):
                        found.extend(
                            listener
                            for listener in self._registry.candidates("action", _str(action.get("action_id")))
                            if listener not in found
                        )
                return sorted(found, key=lambda listener: listener.seq)
            if kind == "block_suggestion":
                return self._registry.candidates("options", _str(payload.get("action_id")))
            if kind in ("view_submission", "view_closed"):
                view = payload.get("view")
                return self._registry.candidates(
                    "view", _str(view.get("callback_id")) if isinstance(view, dict) else None
                )
            if kind in ("shortcut", "message_action"):
                return self._registry.candidates("shortcut", _str(payload.get("callback_id")))
        return []


class TeamsHandlers(_Handlers):
    """`@bot.teams.…` decorators: message (bare or with a text matcher), activity, invoke, conversation_update."""

    def message(
        self,
        handler_or_text: Any = None,
        *,
        conversation_type: str | None = None,
        middleware: Sequence[Middleware] = (),
    ) -> Any:
        """`@bot.teams.message` (every message) or `@bot.teams.message("text" | re.compile(...),
        conversation_type="personal"|"groupChat"|"channel")`."""
        if callable(handler_or_text) and not isinstance(handler_or_text, re.Pattern):
            return self._register("activity", "message")(handler_or_text)
        text: str | re.Pattern[str] | None = handler_or_text
        pattern = re.compile(re.escape(text)) if isinstance(text, str) else text

        def fits(ctx: Any) -> re.Match[str] | bool:
            if conversation_type is not None and ctx.activity.conversation_type != conversation_type:
                return False
            if pattern is None:
                return True
            found = pattern.search(ctx.text(strip_mentions=True))
            if found:
                ctx.extras["matches"] = found.groups() or (found.group(0),)
            return found or False

        detail = (f" text={_show(pattern)}" if pattern else "") + (
            f" conversation_type={conversation_type}" if conversation_type else ""
        )
        return self._register("activity", "message", middleware, fits, detail)

    def activity(
        self,
        activity_type: str | re.Pattern[str],
        *,
        conversation_type: str | None = None,
        middleware: Sequence[Middleware] = (),
    ) -> Callable[[H], H]:
        return self._register("activity", activity_type, middleware, *self._conversation(conversation_type))

    def invoke(
        self,
        name: str | re.Pattern[str],
        *,
        conversation_type: str | None = None,
        middleware: Sequence[Middleware] = (),
    ) -> Callable[[H], H]:
        """Invokes by name (`adaptiveCard/action`, `composeExtension/query`, …); return an answer
        (`functions.responses`) to fill the invoke response."""
        return self._register("invoke", name, middleware, *self._conversation(conversation_type))

    @staticmethod
    def _conversation(conversation_type: str | None) -> tuple[Callable[[Any], bool] | None, str]:
        if conversation_type is None:
            return None, ""

        def fits(ctx: Any) -> bool:
            return bool(ctx.activity.conversation_type == conversation_type)

        return fits, f" conversation_type={conversation_type}"

    async def send_to(self, ref: Any, activity: str | Mapping[str, Any]) -> dict[str, Any]:
        """Proactive: send into the conversation of a stored `ConversationReference`, as the bot it belongs to
        (`ref.app`: one of several bots, `RELAYBUS_TEAMS_BOTS`)."""
        from functions.state.proactive import send_to

        return await send_to(self._bot.clients.teams_for(_app_of(ref, None)), ref, activity)

    async def create_conversation(
        self,
        service_url: str,
        tenant_id: str,
        user_id: str,
        bot_id: str,
        *,
        activity: str | Mapping[str, Any] | None = None,
        app: str | None = None,
    ) -> Any:
        """Proactive: a new 1:1 conversation with a user (who has the bot installed); returns its reference.
        `app`: which of several bots (`RELAYBUS_TEAMS_BOTS`) creates it."""
        from functions.state.proactive import create_conversation

        return await create_conversation(
            self._bot.clients.teams_for(app), service_url, tenant_id, user_id, bot_id, activity=activity, app=app
        )

    async def personal_conversation(self, user_ref: Any) -> Any:
        """The user's remembered 1:1 conversation, created (and remembered) when there is none yet."""
        from functions.state.proactive import personal_conversation

        client = self._bot.clients.teams_for(_app_of(user_ref, None))
        return await personal_conversation(self._bot.clients.state, client, user_ref)

    def find(self, ctx: Any) -> list[Listener]:
        envelope: Envelope = ctx.envelope
        activity = envelope.payload
        if envelope.kind is Kind.INVOKE or activity.get("type") == "invoke":
            return self._registry.candidates("invoke", _str(activity.get("name")))
        return self._registry.candidates("activity", _str(activity.get("type")))


def is_self_event(envelope: Envelope) -> bool:
    """An event the bot caused itself: its own Slack messages (`bot_id` of this app, or the bot user of the
    app's authorization), its own Teams activities (`from.id` is the bot, the recipient)."""
    payload = envelope.payload
    if envelope.platform is Platform.SLACK and envelope.kind is Kind.EVENTS_API:
        event = payload.get("event")
        if not isinstance(event, dict):
            return False
        app_id = payload.get("api_app_id")
        profile = event.get("bot_profile")
        if (
            event.get("bot_id")
            and app_id
            and (event.get("app_id") == app_id or (isinstance(profile, dict) and profile.get("app_id") == app_id))
        ):
            return True
        auths = payload.get("authorizations")
        if isinstance(auths, list) and auths and isinstance(auths[0], dict) and auths[0].get("is_bot"):
            bot_user = auths[0].get("user_id")
            return bool(bot_user) and event.get("user") == bot_user and event.get("type") != "app_mention"
        return False
    if envelope.platform in (Platform.TEAMS, Platform.DIRECTLINE):
        sender, recipient = payload.get("from"), payload.get("recipient")
        if isinstance(sender, dict) and isinstance(recipient, dict):
            return bool(sender.get("id")) and sender.get("id") == recipient.get("id")
    return False


class Bot:
    """The handler registry the function app dispatches into.

    `Bot(ignore_self=True)`: events the bot caused itself are completed without running a listener (a bot
    that answers its own messages loops forever). `@bot.middleware` adds global middleware (every envelope,
    registration order, before the listeners' own); `@bot.error` sets the error handler: it receives the
    context and the exception a listener raised; what it returns is the answer and the message completes,
    and if it raises, the message is retried (settlement signals — `DeadLetterError`, `Retry`,
    `RecipientGone`, `UnsafeReplyTarget` — never reach it).
    """

    def __init__(self, *, ignore_self: bool = True, remember_conversations: bool = True) -> None:
        self._seq = 0
        self.slack = SlackHandlers(self)
        self.teams = TeamsHandlers(self)
        self.ignore_self = ignore_self
        self.remember_conversations = remember_conversations
        """Store each envelope's conversation reference (for proactive messages) before the listeners run."""
        self._middleware: list[Middleware] = []
        self._error: ErrorHandler | None = None
        self._clients: ReplyClients | None = None

    def use(self, clients: ReplyClients) -> None:
        """The reply clients (and state store) proactive sends use; `register_routes` sets them."""
        self._clients = clients

    @property
    def clients(self) -> ReplyClients:
        if self._clients is None:
            from functions.settings import FunctionSettings

            self._clients = ReplyClients(FunctionSettings.from_env())
        return self._clients

    @property
    def state(self) -> StateStore:
        """The state store (for timer-triggered functions and anything outside a handler)."""
        return self.clients.state

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def middleware(self, fn: Middleware) -> Middleware:
        self._middleware.append(fn)
        return fn

    def error(self, fn: ErrorHandler) -> ErrorHandler:
        self._error = fn
        return fn

    def find(self, ctx_or_envelope: Any) -> list[Handler]:
        """The handlers a context (or an envelope) goes to, in registration order, their conditions applied."""
        ctx = ctx_or_envelope if isinstance(ctx_or_envelope, Context) else _bare_context(ctx_or_envelope)
        return [listener.handler for listener in self._listeners_for(ctx.specialised())]

    def _listeners_for(self, ctx: Context) -> list[Listener]:
        platform = ctx.envelope.platform
        if platform is Platform.SLACK:
            candidates = self.slack.find(ctx)
        elif platform in (Platform.TEAMS, Platform.DIRECTLINE):
            candidates = self.teams.find(ctx)
        else:
            return []
        return [listener for listener in candidates if listener.test is None or listener.test(ctx)]

    async def dispatch(self, ctx: Context) -> Dispatched:
        """Run the listeners for `ctx.envelope` in registration order, through the middleware. The first
        answer returned is the envelope's answer; a later one is logged and ignored. Falsy when nothing ran."""
        ctx = ctx.specialised()
        envelope = ctx.envelope
        if self.ignore_self and is_self_event(envelope):
            log.info("ignoring the bot's own event platform=%s dedupe_key=%s", envelope.platform, envelope.dedupe_key)
            return Dispatched(False)
        if self.remember_conversations:
            await _remember(ctx)
        listeners = self._listeners_for(ctx)
        if not listeners:
            log.info(
                "no handler for platform=%s kind=%s event_type=%s dedupe_key=%s: completing",
                envelope.platform,
                envelope.kind,
                envelope.event_type,
                envelope.dedupe_key,
            )
            return Dispatched(False)
        reached: list[bool] = []

        async def run_listeners() -> Any:
            reached.append(True)
            response: Any = None
            for listener in listeners:
                answer = await _through(listener.middleware, ctx, partial(listener.handler, ctx))
                if answer is None:
                    continue
                if response is None:
                    response = answer
                else:
                    log.error(
                        "%s.%s returned a second answer for dedupe_key=%s: ignored (the first listener's stands)",
                        listener.handler.__module__,
                        listener.handler.__qualname__,
                        envelope.dedupe_key,
                    )
            return response

        try:
            response = await _through(self._middleware, ctx, run_listeners)
        except SETTLEMENT_ERRORS:
            raise
        except Exception as exc:
            if self._error is None:
                raise
            ctx.log.warning("a listener raised %s: the error handler takes it", type(exc).__name__)
            return Dispatched(True, await self._error(ctx, exc))
        if not reached:
            log.info("middleware stopped dedupe_key=%s before the listeners", envelope.dedupe_key)
        return Dispatched(True, response)

    def discover(self, package: str) -> list[str]:
        """Import every module of `package` (its handlers register themselves); returns their names.

        Modules are imported in name order; those whose name starts with `_` are skipped (helpers the
        handler modules import themselves). A subpackage is imported as a package: its `__init__` may
        call `bot.discover(__name__)` for its own modules. Raises `HandlerLoadError`, one line naming the
        file and line that failed (`handlers/billing.py line 3: NameError: ...`), for the first module
        that cannot be imported."""
        root = importlib.import_module(package)
        dirs = [Path(p).resolve() for p in getattr(root, "__path__", [])]
        found: list[str] = []
        for info in sorted(pkgutil.iter_modules([str(d) for d in dirs]), key=lambda m: m.name):
            if info.name.startswith("_"):
                continue
            name = f"{package}.{info.name}"
            if name not in sys.modules:
                try:
                    importlib.import_module(name)
                except Exception as exc:
                    module_file = dirs[0] / (f"{info.name}/__init__.py" if info.ispkg else f"{info.name}.py")
                    raise HandlerLoadError(_where(exc, module_file, dirs)) from None
            found.append(name)
        return found

    def describe(self) -> Mapping[str, list[tuple[str, str]]]:
        """What is registered (for the dev banner and tests)."""
        return {"slack": self.slack.registered(), "teams": self.teams.registered()}

    def listeners(self) -> list[str]:
        """One line per listener, `platform group key -> module.function`, sorted by key, registration order
        within a key."""
        lines = []
        for platform, handlers in (("slack", self.slack), ("teams", self.teams)):
            for listener in handlers.listeners():
                handler = listener.handler
                lines.append(f"{platform} {listener.describe()} -> {handler.__module__}.{handler.__qualname__}")
        return lines


def describe(bot: Bot) -> Mapping[str, list[tuple[str, str]]]:
    return bot.describe()


async def _remember(ctx: Context) -> None:
    """Keep the conversation reference; a reference the allowlist refuses dead-letters (`ReferenceNotAllowed`,
    an `UnsafeReplyTarget`); a state store that fails is a warning, never a failed message."""
    from functions.state import StateError
    from functions.state.references import ReferenceNotAllowed, remember

    try:
        await remember(ctx.clients.state, ctx.envelope, allowed_hosts=ctx.settings.service_url_hosts)
    except ReferenceNotAllowed:
        raise
    except StateError as exc:
        ctx.log.warning("could not keep the conversation reference: %s", exc)


async def _through(middleware: Sequence[Middleware], ctx: Any, last: Next) -> Any:
    """Run `last` behind `middleware` (first registered runs first)."""
    if not middleware:
        return await last()

    async def call(index: int) -> Any:
        if index == len(middleware):
            return await last()
        return await middleware[index](ctx, lambda: call(index + 1))

    return await call(0)


def _bare_context(envelope: Envelope) -> Context:
    from functions.settings import FunctionSettings

    settings = FunctionSettings()
    return Context(envelope, settings, ReplyClients(settings))


def _where(exc: Exception, module_file: Path, package_dirs: list[Path]) -> str:
    """`cannot load handlers: handlers/foo.py line 3: NameError: name 'x' is not defined`, on one line.

    The place is where the import failed inside the package (the deepest frame in one of its files; a
    syntax error's own file and line), else the module's file; paths are shown from the package's parent."""
    where: tuple[Path, int | None] = (module_file, None)
    if isinstance(exc, SyntaxError) and exc.filename:
        where = (Path(exc.filename).resolve(), exc.lineno)
        problem = exc.msg
    else:
        for frame in reversed(traceback.extract_tb(exc.__traceback__)):
            if frame.filename.startswith("<"):
                continue
            path = Path(frame.filename).resolve()
            if any(path.is_relative_to(d) for d in package_dirs):
                where = (path, frame.lineno)
                break
        problem = str(exc)
    path, line = where
    base = package_dirs[0].parent if package_dirs else Path.cwd()
    shown = path.relative_to(base).as_posix() if path.is_relative_to(base) else str(path)
    at = f" line {line}" if line else ""
    text = " ".join(redact(problem).split())[:300]
    return f"cannot load handlers: {shown}{at}: {type(exc).__name__}" + (f": {text}" if text else "")


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _app_of(target: Any, app: str | None) -> str | None:
    """The app a proactive send goes out as: the one asked for, else the reference's, else None (the single app)."""
    if app is not None:
        return app
    found = getattr(target, "app", None)
    return found if isinstance(found, str) else None
