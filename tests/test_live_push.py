"""Pushes from handlers (`ctx.live`, the activity feed) through the local SignalR Service to signed-in clients:
only the envelope's tenant receives them, and pushes are best-effort (a payload that cannot go, a service that
is down or throttling: the handler's work and the message's settlement are as without live updates)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.functions.servicebus import ServiceBusMessage

from devstack.sandbox.teams import TeamsSandbox
from devstack.signalr_service import LiveHubClient, LocalSignalRService
from functions import Bot, Context, FunctionSettings
from functions import live as function_live
from functions.live import LiveStats, live_stats, register_live
from functions.triggers import indexed_functions, register_routes
from shared.envelope import Envelope
from tests.factories import teams_message
from tests.live_helpers import TENANT_A, TENANT_B, LiveStack, live_stack


def sb_message(envelope: Envelope, message_id: str = "m1") -> ServiceBusMessage:
    return ServiceBusMessage(
        body=envelope.to_body(), message_id=message_id, delivery_count=1, application_properties={}, user_properties={}
    )


def envelope_of(tenant: str, sandbox: TeamsSandbox, text: str = "hello", activity_id: str = "a1") -> Envelope:
    env = teams_message(activity_id, text=text)
    payload = {**env.payload, "serviceUrl": sandbox.service_url, "from": {"id": "29:u", "name": "Dana"}}
    payload["conversation"] = {"id": "conv1", "tenantId": tenant}
    return env.model_copy(update={"payload": payload, "tenant": tenant})


def echo_bot(pushes: list[bool] | None = None, payload: Any = None, **send: Any) -> Bot:
    bot = Bot(remember_conversations=False)

    @bot.teams.message
    async def echo(ctx: Context) -> None:
        if payload is not None:
            assert pushes is not None
            pushes.append(await ctx.live.send("ticket", payload, **send))
        await ctx.reply(f"You said: {ctx.text()}")  # type: ignore[attr-defined]

    return bot


def teams_env(sandbox: TeamsSandbox) -> dict[str, str]:
    return {"TEAMS_STATIC_TOKEN": sandbox.bot_token, "BOT_CONNECTOR_ALLOWED_HOSTS": "127.0.0.1"}


async def run_function(stack: LiveStack, envelope: Envelope) -> Any:
    [fn] = [f for f in indexed_functions(stack.app) if f.get_function_name() == "teams_activities"]
    return await fn.get_user_function()(sb_message(envelope))


async def invocations(connection: LiveHubClient, *, quiet: float = 0.3) -> list[Any]:
    """Every invocation that arrives until none has for `quiet` seconds."""
    found: list[Any] = []
    while True:
        try:
            invocation = await connection.invocation(within=quiet)
        except TimeoutError:
            return found
        found.append((invocation.target, invocation.arguments))


def stats(stack: LiveStack) -> LiveStats:
    found = live_stats(stack.settings)
    assert found is not None
    return found


async def test_the_bots_activity_reaches_its_tenant_and_no_other(tmp_path: Path) -> None:
    async with TeamsSandbox() as sandbox:
        bot = echo_bot()
        async with live_stack(tmp_path, bot=bot, routes=True, **teams_env(sandbox)) as stack:
            alice = await stack.connect(TENANT_A, "alice")
            bob = await stack.connect(TENANT_B, "bob")
            await stack.service.wait_connections(2)
            secret_text = "my password is hunter2 and this message goes on for quite a while " * 3
            result = await run_function(stack, envelope_of(TENANT_A, sandbox, secret_text))
            assert result is None and len(sandbox.replies) == 1  # the handler's work: done, completed
            seen = await invocations(alice)
            assert [target for target, _ in seen] == ["activity"] * 3
            events = [arguments[0] for _, arguments in seen]
            assert [e["event"] for e in events] == ["received", "reply", "outcome"]
            received, reply, outcome = events
            assert received["platform"] == "teams" and received["type"] == "message"
            assert received["conversation"] == "conv1" and received["user"] == "Dana"
            assert len(received["text"]) <= 80 and received["text"].endswith("…")  # shortened
            assert reply["via"] == "reply" and reply["reply"].startswith("You said: my password")
            assert outcome["outcome"] == "ok" and isinstance(outcome["ms"], float)
            assert len({e["id"] for e in events}) == 1
            assert await invocations(bob) == []  # tenant B: nothing of tenant A
            assert stats(stack).sent == 3 and stats(stack).failed == 0
            # and the other way round
            await run_function(stack, envelope_of(TENANT_B, sandbox, "from B", "b1"))
            assert next(a[0]["text"] for _, a in await invocations(bob)) == "from B"
            assert await invocations(alice) == []


async def test_ctx_live_send_to_the_tenant_a_user_and_a_named_group(tmp_path: Path) -> None:
    async with TeamsSandbox() as sandbox:
        bot = Bot(remember_conversations=False)
        results: list[bool] = []

        @bot.teams.message
        async def handler(ctx: Context) -> None:
            live = ctx.live
            results.append(await live.send("ticket", {"to": "tenant"}))
            results.append(await live.send("ticket", {"to": "bob"}, to_user=stack.issuer.object_id(TENANT_A, "bob")))
            results.append(await live.add_to_group(stack.issuer.object_id(TENANT_A, "carol"), "support"))
            results.append(await live.send("ticket", {"to": "support"}, group="support"))
            # what could name another tenant is refused, never sent
            results.append(await live.send("ticket", {"to": "x"}, group=f"../tenant:{TENANT_B}"))
            results.append(await live.send("ticket", {"to": "x"}, to_user=stack.issuer.user_id(TENANT_B, "dave")))
            results.append(await live.send("bad target!", {"to": "x"}))

        async with live_stack(tmp_path, bot=bot, routes=True, **teams_env(sandbox)) as stack:
            alice, bob, carol = [await stack.connect(TENANT_A, user) for user in ("alice", "bob", "carol")]
            dave = await stack.connect(TENANT_B, "dave")
            await stack.service.wait_connections(4)
            assert await run_function(stack, envelope_of(TENANT_A, sandbox)) is None
            assert results == [True, True, True, True, False, False, False]

            def payloads(seen: list[Any]) -> list[Any]:
                return [arguments[0]["to"] for target, arguments in seen if target == "ticket"]

            assert payloads(await invocations(alice)) == ["tenant"]
            assert payloads(await invocations(bob)) == ["tenant", "bob"]
            assert payloads(await invocations(carol)) == ["tenant", "support"]
            assert await invocations(dave) == []
            assert stack.service.users_in(f"tenant:{TENANT_A}/support") == {stack.issuer.user_id(TENANT_A, "carol")}
            assert stats(stack).invalid == 3


@pytest.mark.parametrize(
    ("payload", "reason"),
    [({"loop": float("nan")}, "unserialisable"), (object(), "unserialisable"), ("x" * (1024 * 1024 + 1), "too_large")],
)
async def test_a_payload_that_cannot_go_is_counted_and_logged(
    tmp_path: Path, payload: Any, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with TeamsSandbox() as sandbox:
        pushes: list[bool] = []
        async with live_stack(tmp_path, bot=echo_bot(pushes, payload), routes=True, **teams_env(sandbox)) as stack:
            alice = await stack.connect(TENANT_A)
            await stack.service.wait_connections(1)
            with caplog.at_level(logging.WARNING, logger="functions.live"):
                assert await run_function(stack, envelope_of(TENANT_A, sandbox)) is None
            assert pushes == [False] and len(sandbox.replies) == 1
            assert getattr(stats(stack), reason) == 1
            assert any(f"live push dropped ({reason})" in r.getMessage() for r in caplog.records)
            assert [a[0]["event"] for _, a in await invocations(alice)] == ["received", "reply", "outcome"]


async def test_a_throttling_service_is_skipped_until_retry_after(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with TeamsSandbox() as sandbox:
        pushes: list[bool] = []
        async with live_stack(tmp_path, bot=echo_bot(pushes, {"n": 1}), routes=True, **teams_env(sandbox)) as stack:
            stack.service.throttle(times=1, retry_after=30)
            with caplog.at_level(logging.WARNING, logger="functions.live"):
                for i in range(3):
                    assert await run_function(stack, envelope_of(TENANT_A, sandbox, activity_id=f"t{i}")) is None
            assert len(sandbox.replies) == 3 and pushes == [False] * 3
            s = stats(stack)
            assert s.throttled == 1 and s.skipped == 3 * 4 - 1 and s.sent == 0
            assert stack.service.stats["rest_calls"] == 1  # nothing more was tried while it throttles
            assert any("live push dropped (throttled)" in r.getMessage() for r in caplog.records)


async def test_a_service_that_is_down_never_fails_the_handler(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with LocalSignalRService() as service:
        endpoint = service.endpoint
        key = service.access_key
    # the service is gone: its port is closed
    async with TeamsSandbox() as sandbox:
        pushes: list[bool] = []
        app = func.FunctionApp()
        env = {
            **teams_env(sandbox),
            "AzureSignalRConnectionString": f"Endpoint={endpoint};AccessKey={key};Version=1.0;",
            "RELAYBUS_LIVE_AUDIENCE": "api://relaybus-dev",
        }
        settings = FunctionSettings.from_env(env)
        bot = echo_bot(pushes, {"n": 1})
        register_routes(app, bot, settings)
        register_live(app, bot, settings)
        [fn] = [f for f in indexed_functions(app) if f.get_function_name() == "teams_activities"]
        started = asyncio.get_running_loop().time()
        with caplog.at_level(logging.WARNING, logger="functions.live"):
            for i in range(3):
                message = sb_message(envelope_of(TENANT_A, sandbox, activity_id=f"d{i}"), f"d{i}")
                assert await fn.get_user_function()(message) is None
        assert asyncio.get_running_loop().time() - started < 5
        await function_live.aclose()
        assert len(sandbox.replies) == 3 and pushes == [False] * 3
        s = live_stats(settings)
        # the first push finds the port closed; the rest are skipped while the backoff lasts (1 s, doubling)
        assert s is not None and s.unavailable >= 1 and s.unavailable + s.skipped == 12 and s.sent == 0
        assert s.unavailable <= 3
        assert any("live push dropped (unavailable)" in r.getMessage() for r in caplog.records)


async def test_a_failing_service_and_an_error_in_the_handler(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with TeamsSandbox() as sandbox:
        bot = Bot(remember_conversations=False)

        @bot.teams.message
        async def broken(ctx: Context) -> None:
            raise RuntimeError("the handler's own failure")

        async with live_stack(tmp_path, bot=bot, routes=True, **teams_env(sandbox)) as stack:
            alice = await stack.connect(TENANT_A)
            await stack.service.wait_connections(1)
            # the handler's error goes where it would without live updates (a scheduled retry, here)
            with caplog.at_level(logging.WARNING, logger="functions.triggers"):
                await run_function(stack, envelope_of(TENANT_A, sandbox))
            assert any("retry in" in r.getMessage() and "own failure" in r.getMessage() for r in caplog.records)
            events = [a[0] for _, a in await invocations(alice)]
            assert [e["event"] for e in events] == ["received", "outcome"]
            assert events[1]["outcome"] == "error" and events[1]["error"] == "RuntimeError"
            stack.service.fail(403, times=5)  # a refusal is dropped and counted, not retried
            await run_function(stack, envelope_of(TENANT_A, sandbox, activity_id="a2"))
            assert stats(stack).refused == 2
