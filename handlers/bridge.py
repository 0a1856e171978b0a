"""The example bridge: a Direct Line bot (a Copilot Studio agent, any Bot Framework bot) in Slack and Teams.

Off unless `DIRECTLINE_SECRET` is set for the function app: without it this module registers nothing, and the
example bot behaves as before. With it:

- a Slack message that mentions the bot (`app_mention`) goes to the agent as the Slack user, in one agent
  conversation per Slack thread (a mention outside a thread starts one on the message);
- in Teams, every message (and a card's `Action.Submit`, which Teams sends as a message with a `value`) goes to
  the agent, one agent conversation per Teams conversation;
- the agent's answers arrive on the `directline_activities` route (the worker holds the conversation's socket;
  late and proactive answers arrive the same way, whenever they come): posted in the same Slack thread (text,
  Adaptive Cards as Block Kit where they map, suggested actions as buttons; typing as the thread's status), or
  sent into the Teams conversation as they are (cards pass through);
- a click on one of those Slack buttons goes back to the agent as a `value` message (an `imBack` as its text).

Answers that do not fit Slack (too long, too many blocks, card inputs) are cut, logged with the reason and
counted in `stats`; the conversation goes on. The example echo handlers (`handlers/slack.py`, `handlers/teams.py`)
still answer too: remove them when the agent is the bot.

Direct Line activities reach every `@bot.teams` listener (the Bot Framework group); the bridge's middleware
takes them first, so no Teams handler mistakes an agent's answer for a Teams message.
"""

from __future__ import annotations

import asyncio
import logging
import re
import weakref
from collections import Counter
from typing import Any

from functions import Bot, SlackContext, TeamsContext
from functions.context import Context
from functions.directline import (
    ChatUser,
    DirectLineBridgeSettings,
    DirectLineClient,
    chat_user,
    slack_button_activity,
    slack_key,
    teams_key,
    to_slack,
)
from functions.slack_api import SlackApiError
from handlers import bot

log = logging.getLogger(__name__)

TYPING_STATUS = "is typing…"
SLACK, TEAMS, DIRECTLINE = "slack", "teams", "directline"  # `Envelope.platform` values
_ANY = re.compile(r".*")


