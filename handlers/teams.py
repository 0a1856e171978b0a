"""Example Teams handlers: a message answered as a reply, and an Adaptive Card action.

Edit these to build your bot. `ctx.reply(...)`, `ctx.send(...)`, `ctx.update(...)`, `ctx.typing()`,
`ctx.send_card(card)` go through the Bot Connector (`functions.teams_api`). Invokes that answer inside the
completion (message extensions, `Action.Execute` with a refreshed card) return a typed answer: see
`handlers/tickets.py`.
"""

from __future__ import annotations

from typing import Any

from functions import TeamsContext
from handlers import bot


@bot.teams.message
async def echo(ctx: TeamsContext) -> None:
    """Answer every message as a reply in the same conversation."""
    text = ctx.text(strip_mentions=True)
    ctx.log.info("teams message of %d characters", len(text))
    await ctx.reply(f"You said: {text}" if text else "Hello!")


@bot.teams.invoke("adaptiveCard/action")
async def card_action(ctx: TeamsContext) -> None:
    """An Adaptive Card `Action.Execute`: say what was chosen and with which data."""
    value = ctx.activity.value
    action: dict[str, Any] = value.get("action", {}) if isinstance(value, dict) else {}
    verb = str(action.get("verb") or "unknown")
    if verb == "ackTicket":
        return  # answered by handlers/tickets.py with a refreshed card
    data = action.get("data") if isinstance(action.get("data"), dict) else {}
    ctx.log.info("adaptive card action %s", verb)
    await ctx.reply(f"Action '{verb}' received with {len(data or {})} field(s).")
