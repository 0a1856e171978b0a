"""Example Teams handlers: a message answered as a reply, and an Adaptive Card action.

Edit these to build your bot. Replies go through `ctx.teams` (`functions.teams_api.BotConnectorClient`):
`reply(activity, text_or_activity)`, `send`, `update`, `delete`, `typing`.

Invokes (Adaptive Card `Action.Execute`) are acknowledged to Teams by the worker with status 200 and an
empty body once queued: the card keeps its current state, and the handler answers in the conversation
(or replaces the card with `ctx.teams.update`).
"""

from __future__ import annotations

from typing import Any

from functions import Context
from handlers import bot


@bot.teams.message
async def echo(ctx: Context) -> None:
    """Answer every message as a reply in the same conversation."""
    text = str(ctx.activity.get("text") or "").strip()
    ctx.log.info("teams message of %d characters", len(text))
    await ctx.teams.reply(ctx.activity, f"You said: {text}" if text else "Hello!")


@bot.teams.invoke("adaptiveCard/action")
async def card_action(ctx: Context) -> None:
    """An Adaptive Card `Action.Execute`: say what was chosen and with which data."""
    value = ctx.activity.get("value")
    action: dict[str, Any] = value.get("action", {}) if isinstance(value, dict) else {}
    verb = str(action.get("verb") or "unknown")
    data = action.get("data") if isinstance(action.get("data"), dict) else {}
    ctx.log.info("adaptive card action %s", verb)
    await ctx.teams.reply(ctx.activity, f"Action '{verb}' received with {len(data or {})} field(s).")
