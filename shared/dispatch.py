"""Bot handler registration and dispatch (the function side).

Users register handlers with decorators on a `Bot` (see `handlers/`):

    @bot.slack.event("app_mention")          # Events API, by event type
    @bot.slack.command("/ticket")            # slash commands
    @bot.slack.action("ack_button")          # block_actions, by action_id
    @bot.slack.view("ticket_modal")          # view_submission / view_closed, by callback_id
    @bot.slack.shortcut("open_ticket")       # global and message shortcuts, by callback_id
    @bot.teams.message                       # Teams message activities
    @bot.teams.activity("conversationUpdate")
    @bot.teams.invoke("adaptiveCard/action")

A handler is `async def handler(ctx: Context) -> None`. Exceptions propagate so that Service Bus
redelivers; raise `DeadLetterError` for a message that can never succeed. An envelope no handler
wants is logged and completed.

Reply clients are created on first use, one per process and event loop, so importing this module
(and the function app) stays cheap.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from shared.envelope import Envelope, Kind, Platform
from shared.settings import FunctionSettings

if TYPE_CHECKING:
    from shared.slack.web import SlackWebClient
    from shared.teams.connector import BotConnectorClient

log = logging.getLogger(__name__)

Handler = Callable[["Context"], Awaitable[None]]
H = TypeVar("H", bound=Handler)


class ReplyClients:
    """Reply clients shared by every invocation in this process (recreated if the event loop changes)."""

    def __init__(self, settings: FunctionSettings) -> None:
        self.settings = settings
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slack: SlackWebClient | None = None
        self._teams: BotConnectorClient | None = None

    def _check_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop = loop
            self._slack = None
            self._teams = None

    @property
    def slack(self) -> SlackWebClient:
        self._check_loop()
        if self._slack is None:
            from shared.slack.web import SlackWebClient

            self._slack = SlackWebClient.from_settings(self.settings)
        return self._slack

    @property
    def teams(self) -> BotConnectorClient:
        self._check_loop()
        if self._teams is None:
            from shared.teams.connector import BotConnectorClient

            self._teams = BotConnectorClient.from_settings(self.settings)
        return self._teams

    async def aclose(self) -> None:
        if self._slack is not None:
            await self._slack.aclose()
            self._slack = None
        if self._teams is not None:
            await self._teams.aclose()
            self._teams = None


@dataclass
class Context:
    """What a handler gets: the envelope, the settings, a logger with the envelope's ids, reply clients."""

    envelope: Envelope
    settings: FunctionSettings
    clients: ReplyClients
    message_id: str | None = None
    delivery_count: int = 1
    log: logging.LoggerAdapter[logging.Logger] = field(init=False)

    def __post_init__(self) -> None:
        self.log = logging.LoggerAdapter(
            logging.getLogger("handlers"),
            {"dedupe_key": self.envelope.dedupe_key, "message_id": self.message_id},
        )

    @property
    def payload(self) -> dict[str, Any]:
        """The platform payload as received (Slack `payload`, Bot Framework activity)."""
        return self.envelope.payload

    @property
    def event(self) -> dict[str, Any]:
        """Slack Events API: the inner `event` object (empty for other kinds)."""
        event = self.envelope.payload.get("event")
        return event if isinstance(event, dict) else {}

    @property
    def activity(self) -> dict[str, Any]:
        """Teams: the Bot Framework activity."""
        return self.envelope.payload

    @property
    def slack(self) -> SlackWebClient:
        return self.clients.slack

    @property
    def teams(self) -> BotConnectorClient:
        return self.clients.teams


class _Registry:
    def __init__(self, what: str) -> None:
        self._what = what
        self._handlers: dict[tuple[str, str], Handler] = {}

    def add(self, group: str, key: str, handler: Handler) -> None:
        if (group, key) in self._handlers:
            raise ValueError(f"{self._what}: a handler for {group} {key!r} is already registered")
        self._handlers[(group, key)] = handler

    def get(self, group: str, key: str | None) -> Handler | None:
        if key is None:
            return None
        return self._handlers.get((group, key))

    def keys(self) -> list[tuple[str, str]]:
        return sorted(self._handlers)


class SlackHandlers:
    def __init__(self) -> None:
        self._registry = _Registry("slack")

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

    def find(self, envelope: Envelope) -> Handler | None:
        payload = envelope.payload
        if envelope.kind is Kind.EVENTS_API:
            event = payload.get("event")
            return self._registry.get("event", event.get("type") if isinstance(event, dict) else None)
        if envelope.kind is Kind.SLASH_COMMANDS:
            return self._registry.get("command", _str(payload.get("command")))
        if envelope.kind is Kind.INTERACTIVE:
            kind = payload.get("type")
            if kind == "block_actions":
                for action in payload.get("actions") or []:
                    found = self._registry.get("action", _str(action.get("action_id")))
                    if found is not None:
                        return found
                return None
            if kind in ("view_submission", "view_closed"):
                view = payload.get("view") or {}
                return self._registry.get("view", _str(view.get("callback_id")))
            if kind in ("shortcut", "message_action"):
                return self._registry.get("shortcut", _str(payload.get("callback_id")))
        return None

    def registered(self) -> list[tuple[str, str]]:
        return self._registry.keys()


class TeamsHandlers:
    def __init__(self) -> None:
        self._registry = _Registry("teams")

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

    def find(self, envelope: Envelope) -> Handler | None:
        activity = envelope.payload
        if envelope.kind is Kind.INVOKE or activity.get("type") == "invoke":
            return self._registry.get("invoke", _str(activity.get("name")))
        return self._registry.get("activity", _str(activity.get("type")))

    def registered(self) -> list[tuple[str, str]]:
        return self._registry.keys()


class Bot:
    """The handler registry the function app dispatches into."""

    def __init__(self) -> None:
        self.slack = SlackHandlers()
        self.teams = TeamsHandlers()

    def find(self, envelope: Envelope) -> Handler | None:
        if envelope.platform is Platform.SLACK:
            return self.slack.find(envelope)
        if envelope.platform in (Platform.TEAMS, Platform.DIRECTLINE):
            return self.teams.find(envelope)
        return None

    async def dispatch(self, ctx: Context) -> bool:
        """Run the handler for `ctx.envelope`; False when no handler wants it."""
        handler = self.find(ctx.envelope)
        if handler is None:
            log.info(
                "no handler for platform=%s kind=%s event_type=%s dedupe_key=%s: completing",
                ctx.envelope.platform,
                ctx.envelope.kind,
                ctx.envelope.event_type,
                ctx.envelope.dedupe_key,
            )
            return False
        await handler(ctx)
        return True


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def describe(bot: Bot) -> Mapping[str, list[tuple[str, str]]]:
    """What is registered (for the dev banner and tests)."""
    return {"slack": bot.slack.registered(), "teams": bot.teams.registered()}
