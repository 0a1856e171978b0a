"""Example Slack handlers: edit these to build your bot.

- `app_mention`: answered in the message's thread (chat.postMessage with thread_ts);
- `/ticket`: answered through the command's `response_url`, with an "Acknowledge" button;
- the button (`block_actions`, action_id `ack_button`): updates the message it is on.

The worker already acked Slack within its 3 s window once the envelope was durable, so these handlers
can take their time; they reply through the Web API (`ctx.slack`, a `functions.slack_api.SlackWebClient`).
An exception makes Service Bus redeliver the message; raise `DeadLetterError` for hopeless input.
"""

from __future__ import annotations

from typing import Any

from functions import Context, DeadLetterError
from handlers import bot

ACK_BUTTON = "ack_button"


@bot.slack.event("app_mention")
async def answer_mention(ctx: Context) -> None:
    event = ctx.event
    channel = event.get("channel")
    if not isinstance(channel, str):
        raise DeadLetterError("NoChannel", "app_mention event without a channel")
    text = str(event.get("text", ""))
    said = text.split(">", 1)[1].strip() if text.startswith("<@") and ">" in text else text
    await ctx.slack.post_message(
        channel,
        f"Hi <@{event.get('user', 'there')}>, you said: {said}" if said else f"Hi <@{event.get('user', 'there')}>!",
        thread_ts=event.get("thread_ts") or event.get("ts"),
    )
    ctx.log.info("answered app_mention in %s", channel)


@bot.slack.command("/ticket")
async def open_ticket(ctx: Context) -> None:
    payload = ctx.payload
    response_url = payload.get("response_url")
    if not isinstance(response_url, str):
        raise DeadLetterError("NoResponseUrl", "slash command without a response_url")
    summary = str(payload.get("text") or "").strip() or "(no description)"
    user = payload.get("user_id", "someone")
    text = f"Ticket opened by <@{user}>: {summary}"
    await ctx.slack.respond(response_url, text, response_type="in_channel", blocks=ticket_blocks(text))
    ctx.log.info("ticket opened for %s", user)


@bot.slack.action(ACK_BUTTON)
async def acknowledge(ctx: Context) -> None:
    payload = ctx.payload
    user = (payload.get("user") or {}).get("id", "someone")
    container = payload.get("container") or {}
    text = f"Acknowledged by <@{user}>"
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": f":white_check_mark: {text}"}}]
    channel = container.get("channel_id") or (payload.get("channel") or {}).get("id")
    ts = container.get("message_ts")
    if container.get("is_ephemeral") or not channel or not ts:
        # ephemeral messages cannot be edited with chat.update: replace them through the response_url
        await ctx.slack.respond(str(payload["response_url"]), text, blocks=blocks, replace_original=True)
    else:
        await ctx.slack.update_message(str(channel), str(ts), text, blocks=blocks)
    ctx.log.info("acknowledged by %s", user)


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
