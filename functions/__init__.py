"""The function side's public face: everything a bot author (and `function_app.py`) imports.

    from functions import Bot, Context, DeadLetterError

    bot = Bot()

    @bot.slack.event("app_mention")
    async def hello(ctx: Context) -> None:
        await ctx.slack.post_message(ctx.event["channel"], "hi", thread_ts=ctx.event["ts"])

What lives here (and ships in the function app, see `.funcignore`):

- `bot`: `Bot` (registration, several listeners per key, discovery of the handlers package), `HandlerLoadError`;
- `context`: `Context`, `ReplyClients` (one Slack and one Bot Connector client per process);
- `triggers`: one Service Bus–triggered function per route, and the settlement rules (`process_message`);
- `settings`: `FunctionSettings`, validated when the app starts;
- `slack_api`: `SlackWebClient` (Slack Web API and response_url replies);
- `teams_api`: `BotConnectorClient` (Bot Connector replies; not the worker's socket connectors);
- `reply_urls`: how a `response_url` or `serviceUrl` from a message is parsed before it is checked;
- `logs`: `install_redaction()`, so no record the function app logs carries a token;
- `python -m functions settings [--file local.settings.json]`: check the settings (`__main__`).

The reply clients are imported on first use (attribute access here, or `ctx.slack` / `ctx.teams`), so that
importing this package, and the function app, stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from functions.bot import Bot, Handler, HandlerLoadError
from functions.context import Context, ReplyClients, SlackContext, TeamsContext
from functions.settings import FunctionSettings
from shared.errors import ConfigurationError, DeadLetterError, RecipientGone, RelaybusError, UnsafeReplyTarget

if TYPE_CHECKING:
    from functions.errors import Retry
    from functions.slack_api import SlackApiError, SlackReplyGone, SlackWebClient
    from functions.teams_api import BotConnectorClient, BotConnectorError, MessageWritesBlocked
    from functions.triggers import register_routes

__all__ = [
    "Bot",
    "BotConnectorClient",
    "BotConnectorError",
    "ConfigurationError",
    "Context",
    "DeadLetterError",
    "FunctionSettings",
    "Handler",
    "HandlerLoadError",
    "MessageWritesBlocked",
    "RecipientGone",
    "RelaybusError",
    "ReplyClients",
    "Retry",
    "SlackApiError",
    "SlackContext",
    "SlackReplyGone",
    "SlackWebClient",
    "TeamsContext",
    "UnsafeReplyTarget",
    "register_routes",
]

_LAZY = {
    "SlackApiError": "functions.slack_api",
    "SlackReplyGone": "functions.slack_api",
    "SlackWebClient": "functions.slack_api",
    "BotConnectorClient": "functions.teams_api",
    "BotConnectorError": "functions.teams_api",
    "MessageWritesBlocked": "functions.teams_api",
    "register_routes": "functions.triggers",
    "Retry": "functions.errors",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'functions' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
