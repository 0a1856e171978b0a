"""Retries that back off: the policy (pure), and through the registered functions and the local functions
host with a fake clock: scheduled copies with growing delays, the dead-letter after the last attempt,
`Retry(after=…)`, a platform's Retry-After, duplicate detection of a redelivered attempt."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path

import pytest

from devstack.funchost import LocalOutbox, Settlement
from devstack.sandbox.slack import SlackSandbox
from functions import Bot, Context, ReplyClients, Retry
from functions import outbox as function_outbox
from functions.retries import (
    MAX_ATTEMPTS_EXCEEDED,
    Backoff,
    attempt_of,
    chosen_delay,
    decide,
    retry_message_id,
)
from functions.settings import FunctionSettings
from functions.slack_api import SlackRateLimitedError
from functions.teams_api import BotConnectorError
from functions.triggers import process_message
from localqueue import LocalQueueBackend, queue_configs
from shared.errors import ConfigurationError, DeadLetterError
from shared.queue_message import build_message
from shared.routes import ROUTES
from tests.factories import slack_event
from tests.functions_local import FakeClock, LocalStack, block_action, sb_message

INTERACTIVE = ROUTES.get("slack_interactive").queue
EVENTS = ROUTES.get("slack_events").queue


# -- the policy (pure) -----------------------------------------------------------------------------


def test_backoff_is_exponential_with_full_jitter_and_a_cap() -> None:
    policy = Backoff(max_attempts=10, base_seconds=2, max_seconds=30)
    assert [policy.ceiling(n) for n in range(1, 7)] == [2, 4, 8, 16, 30, 30]
    assert (
        policy.delay(3, 0.0) == 0.0 and policy.delay(3, 0.5) == 4.0 and policy.delay(9, 0.999) == pytest.approx(29.97)
    )
    assert policy.ceiling(10_000) == 30  # no overflow


def test_decide_retries_until_the_last_attempt_then_dead_letters() -> None:
    policy = Backoff(max_attempts=3, base_seconds=1, max_seconds=10)
    first = decide(policy, 1, RuntimeError("down"), 0.5)
    assert (first.retry, first.delay, first.next_attempt, first.error) == (True, 0.5, 2, "RuntimeError: down")
    last = decide(policy, 3, RuntimeError("still down"), 0.5)
    assert not last.retry
    assert last.dead_letter_description == "the handler failed 3 attempt(s); the last error: RuntimeError: still down"


def test_a_chosen_delay_wins_over_the_backoff_and_still_counts_as_an_attempt() -> None:
    policy = Backoff(max_attempts=2, base_seconds=1, max_seconds=10)
    decision = decide(policy, 1, Retry(after=120, reason="upstream busy"), 0.5)
    assert (decision.delay, decision.chosen, decision.error) == (120, True, "Retry: upstream busy")
    assert not decide(policy, 2, Retry(after=1), 0.5).retry
    assert decide(policy, 1, Retry(after=10**9), 0.5).delay == 86400  # at most a day
    assert decide(policy, 1, Retry(), 0.25).delay == 0.25  # no delay given: the backoff


def test_platform_retry_after_errors_choose_their_delay() -> None:
    assert chosen_delay(SlackRateLimitedError("chat.postMessage", 42.0)) == 42.0
    limited = BotConnectorError("POST smba/v3/conversations answered 429", 429, retry_after=17.0)
    assert chosen_delay(limited) == 17.0
    assert chosen_delay(BotConnectorError("answered 429", 429)) is None  # no Retry-After known: the backoff
    assert chosen_delay(BotConnectorError("answered 502", 502)) is None
    assert chosen_delay(RuntimeError("x")) is None


def test_retry_message_ids_derive_from_the_original_and_the_attempt() -> None:
    assert retry_message_id("Ev01", 2) == "Ev01~2"
    assert retry_message_id("Ev01", 3) != retry_message_id("Ev01", 2)
    long = "x" * 127
    assert retry_message_id(long, 2) == "sha256:" + hashlib.sha256(f"{long}~2".encode()).hexdigest()
    assert len(retry_message_id(long, 2)) <= 128


@pytest.mark.parametrize(
    ("properties", "attempt"),
    [
        (None, 1),
        ({}, 1),
        ({"relaybus_attempt": "3"}, 3),
        ({"relaybus_attempt": 4}, 4),
        ({"relaybus_attempt": "0"}, 1),
        ({"relaybus_attempt": "-2"}, 1),
        ({"relaybus_attempt": "99999"}, 1),
        ({"relaybus_attempt": "two"}, 1),
        ({"relaybus_attempt": True}, 1),
    ],
)
def test_the_attempt_property_is_read_defensively(properties: dict[str, object] | None, attempt: int) -> None:
    assert attempt_of(properties) == attempt


def test_retry_settings_global_and_per_route() -> None:
    settings = FunctionSettings.from_env(
        {
            "RELAYBUS_RETRY_MAX_ATTEMPTS": "4",
            "RELAYBUS_RETRY_BASE_SECONDS": "0.5",
            "RELAYBUS_RETRY_MAX_SECONDS": "60",
            "RELAYBUS_RETRY_MAX_ATTEMPTS__slack_events": "2",
            "RELAYBUS_RETRY_MAX_SECONDS__teams_invokes": "5",
        }
    )
    assert Backoff.for_route(settings, "slack_interactive") == Backoff(4, 0.5, 60)
    assert Backoff.for_route(settings, "slack_events") == Backoff(2, 0.5, 60)
    assert Backoff.for_route(settings, "teams_invokes") == Backoff(4, 0.5, 5)
    assert Backoff.for_route(FunctionSettings.from_env({}), "slack_events") == Backoff(5, 2, 300)


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"RELAYBUS_RETRY_MAX_ATTEMPTS": "0"}, "RELAYBUS_RETRY_MAX_ATTEMPTS"),
        ({"RELAYBUS_RETRY_BASE_SECONDS": "-1"}, "RELAYBUS_RETRY_BASE_SECONDS"),
        ({"RELAYBUS_RETRY_MAX_SECONDS": "1"}, "RELAYBUS_RETRY_MAX_SECONDS"),
        ({"RELAYBUS_RETRY_MAX_ATTEMPTS__slack_eventz": "3"}, "RELAYBUS_RETRY_MAX_ATTEMPTS__slack_eventz"),
        ({"RELAYBUS_RETRY_MAX_ATTEMPTS__slack_events": "many"}, "RELAYBUS_RETRY_MAX_ATTEMPTS__slack_events"),
        ({"RELAYBUS_RETRY_BASE_SECONDS__slack_events": "nan"}, "RELAYBUS_RETRY_BASE_SECONDS__slack_events"),
        ({"RELAYBUS_RETRY_BASE_SECONDS__slack_events": "900"}, "RELAYBUS_RETRY_BASE_SECONDS__slack_events"),
    ],
)
def test_wrong_retry_settings_name_the_setting(env: dict[str, str], setting: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        FunctionSettings.from_env(env)
    assert raised.value.setting == setting


# -- through the registered functions and the local host, with a fake clock ------------------------


async def test_a_handler_failing_twice_then_succeeding_runs_three_times_with_growing_delays(tmp_path: Path) -> None:
    attempts: list[tuple[int, float]] = []
    clock = FakeClock()
    bot = Bot()

    @bot.slack.action("flaky")
    async def flaky(ctx: Context) -> None:
        attempts.append((ctx.attempt, clock.now))
        if len(attempts) < 3:
            raise RuntimeError(f"downstream down ({len(attempts)})")

    env = {"RELAYBUS_RETRY_BASE_SECONDS": "10", "RELAYBUS_RETRY_MAX_SECONDS": "300"}
    stack = LocalStack(tmp_path, bot, env, clock=clock, jitter=lambda: 0.9)
    envelope = block_action("flaky")
    delays: list[float] = []

    async def scenario(s: LocalStack) -> None:
        await s.send(envelope)
        for n in (1, 2):
            run = await s.outcome(n)
            assert run.outcome is Settlement.COMPLETED and run.retry is not None
            [copy] = s.stored(INTERACTIVE)
            assert copy.message_id == f"{envelope.message_id}~{n + 1}"
            assert copy.application_properties["relaybus_attempt"] == str(n + 1)
            assert copy.application_properties["relaybus_last_error"] == f"RuntimeError: downstream down ({n})"
            assert copy.application_properties["platform"] == "slack"  # the envelope's own properties kept
            delay = copy.available_at - clock.now
            delays.append(delay)
            clock.advance(delay - 0.01)
            await asyncio.sleep(0.15)  # the host polls every 10 ms: nothing runs before its time
            assert len(s.outcomes) == n
            clock.advance(0.02)
        run = await s.outcome(3)
        assert run.outcome is Settlement.COMPLETED and run.retry is None

    await stack.run(scenario)
    assert [a for a, _ in attempts] == [1, 2, 3]
    assert delays == [pytest.approx(9.0), pytest.approx(18.0)]  # 0.9 of 10 s, then of 20 s
    assert attempts[2][1] - attempts[0][1] == pytest.approx(27.0, abs=0.05)
    assert stack.stored(INTERACTIVE) == [] and stack.dead_letters(INTERACTIVE) == []
    assert stack.host.stats.functions["slack_interactive"].retries_scheduled == 2


async def test_a_handler_always_failing_is_dead_lettered_after_the_configured_attempts(tmp_path: Path) -> None:
    runs: list[int] = []
    clock = FakeClock()
    bot = Bot()

    @bot.slack.action("broken")
    async def broken(ctx: Context) -> None:
        runs.append(ctx.attempt)
        raise RuntimeError(f"still down at attempt {ctx.attempt}")

    env = {"RELAYBUS_RETRY_MAX_ATTEMPTS__slack_interactive": "3", "RELAYBUS_RETRY_BASE_SECONDS": "1"}
    stack = LocalStack(tmp_path, bot, env, clock=clock)
    envelope = block_action("broken")

    async def scenario(s: LocalStack) -> None:
        await s.send(envelope)
        for n in (1, 2):
            await s.outcome(n)
            clock.advance(10)
        run = await s.outcome(3)
        assert run.outcome is Settlement.DEAD_LETTERED
        assert run.dead_letter_reason == MAX_ATTEMPTS_EXCEEDED

    await stack.run(scenario)
    assert runs == [1, 2, 3]
    [dead] = stack.dead_letters(INTERACTIVE)
    assert dead.message_id == f"{envelope.message_id}~3"
    assert dead.dead_letter_reason == "MaxAttemptsExceeded"
    assert dead.dead_letter_description == (
        "the handler failed 3 attempt(s); the last error: RuntimeError: still down at attempt 3"
    )
    assert stack.stored(INTERACTIVE) == []
    assert [o.outcome for o in stack.outcomes] == [Settlement.COMPLETED, Settlement.COMPLETED, Settlement.DEAD_LETTERED]


async def test_retry_after_schedules_the_copy_that_much_later_in_the_same_session(tmp_path: Path) -> None:
    clock = FakeClock()
    bot = Bot()
    seen: list[int] = []

    @bot.slack.event("app_mention")
    async def later(ctx: Context) -> None:
        seen.append(ctx.attempt)
        if ctx.attempt == 1:
            raise Retry(after=2, reason="the ticket system asked us to wait")

    stack = LocalStack(tmp_path, bot, clock=clock, jitter=lambda: 0.0)
    envelope = slack_event("Ev77", channel="C9")

    async def scenario(s: LocalStack) -> None:
        await s.send(envelope)
        await s.outcome(1)
        [copy] = s.stored(EVENTS)
        assert copy.available_at == pytest.approx(clock.now + 2.0)
        assert copy.session_id == "T01:C9"  # ordered per conversation: the copy stays in its session
        assert copy.application_properties["relaybus_last_error"] == "Retry: the ticket system asked us to wait"
        clock.advance(2.0)
        assert (await s.outcome(2)).outcome is Settlement.COMPLETED

    await stack.run(scenario)
    assert seen == [1, 2]


async def test_a_slack_rate_limit_becomes_a_retry_after_its_retry_after(tmp_path: Path) -> None:
    clock = FakeClock()
    bot = Bot()

    @bot.slack.action("post")
    async def post(ctx: Context) -> None:
        await ctx.slack.post_message("C1", "hello")

    async with SlackSandbox() as slack:
        slack.rate_limit_web(1, retry_after=45.0)  # longer than the client waits in-process: SlackRateLimitedError
        env = {"SLACK_BOT_TOKEN": slack.bot_token, "SLACK_API_URL": slack.api_url}
        stack = LocalStack(tmp_path, bot, env, clock=clock, jitter=lambda: 0.0)

        async def scenario(s: LocalStack) -> None:
            await s.send(block_action("post"))
            await s.outcome(1)
            [copy] = s.stored(INTERACTIVE)
            assert copy.available_at == pytest.approx(clock.now + 45.0)
            clock.advance(45.0)
            assert (await s.outcome(2)).outcome is Settlement.COMPLETED

        await stack.run(scenario)
        assert [r.method for r in slack.replies] == ["chat.postMessage"]


# -- duplicates, redeliveries, no outbox ------------------------------------------------------------


async def test_the_bot_connector_keeps_the_last_retry_after_for_the_retry() -> None:
    from devstack.sandbox.teams import TeamsSandbox
    from functions.teams_api import BotConnectorClient
    from shared.teams_auth import StaticTokenProvider

    async with TeamsSandbox() as sandbox:
        sandbox.fail_replies(429, times=5, headers={"Retry-After": "17"})
        client = BotConnectorClient(StaticTokenProvider(sandbox.bot_token), allowed_hosts=("127.0.0.1",), max_retries=0)
        try:
            with pytest.raises(BotConnectorError) as raised:
                await client.send(sandbox.service_url, "a:conv", "hello")
        finally:
            await client.aclose()
    assert raised.value.status == 429 and raised.value.retry_after == 17.0
    assert chosen_delay(raised.value) == 17.0


async def test_a_redelivered_attempt_sends_the_same_retry_which_duplicate_detection_drops(tmp_path: Path) -> None:
    bot = Bot()

    @bot.slack.action("flaky")
    async def flaky(ctx: Context) -> None:
        raise RuntimeError("down")

    backend = LocalQueueBackend(tmp_path / "q.db", queues=queue_configs())
    await backend.open()
    function_outbox.install(LocalOutbox(backend))
    try:
        envelope = block_action("flaky")
        route = ROUTES.route_for(envelope)
        message = build_message(envelope, route)
        settings = FunctionSettings.from_env({})
        for delivery in (1, 2):  # the host crashed after sending the retry, before completing: redelivered
            msg = sb_message(
                message.body, message.message_id, properties=message.application_properties, delivery_count=delivery
            )
            assert await process_message(bot, route, msg, settings, ReplyClients(settings))
        copies = await backend.peek(INTERACTIVE)
        assert [c.message_id for c in copies] == [f"{envelope.message_id}~2"]
        assert backend.duplicates == 1
    finally:
        function_outbox.install(None)
        await backend.close()


async def test_a_redelivered_last_attempt_is_dead_lettered_without_running_the_handler_again() -> None:
    # On Azure the classic binding cannot dead-letter: the DeadLetterError of the last attempt abandons
    # the message, and its redeliveries must not run the handler each time.
    runs: list[int] = []
    bot = Bot()

    @bot.slack.action("broken")
    async def broken(ctx: Context) -> None:
        runs.append(ctx.attempt)
        raise RuntimeError("down")

    envelope = block_action("broken")
    route = ROUTES.route_for(envelope)
    settings = FunctionSettings.from_env({"RELAYBUS_RETRY_MAX_ATTEMPTS": "3"})
    props = {"relaybus_attempt": "3", "relaybus_last_error": "RuntimeError: down"}
    with pytest.raises(DeadLetterError) as first:
        await process_message(
            bot, route, sb_message(envelope.to_body(), "m~3", properties=props), settings, ReplyClients(settings)
        )
    assert first.value.reason == MAX_ATTEMPTS_EXCEEDED and runs == [3]
    with pytest.raises(DeadLetterError) as again:
        await process_message(
            bot,
            route,
            sb_message(envelope.to_body(), "m~3", properties=props, delivery_count=2),
            settings,
            ReplyClients(settings),
        )
    assert again.value.reason == MAX_ATTEMPTS_EXCEEDED and "RuntimeError: down" in again.value.description
    assert runs == [3]


async def test_without_an_outbox_the_error_propagates_so_service_bus_redelivers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    function_outbox.install(None)
    bot = Bot()

    @bot.slack.action("flaky")
    async def flaky(ctx: Context) -> None:
        raise RuntimeError("downstream down")

    envelope = block_action("flaky")
    route = ROUTES.route_for(envelope)
    settings = FunctionSettings.from_env({})  # no ServiceBusConnection: no outbox can be made
    with caplog.at_level(logging.ERROR, logger="functions.triggers"), pytest.raises(RuntimeError, match="downstream"):
        await process_message(
            bot, route, sb_message(envelope.to_body(), envelope.message_id), settings, ReplyClients(settings)
        )
    assert any(
        "cannot schedule the retry" in r.getMessage() and "ServiceBusConnection" in r.getMessage()
        for r in caplog.records
    )


async def test_the_bots_error_handler_does_not_see_retry(tmp_path: Path) -> None:
    handled: list[str] = []
    clock = FakeClock()
    bot = Bot()

    @bot.error
    async def on_error(ctx: Context, exc: Exception) -> None:
        handled.append(type(exc).__name__)

    @bot.slack.action("wait")
    async def wait(ctx: Context) -> None:
        if ctx.attempt == 1:
            raise Retry(after=5)
        raise KeyError("handled by the error handler")

    stack = LocalStack(tmp_path, bot, clock=clock)

    async def scenario(s: LocalStack) -> None:
        await s.send(block_action("wait"))
        await s.outcome(1)
        clock.advance(5)
        await s.outcome(2)

    await stack.run(scenario)
    assert handled == ["KeyError"]  # Retry passed it untouched; the KeyError it took completes the message
    assert stack.stored(INTERACTIVE) == []
