"""The bot-author API at Bolt's and teams.py's level: matchers, several listeners, middleware, self-events,
the error handler, typed payloads that never break a handler, and the context helpers against the sandboxes."""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest

from devstack.sandbox.slack import SlackSandbox
from devstack.sandbox.teams import TeamsSandbox
from functions import Bot, Context, DeadLetterError, FunctionSettings, ReplyClients, SlackContext, TeamsContext
from functions.models import Activity, Raw, SlashCommand, parse, strip_mentions
from shared.envelope import Envelope, Kind, Platform, utcnow
from tests.factories import slack_event, teams_message


def slack(kind: str, payload: dict[str, Any], **fields: Any) -> Envelope:
    base = slack_event().model_dump()
    return Envelope.model_validate({**base, "kind": kind, "payload": payload, **fields})


def message_event(text: str, **event: Any) -> Envelope:
    payload = {
        "type": "event_callback",
        "event_id": "Ev1",
        "api_app_id": "A1",
        "team_id": "T1",
        "event": {"type": "message", "text": text, "channel": "C1", "user": "U1", "ts": "1.1", **event},
        "authorizations": [{"team_id": "T1", "user_id": "UBOT", "is_bot": True}],
    }
    return slack("events_api", payload)


def ctx_for(envelope: Envelope, settings: FunctionSettings | None = None) -> Context:
    s = settings or FunctionSettings.from_env({})
    return Context.for_envelope(envelope, s, ReplyClients(s))


async def run(bot: Bot, envelope: Envelope) -> Any:
    return await bot.dispatch(ctx_for(envelope))


# --- matchers ---------------------------------------------------------------------------------------------


async def test_message_text_matchers_string_and_regex_with_matches() -> None:
    bot = Bot()
    seen: list[str] = []

    @bot.slack.message("hello")
    async def greeting(ctx: SlackContext) -> None:
        seen.append("hello")

    @bot.slack.message(re.compile(r"^deploy (\w+)"))
    async def deploy(ctx: SlackContext) -> None:
        seen.append(f"deploy {ctx.extras['matches'][0]}")

    assert (await run(bot, message_event("well hello there"))).ran
    assert (await run(bot, message_event("deploy billing now"))).ran
    assert not (await run(bot, message_event("nothing to see"))).ran
    # edited messages and the like (a subtype) are not plain messages
    assert not (await run(bot, message_event("hello", subtype="message_changed"))).ran
    assert seen == ["hello", "deploy billing"]


async def test_event_subtype_matcher() -> None:
    bot = Bot()
    got: list[str | None] = []

    @bot.slack.event("message", subtype="channel_join")
    async def joined(ctx: SlackContext) -> None:
        got.append(ctx.event.subtype)

    @bot.slack.event("message", subtype=None)
    async def plain(ctx: SlackContext) -> None:
        got.append("plain")

    await run(bot, message_event("x", subtype="channel_join"))
    await run(bot, message_event("y"))
    assert got == ["channel_join", "plain"]


async def test_action_view_shortcut_and_options_by_string_or_regex_and_block_id() -> None:
    bot = Bot()
    ran: list[str] = []

    @bot.slack.action(re.compile(r"^approve_\d+$"))
    async def approve(ctx: SlackContext) -> None:
        ran.append(f"action {ctx.action.action_id if ctx.action else None}")

    @bot.slack.action("vote", block_id="poll-1")
    async def vote(ctx: SlackContext) -> None:
        ran.append("vote poll-1")

    @bot.slack.view(re.compile("^ticket_"))
    async def view(ctx: SlackContext) -> None:
        ran.append(f"view {ctx.view.callback_id}")

    @bot.slack.shortcut("open_ticket")
    async def shortcut(ctx: SlackContext) -> None:
        ran.append("shortcut")

    @bot.slack.options("assignee")
    async def options(ctx: SlackContext) -> None:
        ran.append(f"options {ctx.suggestion.value}")

    await run(bot, slack("interactive", {"type": "block_actions", "actions": [{"action_id": "approve_42"}]}))
    await run(
        bot, slack("interactive", {"type": "block_actions", "actions": [{"action_id": "vote", "block_id": "poll-2"}]})
    )
    await run(
        bot, slack("interactive", {"type": "block_actions", "actions": [{"action_id": "vote", "block_id": "poll-1"}]})
    )
    await run(bot, slack("interactive", {"type": "view_submission", "view": {"callback_id": "ticket_modal"}}))
    await run(bot, slack("interactive", {"type": "shortcut", "callback_id": "open_ticket"}))
    await run(bot, slack("interactive", {"type": "block_suggestion", "action_id": "assignee", "value": "ad"}))
    assert ran == ["action approve_42", "vote poll-1", "view ticket_modal", "shortcut", "options ad"]
    assert "slack action /^approve_\\d+$/ -> tests.test_bot_api.approve" in " ".join(bot.listeners()).replace(
        "test_action_view_shortcut_and_options_by_string_or_regex_and_block_id.<locals>.", ""
    )


