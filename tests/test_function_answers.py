"""Synchronous answers on the function side: process_message sends the handler's answer to the worker that
waits (reply queue, its session, CorrelationId, time to live), through the registered functions and the local
functions host over a real local queue file."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from devstack.funchost import LocalOutbox, Settlement
from functions import Bot, Context, ReplyClients
from functions import outbox as function_outbox
from functions.responses import CommandReply, InvokeResponse, Options
from functions.settings import FunctionSettings
from functions.triggers import process_message
from localqueue import LocalQueueBackend, queue_configs
from shared.envelope import Kind, ReplyAddress, utcnow
from shared.errors import DeadLetterError, TransientPublishError
from shared.queue_message import QueueMessage, build_message
from shared.replies import problem
from shared.routes import REPLIES, ROUTES
from tests.factories import slack_event, teams_message
from tests.functions_local import (
    WORKER_SESSION,
    LocalStack,
    block_action,
    block_suggestion,
    reply_address,
    sb_message,
    slack_envelope,
    slash_command,
    teams_invoke,
)


def command_bot() -> Bot:
    bot = Bot()

    @bot.slack.command("/count")
    async def count(ctx: Context) -> CommandReply:
        return CommandReply("3 open tickets", response_type="ephemeral")

    @bot.slack.command("/quiet")
    async def quiet(ctx: Context) -> None:
        return None

    @bot.slack.command("/boom")
    async def boom(ctx: Context) -> CommandReply:
        raise RuntimeError("database down")

    @bot.slack.command("/dict")
    async def raw(ctx: Context) -> object:
        return {"text": "a dict, not an answer"}

    return bot


async def test_the_answer_goes_to_the_waiting_worker_with_its_session_correlation_and_ttl(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path, command_bot())
    envelope = slash_command("/count")

    async def scenario(s: LocalStack) -> None:
        await s.send(envelope)
        run = await s.outcome(1)
        assert run.outcome is Settlement.COMPLETED

    await stack.run(scenario)
    [(message, reply)] = stack.replies()
    assert message.queue == REPLIES.queue
    assert message.session_id == WORKER_SESSION == envelope.reply_to.session_id  # type: ignore[union-attr]
    assert message.correlation_id == envelope.message_id == reply.correlation_id
    assert message.time_to_live == REPLIES.time_to_live.total_seconds() == 30
    assert (reply.status, reply.body, reply.error) == (
        200,
        {"text": "3 open tickets", "response_type": "ephemeral"},
        None,
    )
    assert problem("slack", "/count", reply) is None
    assert stack.stored(ROUTES.get("slack_commands").queue) == []  # the command itself was completed
    assert stack.host.stats.functions["slack_commands"].answers_sent == 1
    assert [m.correlation_id for m in stack.outcomes[0].sent] == [envelope.message_id]


async def test_a_handler_that_answers_nothing_sends_the_plain_ack_at_once(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path, command_bot())

    async def scenario(s: LocalStack) -> None:
        await s.send(slash_command("/quiet"))
        await s.send(slash_command("/nobody-listens"))
        await s.outcome(2)

    await stack.run(scenario)
    replies = [reply for _, reply in stack.replies()]
    assert len(replies) == 2
    assert all((r.status, r.body, r.error) == (200, None, None) for r in replies)  # the worker acks without waiting


async def test_a_handler_error_tells_the_worker_at_once_then_the_message_is_retried(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path, command_bot())
    envelope = slash_command("/boom")

    async def scenario(s: LocalStack) -> None:
        await s.send(envelope)
        await s.outcome(1)

    await stack.run(scenario)
    [(message, reply)] = stack.replies()
    assert message.correlation_id == envelope.message_id
    assert reply.error == "handler raised RuntimeError" and reply.body is None
    assert "database down" not in message.body.decode()  # the platform side gets no internals
    [retry] = stack.stored(ROUTES.get("slack_commands").queue)
    assert retry.message_id == f"{envelope.message_id}~2"
    assert retry.application_properties["relaybus_attempt"] == "2"
    assert retry.application_properties["relaybus_last_error"] == "RuntimeError: database down"
    assert stack.outcomes[0].outcome is Settlement.COMPLETED  # completed, with a scheduled copy
    assert stack.outcomes[0].retry is not None
    # order: the error answer was sent before the retry was scheduled
    assert [m.queue for m in stack.outcomes[0].sent] == [REPLIES.queue, ROUTES.get("slack_commands").queue]


def answering_bot() -> Bot:
    bot = Bot()

    @bot.slack.event("app_mention")
    async def mention(ctx: Context) -> CommandReply:
        return CommandReply("an event takes no answer")

    @bot.slack.action("press")
    async def press(ctx: Context) -> CommandReply:
        return CommandReply("nor does a button without accepts_response_payload")

    @bot.teams.message
    async def message(ctx: Context) -> InvokeResponse:
        return InvokeResponse(200, {"nor": "a Teams message activity"})

    return bot


async def test_an_answer_for_an_envelope_that_takes_none_is_an_error_line_and_nothing_is_sent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stack = LocalStack(tmp_path, answering_bot())
    forged = slack_envelope(
        Kind.INTERACTIVE,
        {"type": "block_actions", "actions": [{"action_id": "press"}], "api_app_id": "A01"},
        answerable=False,
        reply_to=reply_address(),  # even with a reply address: accepts_response is false
    )

    async def scenario(s: LocalStack) -> None:
        for envelope in (slack_event("Ev42"), block_action("press"), teams_message("a9"), forged):
            await s.send(envelope)
        await s.outcome(4)

    with caplog.at_level(logging.ERROR, logger="functions.triggers"):
        await stack.run(scenario)
    assert stack.stored(REPLIES.queue) == []
    lines = [r.getMessage() for r in caplog.records if "takes no answer" in r.getMessage()]
    assert len(lines) == 4, lines
    assert any("platform=slack kind=events_api" in line and "CommandReply" in line for line in lines)
    assert any("platform=teams kind=activity" in line and "only Teams invokes" in line for line in lines)
    assert all(run.outcome is Settlement.COMPLETED for run in stack.outcomes)


async def test_a_return_value_that_is_not_an_answer_is_an_error_line_and_the_plain_ack_goes_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stack = LocalStack(tmp_path, command_bot())

    async def scenario(s: LocalStack) -> None:
        await s.send(slash_command("/dict"))
        await s.outcome(1)

    with caplog.at_level(logging.ERROR, logger="functions.triggers"):
        await stack.run(scenario)
    [(_, reply)] = stack.replies()
    assert reply.body is None and reply.error is None
    assert any("returned dict" in r.getMessage() and "not an answer" in r.getMessage() for r in caplog.records)


async def test_an_answer_that_does_not_fit_its_interaction_is_logged_and_left_to_the_worker_to_refuse(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bot = Bot()

    @bot.slack.options("pick")
    async def wrong(ctx: Context) -> CommandReply:
        return CommandReply("options were asked for")

    stack = LocalStack(tmp_path, bot)

    async def scenario(s: LocalStack) -> None:
        await s.send(block_suggestion("pick", "x"))
        await s.outcome(1)

    with caplog.at_level(logging.ERROR, logger="functions.triggers"):
        await stack.run(scenario)
    [(_, reply)] = stack.replies()
    assert problem("slack", "block_suggestion", reply) is not None  # the worker refuses it and falls back
    assert any("does not fit" in r.getMessage() and "options" in r.getMessage() for r in caplog.records)


async def test_a_retry_attempt_sends_no_answer(tmp_path: Path) -> None:
    # the platform got its fallback when attempt 1 failed; attempt 2 may still do the work
    ran: list[int] = []
    bot = Bot()

    @bot.slack.options("pick")
    async def pick(ctx: Context) -> Options:
        ran.append(ctx.attempt)
        return Options([])

    backend = LocalQueueBackend(tmp_path / "q.db", queues=queue_configs())
    await backend.open()
    function_outbox.install(LocalOutbox(backend))
    try:
        envelope = block_suggestion("pick", "")
        route = ROUTES.route_for(envelope)
        message = build_message(envelope, route)
        msg = sb_message(
            message.body,
            f"{message.message_id}~2",
            properties={**message.application_properties, "relaybus_attempt": "2"},
        )
        settings = FunctionSettings.from_env({})
        assert await process_message(bot, route, msg, settings, ReplyClients(settings))
        assert ran == [2]
        assert await backend.peek(REPLIES.queue) == []
    finally:
        function_outbox.install(None)
        await backend.close()


class BrokenOutbox:
    def __init__(self) -> None:
        self.tried: list[QueueMessage] = []

    async def send(self, message: QueueMessage) -> None:
        self.tried.append(message)
        raise TransientPublishError(f"queue={message.queue}: ServiceBusConnectionError: link detached")

    async def close(self) -> None:
        return None


async def test_an_answer_that_cannot_be_sent_is_logged_and_the_message_still_completes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken = BrokenOutbox()
    function_outbox.install(broken)
    try:
        envelope = teams_invoke("task/fetch", {})
        bot = Bot()

        @bot.teams.invoke("task/fetch")
        async def fetch(ctx: Context) -> InvokeResponse:
            return InvokeResponse(200, {"task": {"type": "message", "value": "hi"}})

        route = ROUTES.route_for(envelope)
        msg = sb_message(envelope.to_body(), envelope.message_id)
        settings = FunctionSettings.from_env({})
        with caplog.at_level(logging.ERROR, logger="functions.triggers"):
            assert await process_message(bot, route, msg, settings, ReplyClients(settings))
        assert [m.correlation_id for m in broken.tried] == [envelope.message_id]
        assert any("answer not sent" in r.getMessage() and "link detached" in r.getMessage() for r in caplog.records)
    finally:
        function_outbox.install(None)


async def test_a_dead_letter_error_with_a_waiting_worker_sends_the_error_answer_first() -> None:
    sent: list[QueueMessage] = []

    class Recording:
        async def send(self, message: QueueMessage) -> None:
            sent.append(message)

        async def close(self) -> None:
            return None

    function_outbox.install(Recording())
    try:
        bot = Bot()

        @bot.teams.invoke("composeExtension/query")
        async def hopeless(ctx: Context) -> None:
            raise DeadLetterError("BadQuery", "no such command")

        envelope = teams_invoke("composeExtension/query", {"commandId": "x"})
        route = ROUTES.route_for(envelope)
        settings = FunctionSettings.from_env({})
        msg = sb_message(envelope.to_body(), envelope.message_id)
        with pytest.raises(DeadLetterError):
            await process_message(bot, route, msg, settings, ReplyClients(settings))
        [answer] = sent
        assert answer.correlation_id == envelope.message_id and b'"error"' in answer.body
    finally:
        function_outbox.install(None)


async def test_a_reply_address_off_the_reply_queue_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # a forged envelope cannot make the function send into another queue (its retries' own, say)
    stack = LocalStack(tmp_path, command_bot())
    elsewhere = ReplyAddress(queue=ROUTES.get("slack_events").queue, session_id="T01:C01", deadline=utcnow())
    answered = slash_command("/count", reply_to=elsewhere)
    failing = slash_command("/boom", reply_to=elsewhere)

    async def scenario(s: LocalStack) -> None:
        await s.send(answered)
        await s.send(failing)
        await s.outcome(2)

    with caplog.at_level(logging.ERROR, logger="functions.triggers"):
        await stack.run(scenario)
    assert stack.stored(ROUTES.get("slack_events").queue) == []
    assert stack.stored(REPLIES.queue) == []
    assert any("not the reply queue 'relaybus-replies'" in r.getMessage() for r in caplog.records)
    [retry] = stack.stored(ROUTES.get("slack_commands").queue)  # the failing one is still retried
    assert retry.message_id == f"{failing.message_id}~2"
