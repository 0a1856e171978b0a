"""Twenty apps in one worker process (issue 14): 12 Slack apps and 8 Teams bots, each against a sandbox of its
own (its own tokens: a sandbox refuses any other app's), one worker built from the `RELAYBUS_SLACK_APPS` /
`RELAYBUS_TEAMS_BOTS` settings. Every envelope carries its app, /readyz, the metrics and the lifecycle log name
it, and the function side (the example bot, `handlers.bot`) answers each with that app's own bot token or bot
credentials: the reply reaches the app's sandbox with its token."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from azure.functions.servicebus import ServiceBusMessage

from devstack.sandbox.slack import SlackSandbox
from devstack.sandbox.teams import TeamsSandbox
from functions import ReplyClients
from functions.settings import FunctionSettings
from functions.triggers import process_message
from handlers import bot
from shared.errors import ConfigurationError
from shared.routes import ROUTES
from worker.metrics import Metrics
from worker.publish import QueueMessage
from worker.publish.memory import MemoryBackend
from worker.runtime import Worker
from worker.settings import load_settings

SLACK_APPS = [f"s{i:02d}" for i in range(12)]
TEAMS_BOTS = [f"t{i}" for i in range(8)]


def slack_box(i: int) -> SlackSandbox:
    return SlackSandbox(
        app_token=f"xapp-1-A{i:04d}-sandbox{i}",
        bot_token=f"xoxb-sandbox-{i}",
        team_id=f"T{i:04d}",
        app_id=f"A{i:04d}",
    )


def teams_box(i: int) -> TeamsSandbox:
    return TeamsSandbox(app_id=f"bot-{i}", bot_token=f"teams-bot-token-{i}", geos=("amer",))


@contextlib.asynccontextmanager
async def fleet() -> AsyncIterator[tuple[list[SlackSandbox], list[TeamsSandbox]]]:
    async with contextlib.AsyncExitStack() as stack:
        slacks = [await stack.enter_async_context(slack_box(i)) for i in range(len(SLACK_APPS))]
        teams = [await stack.enter_async_context(teams_box(i)) for i in range(len(TEAMS_BOTS))]
        yield slacks, teams


def worker_env(slacks: list[SlackSandbox], teams: list[TeamsSandbox], tmp: Path) -> dict[str, str]:
    env = {
        "RELAYBUS_LOCAL_QUEUE_PATH": str(tmp / "queue.db"),
        "RELAYBUS_HTTP_HOST": "127.0.0.1",
        "RELAYBUS_HTTP_PORT": "0",
        "RELAYBUS_SHUTDOWN_TIMEOUT_SECONDS": "5",
        "RELAYBUS_SLACK_APPS": ",".join(SLACK_APPS),
        "RELAYBUS_TEAMS_BOTS": ",".join(TEAMS_BOTS),
        "SLACK_CONNECTIONS": "1",  # the unsuffixed value is every app's default
        "TEAMS_GEOS": "amer",
    }
    for app, box in zip(SLACK_APPS, slacks, strict=True):
        env[f"SLACK_APP_TOKEN__{app.upper()}"] = box.app_token
        env[f"SLACK_API_URL__{app.upper()}"] = box.api_url
    for name, hub in zip(TEAMS_BOTS, teams, strict=True):
        env[f"TEAMS_APP_ID__{name.upper()}"] = hub.app_id
        env[f"TEAMS_STATIC_TOKEN__{name.upper()}"] = hub.bot_token
        env[f"TEAMS_BASE_URL__{name.upper()}"] = hub.base_url
    return env


def function_env(slacks: list[SlackSandbox], teams: list[TeamsSandbox]) -> dict[str, str]:
    env = {
        "RELAYBUS_SLACK_APPS": ",".join(SLACK_APPS),
        "RELAYBUS_TEAMS_BOTS": ",".join(TEAMS_BOTS),
        "BOT_CONNECTOR_ALLOWED_HOSTS": "127.0.0.1",
    }
    for app, box in zip(SLACK_APPS, slacks, strict=True):
        env[f"SLACK_BOT_TOKEN__{app.upper()}"] = box.bot_token
        env[f"SLACK_API_URL__{app.upper()}"] = box.api_url
    for name, hub in zip(TEAMS_BOTS, teams, strict=True):
        env[f"TEAMS_APP_ID__{name.upper()}"] = hub.app_id
        env[f"TEAMS_STATIC_TOKEN__{name.upper()}"] = hub.bot_token
    return env


async def run_function(message: QueueMessage, clients: ReplyClients) -> bool:
    msg = ServiceBusMessage(
        body=message.body,
        message_id=message.message_id,
        session_id=message.session_id,
        delivery_count=1,
        application_properties=dict(message.application_properties),
        user_properties={},
    )
    return await process_message(bot, ROUTES.by_queue(message.queue), msg, clients.settings, clients)


async def eventually(predicate: object, within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.01)


@pytest.mark.timeout(120)
async def test_twenty_apps_in_one_worker_each_answered_with_its_own_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with fleet() as (slacks, teams):
        backend, metrics = MemoryBackend(), Metrics()
        worker = Worker(
            load_settings(worker_env(slacks, teams, tmp_path)), backend=backend, metrics=metrics, replies=False
        )
        stopping = asyncio.Event()
        task = asyncio.create_task(worker.run(stopping))
        clients = ReplyClients(FunctionSettings.from_env(function_env(slacks, teams)))
        try:
            await eventually(lambda: metrics.status.ready({"slack", "teams"}), 20)
            assert worker.health is not None and worker.health.port
            async with httpx.AsyncClient() as http:
                ready = await http.get(f"http://127.0.0.1:{worker.health.port}/readyz")
                text = (await http.get(f"http://127.0.0.1:{worker.health.port}/metrics")).text
            assert ready.status_code == 200
            names = {f"{c['platform']}/{c['connection']}" for c in ready.json()["connections"]}
            assert names == {f"slack/{a}/0" for a in SLACK_APPS} | {f"teams/{b}/amer" for b in TEAMS_BOTS}
            assert 'relaybus_connection_state{connection="s07/0",platform="slack",state="Online"} 1.0' in text

            slack_keys = [
                await box.send_user_message(f"hello {app}") for app, box in zip(SLACK_APPS, slacks, strict=True)
            ]
            for name, hub in zip(TEAMS_BOTS, teams, strict=True):
                await hub.send_user_message(f"hello {name}")
            # two bots in one conversation see the same activity: each gets its own message (app-prefixed key)
            for hub in teams[:2]:
                activity = hub.new_activity("both of you", "19:shared-conversation")
                activity["id"] = "shared-activity-1"
                await hub.send_activity(activity)
            await eventually(lambda: len(backend.all_messages()) == len(SLACK_APPS) + len(TEAMS_BOTS) + 2)
            for key, box in zip(slack_keys, slacks, strict=True):
                await box.wait_acked_keys({key}, within=5)

            by_app: dict[str, list[QueueMessage]] = {}
            for message in backend.all_messages():
                body = json.loads(message.body)
                by_app.setdefault(body["app"], []).append(message)
                assert message.application_properties["app"] == body["app"]
                assert message.message_id.startswith(body["app"] + ":")
            assert sorted(by_app) == sorted(SLACK_APPS + TEAMS_BOTS)
            assert len(by_app["t0"]) == len(by_app["t1"]) == 2
            assert metrics.value("relaybus_app_envelopes_published_total", platform="slack", app="s05") == 1
            assert metrics.value("relaybus_app_envelopes_published_total", platform="teams", app="t1") == 2

            for message in backend.all_messages():
                assert await run_function(message, clients)
            for i, box in enumerate(slacks):
                reply = await box.wait_for_reply(lambda r: r.method == "chat.postMessage")
                assert reply.token == f"xoxb-sandbox-{i}"
                assert f"hello {SLACK_APPS[i]}" in reply.body["text"]
            for i, hub in enumerate(teams):
                replies = await hub.wait_replies(2 if i < 2 else 1)
                # the sandbox records a reply only with its own bot's token (any other is a 401)
                assert any(f"hello {TEAMS_BOTS[i]}" in r.text for r in replies)
        finally:
            stopping.set()
            result = await asyncio.wait_for(task, 20)
            await clients.aclose()
    assert result.ok, result.fatal
    logged = caplog.text
    assert "slack connector starting app=s11: 1 connections" in logged
    assert "teams connector starting bot=t7" in logged


async def test_an_envelope_of_an_app_the_function_does_not_know_is_refused_naming_the_setting() -> None:
    settings = FunctionSettings.from_env({"RELAYBUS_SLACK_APPS": "sales", "SLACK_BOT_TOKEN__SALES": "xoxb-1"})
    clients = ReplyClients(settings)
    try:
        assert clients.slack_for("sales") is clients.slack_for("sales")
        with pytest.raises(ConfigurationError) as err:
            clients.slack_for("hr")
        assert err.value.setting == "SLACK_BOT_TOKEN__HR"
        with pytest.raises(ConfigurationError) as err:
            clients.teams_for("support")
        assert err.value.setting == "TEAMS_APP_ID__SUPPORT"
    finally:
        await clients.aclose()


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"RELAYBUS_SLACK_APPS": "sales,hr", "SLACK_APP_TOKEN__SALES": "xapp-1-A1-x"}, "SLACK_APP_TOKEN__HR"),
        (
            {"RELAYBUS_SLACK_APPS": "sales", "SLACK_APP_TOKEN__SALES": "xapp-1-A1-x", "SLACK_APP_TOKEN": "xapp-1-A2-y"},
            "SLACK_APP_TOKEN",
        ),
        (
            {"RELAYBUS_SLACK_APPS": "sales", "SLACK_APP_TOKEN__SALES": "xapp-1-A1-x", "SLACK_CONNECTIONS__SALSE": "3"},
            "SLACK_CONNECTIONS__SALSE",
        ),
        (
            {"RELAYBUS_SLACK_APPS": "sales", "SLACK_APP_TOKEN__SALES": "xapp-1-A1-x", "SLACK_CONNECTIONS__SALES": "11"},
            "SLACK_CONNECTIONS__SALES",
        ),
        (
            {"RELAYBUS_SLACK_APPS": "a,b", "SLACK_APP_TOKEN__A": "xapp-1-A1-x", "SLACK_APP_TOKEN__B": "xapp-1-A1-x"},
            "SLACK_APP_TOKEN__B",
        ),
        ({"RELAYBUS_SLACK_APPS": "sales,,hr"}, "RELAYBUS_SLACK_APPS"),
        ({"RELAYBUS_SLACK_APPS": "north-eu,north_eu"}, "RELAYBUS_SLACK_APPS"),
        ({"RELAYBUS_TEAMS_BOTS": "support", "TEAMS_APP_PASSWORD__SUPPORT": "pw"}, "TEAMS_APP_ID__SUPPORT"),
        (
            {
                "RELAYBUS_TEAMS_BOTS": "a,b",
                "TEAMS_TENANT_ID": "tenant",
                **{f"TEAMS_APP_ID__{b}": "same-id" for b in "AB"},
                **{f"TEAMS_APP_PASSWORD__{b}": f"pw-{b}" for b in "AB"},
            },
            "TEAMS_APP_ID__B",
        ),
    ],
)
def test_wrong_app_settings_name_the_setting(env: dict[str, str], setting: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        load_settings({"RELAYBUS_LOCAL_QUEUE_PATH": "/tmp/relaybus-many-apps-unused.db", **env})
    assert err.value.setting == setting
    assert "xapp-1" not in str(err.value)


# --- proactive sends go out as the app the conversation belongs to ------------------------------------------


async def test_proactive_sends_use_the_app_of_the_reference_and_two_bots_keep_their_own(tmp_path: Path) -> None:
    """References remember the app (`Envelope.app`); `bot.slack.post` / `bot.teams.send_to` then answer with that
    app's token (each sandbox refuses any other), and two bots in one Teams conversation keep apart references."""
    from functions import Bot
    from functions.state.references import conversation_reference, remember
    from shared.envelope import Envelope, Kind, Platform, utcnow
    from tests.factories import slack_event

    slacks = [slack_box(i) for i in range(2)]
    teams = [teams_box(i) for i in range(2)]
    async with contextlib.AsyncExitStack() as stack:
        for box in (*slacks, *teams):
            await stack.enter_async_context(box)
        env = {
            "RELAYBUS_SLACK_APPS": "sales,hr",
            "RELAYBUS_TEAMS_BOTS": "t0,t1",
            "BOT_CONNECTOR_ALLOWED_HOSTS": "127.0.0.1",
            "RELAYBUS_STATE_PATH": str(tmp_path / "state.db"),
        }
        for app, box in zip(("sales", "hr"), slacks, strict=True):
            env[f"SLACK_BOT_TOKEN__{app.upper()}"] = box.bot_token
            env[f"SLACK_API_URL__{app.upper()}"] = box.api_url
        for name, hub in zip(("t0", "t1"), teams, strict=True):
            env[f"TEAMS_APP_ID__{name.upper()}"] = hub.app_id
            env[f"TEAMS_STATIC_TOKEN__{name.upper()}"] = hub.bot_token
        clients = ReplyClients(FunctionSettings.from_env(env))
        proactive = Bot()
        proactive.use(clients)
        store = clients.state

        hr_event = slack_event("EvHR", channel="C77").model_copy(update={"app": "hr"})
        slack_ref = await remember(store, hr_event)
        assert slack_ref is not None and slack_ref.app == "hr"
        stored = await conversation_reference(store, Platform.SLACK, "C77", app="hr")
        assert stored == slack_ref
        assert await conversation_reference(store, Platform.SLACK, "C77") is None  # not the single app's
        await proactive.slack.post(stored, "from hr")
        await proactive.slack.post("C1", "from sales", app="sales")
        assert [c.body["text"] for c in slacks[1].replies] == ["from hr"]
        assert [c.body["text"] for c in slacks[0].replies] == ["from sales"]

        for name, hub in zip(("t0", "t1"), teams, strict=True):
            activity = hub.new_activity("hi", "a:shared-conv")
            envelope = Envelope(
                dedupe_key=f"{name}:{activity['id']}",
                platform=Platform.TEAMS,
                kind=Kind.ACTIVITY,
                tenant="sandbox-tenant",
                received_at=utcnow(),
                payload=activity,
                app=name,
            )
            await remember(store, envelope, allowed_hosts=("127.0.0.1",))
        for name in ("t0", "t1"):
            ref = await conversation_reference(store, Platform.TEAMS, "a:shared-conv", app=name)
            assert ref is not None and ref.app == name
            await proactive.teams.send_to(ref, f"from {name}")
        assert [r.body["text"] for r in teams[0].replies if r.body] == ["from t0"]
        assert [r.body["text"] for r in teams[1].replies if r.body] == ["from t1"]