async def test_teams_message_text_conversation_type_and_invoke_name() -> None:
    bot = Bot()
    ran: list[str] = []

    @bot.teams.message("status", conversation_type="personal")
    async def status(ctx: TeamsContext) -> None:
        ran.append("status personal")

    @bot.teams.message
    async def everything(ctx: TeamsContext) -> None:
        ran.append("any")

    @bot.teams.invoke(re.compile("^composeExtension/"))
    async def extension(ctx: TeamsContext) -> None:
        ran.append(f"invoke {ctx.activity.name}")

    personal = teams_message("a1", text="<at>Bot</at> status please")
    personal.payload["conversation"]["conversationType"] = "personal"
    await run(bot, personal)
    await run(bot, teams_message("a2", text="status"))  # no conversation type: only the catch-all
    invoke = teams_message("a3")
    invoke.payload.update(type="invoke", name="composeExtension/query")
    await run(bot, Envelope.model_validate({**invoke.model_dump(), "kind": Kind.INVOKE}))
    assert ran == ["status personal", "any", "any", "invoke composeExtension/query"]


# --- several listeners, middleware, error handler ----------------------------------------------------------


async def test_global_then_listener_middleware_in_order_and_a_middleware_can_stop_or_enrich() -> None:
    bot = Bot()
    order: list[str] = []

    @bot.middleware
    async def first(ctx: Context, next_: Any) -> Any:
        order.append("global 1")
        ctx.extras["user"] = "enriched"
        return await next_()

    @bot.middleware
    async def second(ctx: Context, next_: Any) -> Any:
        order.append("global 2")
        if ctx.payload.get("event", {}).get("text") == "stop":
            return None
        return await next_()

    async def own(ctx: Context, next_: Any) -> Any:
        order.append("listener mw")
        return await next_()

    @bot.slack.message(middleware=[own])
    async def handler(ctx: SlackContext) -> None:
        order.append(f"handler {ctx.extras['user']}")

    await run(bot, message_event("go"))
    assert order == ["global 1", "global 2", "listener mw", "handler enriched"]
    order.clear()
    result = await run(bot, message_event("stop"))
    assert result.ran and order == ["global 1", "global 2"]


async def test_the_first_answer_wins_and_a_second_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    bot = Bot()

    @bot.slack.command("/x")
    async def one(ctx: SlackContext) -> str:
        return "first"

    @bot.slack.command("/x")
    async def two(ctx: SlackContext) -> str:
        return "second"

    result = await run(bot, slack("slash_commands", {"command": "/x"}))
    assert result.response == "first"
    assert any("second answer" in r.message for r in caplog.records)


async def test_the_error_handler_gets_what_listeners_raise_but_not_settlement_signals() -> None:
    bot = Bot()
    handled: list[str] = []

    @bot.slack.command("/boom")
    async def boom(ctx: SlackContext) -> None:
        raise RuntimeError("kaput")

    @bot.slack.command("/dead")
    async def dead(ctx: SlackContext) -> None:
        raise DeadLetterError("Hopeless", "no")

    @bot.error
    async def on_error(ctx: Context, exc: Exception) -> str:
        handled.append(str(exc))
        return "sorry"

    assert (await run(bot, slack("slash_commands", {"command": "/boom"}))).response == "sorry"
    with pytest.raises(DeadLetterError):
        await run(bot, slack("slash_commands", {"command": "/dead"}))
    assert handled == ["kaput"]


# --- the bot's own events ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        {"bot_id": "B1", "app_id": "A1"},  # our app's bot message
        {"bot_id": "B1", "bot_profile": {"app_id": "A1"}},
        {"user": "UBOT"},  # the bot user of this installation
    ],
)
async def test_the_bots_own_slack_messages_are_ignored_by_default(event: dict[str, Any]) -> None:
    bot = Bot()
    ran: list[int] = []

    @bot.slack.event("message")
    async def any_message(ctx: SlackContext) -> None:
        ran.append(1)

    assert not (await run(bot, message_event("echo?", **event))).ran
    assert (await run(bot, message_event("from a person"))).ran
    other_app = message_event("another bot", bot_id="B9", app_id="A9")
    assert (await run(bot, other_app)).ran
    assert (await run(Bot(ignore_self=False), message_event("mine", **event))).ran is False  # no listener there
    assert ran == [1, 1]


