"""The function app: one function per route with the binding `func start` indexes, dispatch, dead-letters."""

from __future__ import annotations

import json
import logging
from typing import Any

import azure.functions as func
import pytest
from azure.functions.servicebus import ServiceBusMessage

import function_app
from devstack.sandbox.teams import TeamsSandbox
from functions import Bot, Context, ReplyClients
from functions.settings import FunctionSettings
from functions.teams_api import BotConnectorError
from functions.triggers import indexed_functions, register_routes
from shared.envelope import Envelope
from shared.errors import DeadLetterError
from shared.routes import ROUTES
from tests.factories import slack_event, teams_message


def sb_message(body: bytes, message_id: str = "m1", delivery_count: int = 1) -> ServiceBusMessage:
    return ServiceBusMessage(
        body=body,
        message_id=message_id,
        delivery_count=delivery_count,
        application_properties={},
        user_properties={},
    )


def functions_by_name(app: func.FunctionApp) -> dict[str, Any]:
    return {f.get_function_name(): f for f in indexed_functions(app)}


def test_one_function_per_route_with_the_binding_func_start_indexes() -> None:
    fns = functions_by_name(function_app.app)
    assert set(fns) == {r.name for r in ROUTES}
    for route in ROUTES:
        doc = json.loads(fns[route.name].get_function_json())
        assert doc["scriptFile"] == "function_app.py"
        [binding] = doc["bindings"]
        assert binding["type"] == "serviceBusTrigger"
        assert binding["direction"] == "IN"
        assert binding["queueName"] == f"%{route.setting}%"
        assert binding["connection"] == "ServiceBusConnection"
        assert binding["isSessionsEnabled"] is route.sessions


def build(bot: Bot) -> dict[str, Any]:
    app = func.FunctionApp()
    register_routes(app, bot, FunctionSettings.from_env({}))
    return functions_by_name(app)


async def test_valid_body_is_dispatched_to_the_matching_handler() -> None:
    bot = Bot()
    seen: list[Context] = []

    @bot.slack.event("app_mention")
    async def on_mention(ctx: Context) -> None:
        seen.append(ctx)

    fns = build(bot)
    env = slack_event("Ev9", text="ping")
    await fns["slack_events"].get_user_function()(sb_message(env.to_body(), "Ev9", delivery_count=2))
    assert len(seen) == 1
    assert seen[0].envelope == env and seen[0].event["text"] == "ping"
    assert seen[0].message_id == "Ev9" and seen[0].delivery_count == 2


async def test_handler_exceptions_propagate_so_service_bus_redelivers() -> None:
    bot = Bot()

    @bot.teams.message
    async def boom(ctx: Context) -> None:
        raise RuntimeError("downstream down")

    fns = build(bot)
    with pytest.raises(RuntimeError, match="downstream down"):
        await fns["teams_activities"].get_user_function()(sb_message(teams_message().to_body()))


@pytest.mark.parametrize("body", [b"", b"{not json", b'{"schema_version": 1}', json.dumps({"x": 1}).encode()])
async def test_invalid_bodies_are_dead_lettered_with_a_reason(body: bytes) -> None:
    fns = build(Bot())
    with pytest.raises(DeadLetterError) as err:
        await fns["slack_events"].get_user_function()(sb_message(body))
    assert err.value.reason == "InvalidBody"
    assert err.value.description


async def test_an_envelope_on_the_wrong_queue_is_dead_lettered() -> None:
    fns = build(Bot())
    with pytest.raises(DeadLetterError) as err:
        await fns["slack_commands"].get_user_function()(sb_message(teams_message().to_body()))
    assert err.value.reason == "WrongQueue"
    assert "teams" in err.value.description


async def test_envelopes_without_a_handler_complete() -> None:
    fns = build(Bot())
    result = await fns["slack_events"].get_user_function()(
        sb_message(slack_event(event_type="reaction_added").to_body())
    )
    assert result is None


def test_slack_dispatch_keys() -> None:
    bot = Bot()

    async def h(ctx: Context) -> None:
        return None

    bot.slack.command("/ticket")(h)
    bot.slack.action("approve")(h)
    bot.slack.view("modal")(h)
    base = slack_event().model_dump()

    def env(kind: str, payload: dict[str, Any]) -> Envelope:
        return Envelope.model_validate({**base, "kind": kind, "payload": payload})

    assert bot.find(env("slash_commands", {"command": "/ticket"})) == [h]
    assert bot.find(env("slash_commands", {"command": "/other"})) == []
    actions = {"type": "block_actions", "actions": [{"action_id": "x"}, {"action_id": "approve"}, "junk"]}
    assert bot.find(env("interactive", actions)) == [h]
    assert bot.find(env("interactive", {"type": "view_submission", "view": {"callback_id": "modal"}})) == [h]
    assert bot.find(env("interactive", {"type": "view_submission", "view": "not an object"})) == []