class Bridge:
    """The bridge's handlers, over one Direct Line client per event loop."""

    def __init__(self, settings: DirectLineBridgeSettings) -> None:
        self.settings = settings
        self.stats: Counter[str] = Counter()
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, DirectLineClient] = (
            weakref.WeakKeyDictionary()
        )

    def client(self, ctx: Context) -> DirectLineClient:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = self._clients[loop] = DirectLineClient(self.settings, ctx.clients.state)
        return client

    # --- chat → agent ---------------------------------------------------------------------------------------

    async def slack_mention(self, ctx: SlackContext) -> None:
        event = ctx.event
        channel, user = ctx.channel_id, event.user
        if not channel or not user or not event.ts:
            return
        team = ctx.envelope.tenant
        thread = event.thread_ts or event.ts
        chat = {"platform": "slack", "team": team, "channel": channel, "thread_ts": thread}
        await self.client(ctx).post(
            slack_key(team, channel, thread),
            user=chat_user("slack", team, user),
            text=ctx.text(strip_mentions=True),
            chat=chat,
        )
        self.stats["to_agent"] += 1

    async def slack_button(self, ctx: SlackContext) -> None:
        payload = ctx.payload
        raw = payload.get("container")
        container: dict[str, Any] = raw if isinstance(raw, dict) else {}
        channel = ctx.channel_id
        thread = container.get("thread_ts") or container.get("message_ts")
        user = ctx.user_id
        if not channel or not isinstance(thread, str) or not user:
            return
        team = ctx.envelope.tenant or _team(payload)
        for action in payload.get("actions") or []:
            fields = slack_button_activity(action) if isinstance(action, dict) else None
            if fields is None:
                continue
            chat = {"platform": "slack", "team": team, "channel": channel, "thread_ts": thread}
            await self.client(ctx).post(
                slack_key(team, channel, thread),
                user=chat_user("slack", team, user),
                text=fields.get("text"),
                value=fields.get("value"),
                chat=chat,
            )
            self.stats["clicks"] += 1

    async def teams_message(self, ctx: TeamsContext) -> None:
        activity = ctx.envelope.payload
        raw = activity.get("from")
        sender: dict[str, Any] = raw if isinstance(raw, dict) else {}
        who = sender.get("aadObjectId") or sender.get("id")
        if not isinstance(who, str):
            return
        conversation = ctx.conversation_id
        chat = {
            "platform": "teams",
            "service_url": ctx.service_url,
            "conversation_id": conversation,
            "tenant": ctx.envelope.tenant,
        }
        text = ctx.text(strip_mentions=True)
        user = ChatUser(chat_user("teams", ctx.envelope.tenant, who).id, sender.get("name"))
        await self.client(ctx).post(
            teams_key(conversation),
            user=user,
            text=text or None,
            value=activity.get("value"),
            attachments=[a for a in activity.get("attachments") or [] if isinstance(a, dict) and "content" in a],
            chat=chat,
        )
        self.stats["to_agent"] += 1

    # --- agent → chat ---------------------------------------------------------------------------------------------

    async def agent_answered(self, ctx: TeamsContext) -> None:
        """An activity of the agent (the `directline_activities` route): post it where its conversation came from."""
        activity = ctx.envelope.payload
        conversation_id = ctx.envelope.conversation_key or ""
        chat = await self.client(ctx).chat_for(conversation_id) if conversation_id else None
        if chat is None:
            self.stats["unknown_conversation"] += 1
            log.warning("an agent activity for a conversation the bridge did not start: dropped")
            return
        if chat.get("platform") == "slack":
            await self._to_slack(ctx, chat, activity)
        elif chat.get("platform") == "teams":
            await self._to_teams(ctx, chat, activity)

    async def _to_slack(self, ctx: Context, chat: dict[str, Any], activity: dict[str, Any]) -> None:
        channel, thread = str(chat.get("channel") or ""), str(chat.get("thread_ts") or "")
        kind = activity.get("type")
        if kind == "typing":
            try:
                await ctx.slack.call(
                    "assistant.threads.setStatus", channel_id=channel, thread_ts=thread, status=TYPING_STATUS
                )
                self.stats["typing"] += 1
            except SlackApiError as exc:  # not an assistant thread, or the scope is missing: not worth a retry
                log.info("typing status not shown in Slack: %s", exc.error)
            return
        message = to_slack(activity)
        if message is None:
            self.stats[f"skipped_{str(kind)[:20]}"] += 1
            return
        for problem in message.problems:
            self.stats["too_large" if "cut" in problem else "not_shown"] += 1
            log.warning("agent answer adapted for Slack: %s", problem)
        await ctx.slack.post_message(channel, message.text, blocks=message.blocks or None, thread_ts=thread)
        self.stats["to_slack"] += 1

    async def _to_teams(self, ctx: Context, chat: dict[str, Any], activity: dict[str, Any]) -> None:
        service_url, conversation = str(chat.get("service_url") or ""), str(chat.get("conversation_id") or "")
        kind = activity.get("type")
        if kind == "typing":
            await ctx.teams.typing(service_url, conversation)
            return
        if kind != "message":
            self.stats[f"skipped_{str(kind)[:20]}"] += 1
            return
        keep = ("type", "text", "textFormat", "attachments", "attachmentLayout", "suggestedActions", "summary")
        await ctx.teams.send(service_url, conversation, {k: activity[k] for k in keep if k in activity})
        self.stats["to_teams"] += 1


def install(target: Bot, settings: DirectLineBridgeSettings) -> Bridge:
    """Register the bridge's listeners and middleware on `target`."""
    bridge = Bridge(settings)

    async def slack_only(ctx: Any, next_: Any) -> Any:
        return await next_() if ctx.envelope.platform == SLACK else None

    async def teams_only(ctx: Any, next_: Any) -> Any:
        return await next_() if ctx.envelope.platform == TEAMS else None

    @target.middleware
    async def agent_answers_first(ctx: Any, next_: Any) -> Any:
        if ctx.envelope.platform == DIRECTLINE:
            await bridge.agent_answered(ctx)
            return None  # no Teams listener sees an agent's activity
        return await next_()

    @target.slack.event("app_mention", middleware=[slack_only])
    async def mention_to_agent(ctx: SlackContext) -> None:
        await bridge.slack_mention(ctx)

    @target.slack.action(re.compile(r"^relaybus\.dl:\d"))
    async def button_to_agent(ctx: SlackContext) -> None:
        await bridge.slack_button(ctx)

    @target.teams.message(middleware=[teams_only])  # type: ignore[untyped-decorator]
    async def teams_to_agent(ctx: TeamsContext) -> None:
        await bridge.teams_message(ctx)

    @target.teams.activity(_ANY)
    async def agent_activity(ctx: TeamsContext) -> None:
        """Found for every Direct Line activity so that dispatch reaches the middleware above (which takes it)."""

    return bridge


def _team(payload: dict[str, Any]) -> str | None:
    team = payload.get("team")
    value = team.get("id") if isinstance(team, dict) else None
    return value if isinstance(value, str) else None


SETTINGS = DirectLineBridgeSettings.from_env()
BRIDGE = install(bot, SETTINGS) if SETTINGS is not None else None