async def test_the_bots_own_teams_activities_are_ignored() -> None:
    bot = Bot()
    ran: list[int] = []

    @bot.teams.message
    async def any_message(ctx: TeamsContext) -> None:
        ran.append(1)

    own = teams_message("a1")
    own.payload["from"] = dict(own.payload["recipient"])
    assert not (await run(bot, own)).ran
    assert (await run(bot, teams_message("a2"))).ran
    assert ran == [1]


# --- typed payloads ----------------------------------------------------------------------------------------


def test_typed_payloads_keep_every_field_and_never_fail(caplog: pytest.LogCaptureFixture) -> None:
    command = parse(SlashCommand, {"command": "/x", "text": "hi", "brand_new_field": {"a": 1}})
    assert isinstance(command, SlashCommand) and command.text == "hi" and command["brand_new_field"] == {"a": 1}
    weird = parse(SlashCommand, {"command": ["not", "a", "string"], "text": "x"})
    assert isinstance(weird, Raw) and weird["command"] == ["not", "a", "string"]
    assert any("does not fit" in r.message for r in caplog.records)
    activity = parse(Activity, {"type": "message", "from": {"id": "u", "aadObjectId": "o"}, "serviceUrl": "s"})
    assert isinstance(activity, Activity) and activity.from_ is not None and activity.from_.aad_object_id == "o"
    assert activity["from"] == {"id": "u", "aadObjectId": "o"} and activity.get("serviceUrl") == "s"


def test_mentions_are_stripped_on_request() -> None:
    assert strip_mentions("<@U123> deploy <@U9|bob> now", "slack") == "deploy now"
    assert strip_mentions("<at>Relay Bot</at> hello", "teams") == "hello"


async def test_a_handler_gets_the_raw_payload_when_the_model_does_not_fit(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    bot = Bot()
    seen: list[Any] = []

    @bot.slack.event("app_mention")
    async def mention(ctx: SlackContext) -> None:
        seen.append((ctx.event["channel"], ctx.event.get("ts")))

    envelope = slack_event()
    envelope.payload["event"]["ts"] = {"unexpected": "shape"}
    assert (await run(bot, envelope)).ran
    assert seen == [(envelope.payload["event"]["channel"], {"unexpected": "shape"})]


# --- helpers against the sandboxes ---------------------------------------------------------------------------


async def test_say_respond_and_client_against_the_sandbox_slack() -> None:
    async with SlackSandbox() as sandbox:
        settings = FunctionSettings.from_env({"SLACK_BOT_TOKEN": sandbox.bot_token, "SLACK_API_URL": sandbox.api_url})
        clients = ReplyClients(settings)
        try:
            ctx = Context.for_envelope(slack_event(), settings, clients)
            assert isinstance(ctx, SlackContext)
            await ctx.say("in the thread", thread=True)
            await ctx.say("in the channel")
            command = Envelope.model_validate(
                {
                    **slack_event().model_dump(),
                    "kind": "slash_commands",
                    "payload": {"command": "/x", "channel_id": "C1", "response_url": sandbox.new_response_url()},
                }
            )
            await Context.for_envelope(command, settings, clients).respond("via response_url")  # type: ignore[attr-defined]
        finally:
            await clients.aclose()
        posts = [c for c in sandbox.replies if c.method == "chat.postMessage"]
        assert [p.body.get("thread_ts") is not None for p in posts] == [True, False]
        assert any(c.method == "response_url" and c.body.get("text") == "via response_url" for c in sandbox.replies)


async def test_send_reply_typing_and_send_card_against_the_sandbox_teams() -> None:
    async with TeamsSandbox() as sandbox:
        settings = FunctionSettings.from_env(
            {"TEAMS_STATIC_TOKEN": sandbox.bot_token, "BOT_CONNECTOR_ALLOWED_HOSTS": "127.0.0.1"}
        )
        clients = ReplyClients(settings)
        activity = sandbox.new_activity("hi")
        envelope = Envelope(
            dedupe_key="c/a",
            platform=Platform.TEAMS,
            kind=Kind.ACTIVITY,
            received_at=utcnow(),
            payload=activity,
        )
        try:
            ctx = Context.for_envelope(envelope, settings, clients)
            assert isinstance(ctx, TeamsContext)
            await ctx.reply("a reply")
            await ctx.send("a message")
            await ctx.typing()
            await ctx.send_card({"type": "AdaptiveCard", "version": "1.5", "body": []})
        finally:
            await clients.aclose()
        bodies = [r.body or {} for r in sandbox.replies]
        assert [b.get("type") for b in bodies] == ["message", "message", "typing", "message"]
        assert bodies[0].get("replyToId") == activity["id"] and "replyToId" not in bodies[1]
        assert bodies[3]["attachments"][0]["contentType"] == "application/vnd.microsoft.card.adaptive"