async def test_several_listeners_share_a_key_and_run_in_registration_order() -> None:
    bot = Bot()
    ran: list[str] = []

    @bot.slack.event("app_mention")
    async def first(ctx: Context) -> None:
        ran.append("first")

    @bot.slack.event("app_mention")
    async def second(ctx: Context) -> None:
        ran.append("second")

    settings = FunctionSettings.from_env({})
    clients = ReplyClients(settings)
    assert await bot.dispatch(Context(slack_event(), settings, clients))
    assert ran == ["first", "second"]
    assert bot.listeners() == [
        f"slack event app_mention -> {__name__}.{first.__qualname__}",
        f"slack event app_mention -> {__name__}.{second.__qualname__}",
    ]


def test_local_settings_sample_lists_every_setting_the_function_app_reads() -> None:
    import json
    from pathlib import Path

    from functions.settings import FunctionSettings
    from shared.routes import ROUTES

    sample = json.loads((Path(__file__).resolve().parent.parent / "local.settings.sample.json").read_text())
    values: dict[str, str] = sample["Values"]
    read = FunctionSettings.setting_names()
    read |= {route.setting for route in ROUTES}
    read |= {"ServiceBusConnection", "AzureWebJobsStorage", "FUNCTIONS_WORKER_RUNTIME"}
    assert read <= set(values), sorted(read - set(values))
    assert values["FUNCTIONS_WORKER_RUNTIME"] == "python"
    FunctionSettings.from_env(values)  # the placeholders themselves are valid settings


def test_the_app_can_be_indexed_more_than_once_in_one_process() -> None:
    # the local host, the dev stack and tests all index function_app.app; azure-functions alone would
    # refuse the second get_functions() with "does not have a unique function name"
    assert [f.get_function_name() for f in indexed_functions(function_app.app)] == [
        f.get_function_name() for f in indexed_functions(function_app.app)
    ]


def build_for_sandbox(bot: Bot, sandbox: TeamsSandbox) -> tuple[dict[str, Any], ReplyClients]:
    app = func.FunctionApp()
    settings = FunctionSettings.from_env(
        {"TEAMS_STATIC_TOKEN": sandbox.bot_token, "BOT_CONNECTOR_ALLOWED_HOSTS": "127.0.0.1"}
    )
    clients = register_routes(app, bot, settings)
    return functions_by_name(app), clients


def replying_bot() -> Bot:
    bot = Bot()

    @bot.teams.message
    async def answer(ctx: Context) -> None:
        await ctx.teams.reply(ctx.activity, "hello back")

    return bot


def teams_message_from(sandbox: TeamsSandbox, service_url: str | None = None) -> Envelope:
    env = teams_message()
    activity = {**env.payload, "serviceUrl": service_url or sandbox.service_url}
    return env.model_copy(update={"payload": activity})


async def test_a_reply_the_user_blocked_completes_the_message_without_retry(caplog: pytest.LogCaptureFixture) -> None:
    async with TeamsSandbox() as sandbox:
        fns, clients = build_for_sandbox(replying_bot(), sandbox)
        sandbox.fail_replies(403, times=1, body={"error": {"code": "MessageWritesBlocked", "message": "blocked"}})
        with caplog.at_level(logging.WARNING, logger="functions.triggers"):
            result = await fns["teams_activities"].get_user_function()(
                sb_message(teams_message_from(sandbox).to_body())
            )
        await clients.aclose()
    assert result is None  # completed: no exception, so Service Bus does not redeliver
    assert sandbox.stats["reply_403"] == 1 and not sandbox.replies
    assert any("reply refused for good" in r.getMessage() for r in caplog.records)


async def test_a_reply_to_a_serviceurl_off_the_allowlist_is_dead_lettered() -> None:
    async with TeamsSandbox() as sandbox:
        fns, clients = build_for_sandbox(replying_bot(), sandbox)
        forged = teams_message_from(sandbox, "https://attacker.example/teams/")
        with pytest.raises(DeadLetterError) as err:
            await fns["teams_activities"].get_user_function()(sb_message(forged.to_body()))
        await clients.aclose()
    assert err.value.reason == "ServiceUrlNotAllowed"
    assert "attacker.example" in err.value.description and not sandbox.replies


async def test_other_reply_failures_propagate_so_service_bus_redelivers() -> None:
    async with TeamsSandbox() as sandbox:
        fns, clients = build_for_sandbox(replying_bot(), sandbox)
        sandbox.fail_replies(400, times=1, body={"error": {"code": "BadArgument", "message": "no"}})
        with pytest.raises(BotConnectorError):
            await fns["teams_activities"].get_user_function()(sb_message(teams_message_from(sandbox).to_body()))
        await clients.aclose()
