"""Handler registration and dispatch (the function side).

Users register handlers with decorators on a `Bot` (see `handlers/`):

    @bot.slack.event("app_mention")          # Events API, by event type
    @bot.slack.command("/ticket")            # slash commands
    @bot.slack.action("ack_button")          # block_actions, by action_id
    @bot.slack.view("ticket_modal")          # view_submission / view_closed, by callback_id
    @bot.slack.shortcut("open_ticket")       # global and message shortcuts, by callback_id
    @bot.teams.message                       # Teams message activities
    @bot.teams.activity("conversationUpdate")
    @bot.teams.invoke("adaptiveCard/action")

A handler is `async def handler(ctx: Context) -> None`. Several handlers may listen to the same key:
they run in registration order. Exceptions propagate so that Service Bus redelivers; raise
`DeadLetterError` for a message that can never succeed. An envelope no handler wants is logged and
completed.

`Bot.discover(package)` imports every module of a package (`handlers/`), so a new module is found
without editing a list; a module that cannot be imported is one `HandlerLoadError` line naming the
file and the line, not a traceback through the rest of the bot.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import sys
import traceback
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from functions.context import Context
from shared.envelope import Envelope, Kind, Platform
from shared.errors import RelaybusError
from shared.redact import redact

log = logging.getLogger(__name__)

Handler = Callable[[Context], Awaitable[Any]]
"""`async def handler(ctx) -> Response | None` (a `functions.responses.Response` answers synchronously)."""
H = TypeVar("H", bound=Handler)


@dataclass(frozen=True, slots=True)
class Dispatched:
    """What dispatch did: whether a handler ran, and the answer (the first non-None a listener returned)."""

    ran: bool
    response: Any = None

    def __bool__(self) -> bool:
        return self.ran


class HandlerLoadError(RelaybusError):
    """A module under the handlers package could not be imported; the message names the file and line."""


class _Registry:
    def __init__(self) -> None:
        self._handlers: dict[tuple[str, str], list[Handler]] = {}

    def add(self, group: str, key: str, handler: Handler) -> None:
        self._handlers.setdefault((group, key), []).append(handler)

    def get(self, group: str, key: str | None) -> list[Handler]:
        if key is None:
            return []
        return self._handlers.get((group, key), [])

    def keys(self) -> list[tuple[str, str]]:
        return sorted(self._handlers)

    def listeners(self) -> list[tuple[str, str, Handler]]:
        return [(group, key, h) for (group, key), handlers in sorted(self._handlers.items()) for h in handlers]


class SlackHandlers:
    def __init__(self) -> None:
        self._registry = _Registry()

    def _register(self, group: str, key: str) -> Callable[[H], H]:
        def decorator(handler: H) -> H:
            self._registry.add(group, key, handler)
            return handler

        return decorator

    def event(self, event_type: str) -> Callable[[H], H]:
        return self._register("event", event_type)

    def command(self, command: str) -> Callable[[H], H]:
        if not command.startswith("/"):
            raise ValueError("slash commands start with '/'")
        return self._register("command", command)

    def action(self, action_id: str) -> Callable[[H], H]:
        return self._register("action", action_id)

    def view(self, callback_id: str) -> Callable[[H], H]:
        return self._register("view", callback_id)

    def shortcut(self, callback_id: str) -> Callable[[H], H]:
        return self._register("shortcut", callback_id)

    def find(self, envelope: Envelope) -> list[Handler]:
        payload = envelope.payload
        if envelope.kind is Kind.EVENTS_API:
            event = payload.get("event")
            return self._registry.get("event", event.get("type") if isinstance(event, dict) else None)
        if envelope.kind is Kind.SLASH_COMMANDS:
            return self._registry.get("command", _str(payload.get("command")))
        if envelope.kind is Kind.INTERACTIVE:
            kind = payload.get("type")
            if kind == "block_actions":
                found: list[Handler] = []
                for action in payload.get("actions") or []:
                    if isinstance(action, dict):
                        handlers = self._registry.get("action", _str(action.get("action_id")))
                        found.extend(h for h in handlers if h not in found)
                return found
            if kind in ("view_submission", "view_closed"):
                view = payload.get("view")
                return self._registry.get("view", _str(view.get("callback_id")) if isinstance(view, dict) else None)
            if kind in ("shortcut", "message_action"):
                return self._registry.get("shortcut", _str(payload.get("callback_id")))
        return []

    def registered(self) -> list[tuple[str, str]]:
        return self._registry.keys()

    def listeners(self) -> list[tuple[str, str, Handler]]:
        return self._registry.listeners()


class TeamsHandlers:
    def __init__(self) -> None:
        self._registry = _Registry()

    def message(self, handler: H) -> H:
        self._registry.add("activity", "message", handler)
        return handler

    def activity(self, activity_type: str) -> Callable[[H], H]:
        def decorator(handler: H) -> H:
            self._registry.add("activity", activity_type, handler)
            return handler

        return decorator

    def invoke(self, name: str) -> Callable[[H], H]:
        def decorator(handler: H) -> H:
            self._registry.add("invoke", name, handler)
            return handler

        return decorator

    def find(self, envelope: Envelope) -> list[Handler]:
        activity = envelope.payload
        if envelope.kind is Kind.INVOKE or activity.get("type") == "invoke":
            return self._registry.get("invoke", _str(activity.get("name")))
        return self._registry.get("activity", _str(activity.get("type")))

    def registered(self) -> list[tuple[str, str]]:
        return self._registry.keys()

    def listeners(self) -> list[tuple[str, str, Handler]]:
        return self._registry.listeners()


class Bot:
    """The handler registry the function app dispatches into."""

    def __init__(self) -> None:
        self.slack = SlackHandlers()
        self.teams = TeamsHandlers()

    def find(self, envelope: Envelope) -> list[Handler]:
        if envelope.platform is Platform.SLACK:
            return self.slack.find(envelope)
        if envelope.platform in (Platform.TEAMS, Platform.DIRECTLINE):
            return self.teams.find(envelope)
        return []

    async def dispatch(self, ctx: Context) -> Dispatched:
        """Run the handlers for `ctx.envelope` in registration order. The first answer a listener returns is
        the envelope's answer; a later one is logged and ignored. Falsy when no handler wants the envelope."""
        handlers = self.find(ctx.envelope)
        if not handlers:
            log.info(
                "no handler for platform=%s kind=%s event_type=%s dedupe_key=%s: completing",
                ctx.envelope.platform,
                ctx.envelope.kind,
                ctx.envelope.event_type,
                ctx.envelope.dedupe_key,
            )
            return Dispatched(False)
        response: Any = None
        for handler in handlers:
            answer = await handler(ctx)
            if answer is None:
                continue
            if response is None:
                response = answer
            else:
                log.error(
                    "%s.%s returned a second answer for dedupe_key=%s: ignored (the first listener's answer stands)",
                    handler.__module__,
                    handler.__qualname__,
                    ctx.envelope.dedupe_key,
                )
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
        """One line per listener, `platform group key -> module.function`, in registration order per key."""
        lines = []
        for platform, handlers in (("slack", self.slack), ("teams", self.teams)):
            for group, key, handler in handlers.listeners():
                lines.append(f"{platform} {group} {key} -> {handler.__module__}.{handler.__qualname__}")
        return lines


def describe(bot: Bot) -> Mapping[str, list[tuple[str, str]]]:
    return bot.describe()


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
