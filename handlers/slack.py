"""Example Slack handlers: edit these to build your bot.

- `app_mention`: answered in the message's thread (`ctx.say(..., thread=True)`);
- the "Acknowledge" button (`block_actions`, action_id `ack_button`) on a ticket: updates the message it is on.

The worker already acked Slack within its 3 s window once the envelope was durable, so these handlers can
take their time; they reply through the Web API (`ctx.say`, `ctx.respond`, `ctx.client`). An exception makes
the message retry with backoff; raise `DeadLetterError` for hopeless input. Handlers that answer inside the
ack (modals, external selects, instant command answers) return a typed answer: see `handlers/tickets.py`.
"""

from __future__ import annotations

from typing import Any

from functions import SlackContext
from handlers import bot

ACK_BUTTON = "ack_button"


@bot.slack.event("app_mention")
async def answer_mention(ctx: SlackContext) -> None:
    said = ctx.text(strip_mentions=True)
    user = ctx.event.user or "there"
    await ctx.say(f"Hi <@{user}>, you said: {said}" if said else f"Hi <@{user}>!", thread=True)
    ctx.log.info("answered app_mention in %s", ctx.channel_id)


@bot.slack.action(ACK_BUTTON)
async def acknowledge(ctx: SlackContext) -> None:
    text = f"Acknowledged by <@{ctx.user_id or 'someone'}>"
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": f":white_check_mark: {text}"}}]
    container = ctx.payload.get("container") or {}
    ts = container.get("message_ts")
    if container.get("is_ephemeral") or not ctx.channel_id or not ts:
        # ephemeral messages cannot be edited with chat.update: replace them through the response_url
        await ctx.respond(text, blocks=blocks, replace_original=True)
    else:
        await ctx.client.update_message(ctx.channel_id, str(ts), text, blocks=blocks)
    ctx.log.info("acknowledged by %s", ctx.user_id)


def ticket_blocks(text: str) -> list[dict[str, Any]]:
    return [
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        {
            "type": "actions",
            "elements": [
                {
                    "type": "button",
                    "action_id": ACK_BUTTON,
                    "text": {"type": "plain_text", "text": "Acknowledge"},
                    "style": "primary",
                    "value": "ack",
                }
            ],
        },
    ]
