"""Slack interactions answered in the ack by a function, through real sockets and a real queue file.

The sandbox Slack delivers the interaction to the worker over Socket Mode; the worker publishes it to the
local queue with `reply_to` and waits; a stand-in for the function side (`FunctionPlayer`) reads it from the
queue file and sends a `Reply` to the worker's session; the worker acks with the answer as `payload`, or
with the fallback (a plain ack). At the moment the sandbox records each ack, the envelope is in its queue.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from devstack.sandbox.slack import AckRecord, SlackSandbox
from shared.envelope import Envelope
from shared.replies import Reply
from tests.replies_helpers import FunctionPlayer, in_queue, reply, worker_on

MARGIN_MS = "2400"  # the worker waits 3000 - 2400 = 600 ms before it sends the fallback


def settings(slack: SlackSandbox, margin: str = MARGIN_MS) -> dict[str, str]:
    return {
        "SLACK_APP_TOKEN": slack.app_token,
        "SLACK_API_URL": slack.api_url,
        "SLACK_CONNECTIONS": "1",
        "SLACK_ANSWER_MARGIN_MS": margin,
    }


def ticket_bot(envelope: Envelope) -> Reply | None:
    """What the example bot answers (issue 10), played here without the function side."""
    payload = envelope.payload
    if envelope.event_type == "/ticket-count":
        return reply(envelope, {"text": "3 open tickets", "response_type": "ephemeral"})
    if envelope.event_type == "view_submission":
        title = payload["view"]["state"]["values"]["title"]["title_input"]["value"]
        if not title.strip():
            return reply(envelope, {"response_action": "errors", "errors": {"title": "Give the ticket a title"}})
        return reply(envelope, {"response_action": "clear"})
    if envelope.event_type == "block_suggestion":
        people = ["alice", "alfred", "bob"]
        typed = payload["value"]
        options = [{"text": {"type": "plain_text", "text": p}, "value": p} for p in people if p.startswith(typed)]
        return reply(envelope, {"options": options})
    return None


class AckWatch:
    """Records, at the moment the sandbox receives each ack, whether its envelope is in the queue file."""

    def __init__(self, slack: SlackSandbox, path: Path) -> None:
        self.seen: dict[str, bool] = {}
        self._path = path
        slack.on_ack = self._on_ack

    def _on_ack(self, record: AckRecord) -> None:
        self.seen[record.key] = in_queue(self._path, record.key)


async def answered(slack: SlackSandbox, key: str) -> AckRecord:
    record = await slack.wait_ack(key, within=5)
    assert record is not None, "no ack at all"
    return record


async def test_each_interaction_is_answered_with_its_body_and_in_its_queue_first(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    async with SlackSandbox(seed=1) as slack:
        watch = AckWatch(slack, path)
        async with worker_on(path, settings(slack)) as worker:
            await slack.wait_connections(1)
            async with FunctionPlayer(path, ticket_bot).running() as player:
                count = await slack.send_slash_command("/ticket-count")
                empty = await slack.send_view_submission("ticket_modal", {"title": {"title_input": "  "}})
                filled = await slack.send_view_submission("ticket_modal", {"title": {"title_input": "Printer"}})
                typed = await slack.send_block_suggestion("ticket_assignee", "al", block_id="assignee")
                records = {k.key: await answered(slack, k.key) for k in (count, empty, filled, typed)}
    assert records[count.key].payload == {"text": "3 open tickets", "response_type": "ephemeral"}
    assert records[empty.key].payload == {"response_action": "errors", "errors": {"title": "Give the ticket a title"}}
    assert records[filled.key].payload == {"response_action": "clear"}
    assert records[typed.key].payload == {
        "options": [
            {"text": {"type": "plain_text", "text": "alice"}, "value": "alice"},
            {"text": {"type": "plain_text", "text": "alfred"}, "value": "alfred"},
        ]
    }
    assert all(not r.late for r in records.values())
    assert all(r.ms < 600 for r in records.values()), [r.ms for r in records.values()]  # before any fallback
    assert watch.seen == dict.fromkeys(records, True)  # each envelope was in its queue when Slack got the ack
    queues = {sent.envelope.envelope_id: sent.queue for sent in player.sent}
    assert queues[count.key] == "slack-commands"
    assert queues[empty.key] == queues[filled.key] == queues[typed.key] == "slack-answers"
    assert all(e.reply_to is not None and e.reply_to.session_id == worker.replies.session_id for e in player.received)
    assert worker.metrics.value("relaybus_replies_total", outcome="answered") == 4
    assert worker.metrics.total("relaybus_answer_fallbacks_total") == 0
    assert slack.stats.acked == 4 and slack.stats.late_acks == 0


async def test_no_answer_in_time_gets_the_plain_ack_before_the_deadline(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"

    async def slow(envelope: Envelope) -> Reply:
        await asyncio.sleep(1.2)  # past the worker's deadline (600 ms here), answered anyway
        return reply(envelope, {"text": "too late"})

    async with SlackSandbox(seed=2) as slack:
        watch = AckWatch(slack, path)
        async with worker_on(path, settings(slack)) as worker:
            await slack.wait_connections(1)
            async with FunctionPlayer(path, slow).running() as player:
                command = await slack.send_slash_command("/ticket-count")
                record = await answered(slack, command.key)
                await slack.wait_for(lambda: worker.metrics.value("relaybus_replies_total", outcome="late") == 1, 3)
                await asyncio.sleep(0.1)
            assert [s.reply is not None for s in player.sent] == [True]
    assert record.payload is None and not record.late  # the fallback: a plain ack, in time
    assert 550 <= record.ms < 1000
    assert watch.seen == {command.key: True}
    assert worker.metrics.value("relaybus_answer_fallbacks_total", platform="slack", reason="timeout") == 1
    assert worker.metrics.value("relaybus_replies_total", outcome="answered") == 0
    assert len([a for a in slack.acks if a.key == command.key]) == 1  # the late answer is never sent
    assert slack.stats.late_acks == 0


async def test_a_reply_with_an_error_sends_the_fallback_at_once(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    # margin 300 ms: without the error reply the worker would wait 2.7 s
    async with SlackSandbox(seed=3) as slack, worker_on(path, settings(slack, margin="300")) as worker:
        watch = AckWatch(slack, path)
        await slack.wait_connections(1)
        bot = FunctionPlayer(path, lambda e: reply(e, error="KeyError: 'title'"))
        async with bot.running():
            view = await slack.send_view_submission("ticket_modal", {"title": {"title_input": "x"}})
            record = await answered(slack, view.key)
    assert record.payload is None and record.ms < 1000  # not the 2.7 s deadline
    assert watch.seen == {view.key: True}
    assert worker.metrics.value("relaybus_answer_fallbacks_total", platform="slack", reason="handler_error") == 1
    assert worker.metrics.value("relaybus_replies_total", outcome="error") == 1


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"response_action": "close"}, "response_action errors|update|push|clear"),
        ({"response_action": "errors", "errors": {}}, "non-empty `errors`"),
        ({"response_action": "update", "view": {"blocks": ["x" * 21_000]}}, "Slack drops frames of 20 KB"),
    ],
    ids=["wrong-action", "empty-errors", "too-large"],
)
async def test_an_answer_that_does_not_fit_gets_the_fallback_with_its_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, body: dict[str, Any], reason: str
) -> None:
    path = tmp_path / "queue.db"
    caplog.set_level(logging.WARNING, logger="worker.replies")
    async with SlackSandbox(seed=4) as slack, worker_on(path, settings(slack, margin="300")) as worker:
        watch = AckWatch(slack, path)
        await slack.wait_connections(1)
        async with FunctionPlayer(path, lambda e: reply(e, body)).running():
            view = await slack.send_view_submission("ticket_modal", {"title": {"title_input": "x"}})
            record = await answered(slack, view.key)
    assert record.payload is None and record.ms < 1000
    assert watch.seen == {view.key: True}
    assert slack.stats.oversized_frames == 0  # the socket stayed up
    assert worker.metrics.value("relaybus_answer_fallbacks_total", platform="slack", reason="invalid") == 1
    assert worker.metrics.value("relaybus_replies_total", outcome="invalid") == 1
    line = next(r.getMessage() for r in caplog.records if "invalid answer" in r.getMessage())
    assert reason in line and view.key in line and "view_submission" in line


async def test_an_ack_frame_over_20_kb_is_refused_with_a_reason_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The answer passes the shape check (which allows ~128 bytes for the frame) but a 250-character
    envelope id pushes the frame over the limit: the worker sends the plain ack, logs why, counts it."""
    path = tmp_path / "queue.db"
    caplog.set_level(logging.WARNING)
    envelope_id = "E" * 250
    body = {"text": "x" * (20 * 1024 - 128 - 40)}
    async with SlackSandbox(seed=5) as slack, worker_on(path, settings(slack, margin="300")) as worker:
        await slack.wait_connections(1)
        async with FunctionPlayer(path, lambda e: reply(e, body)).running():
            payload = {"command": "/ticket-count", "team_id": slack.team_id, "channel_id": "C1", "text": ""}
            key = await slack.deliver("slash_commands", payload, accepts_response_payload=True, envelope_id=envelope_id)
            record = await answered(slack, key)
    assert record.payload is None
    assert slack.stats.oversized_frames == 0
    assert worker.metrics.value("relaybus_answer_fallbacks_total", platform="slack", reason="invalid") == 1
    assert any("20 KB limit" in r.getMessage() and envelope_id in r.getMessage() for r in caplog.records)


async def test_replies_nobody_waits_for_are_logged_counted_and_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An unknown correlation id, a body that is not a reply, a CorrelationId that is not the body's, a second
    answer to one envelope: each a clear log line and a counter; the worker goes on answering."""
    path = tmp_path / "queue.db"
    caplog.set_level(logging.WARNING, logger="worker.replies")
    async with SlackSandbox(seed=6) as slack, worker_on(path, settings(slack)) as worker:
        await slack.wait_connections(1)
        async with FunctionPlayer(path, ticket_bot).running() as player:
            first = await slack.send_slash_command("/ticket-count")
            assert (await answered(slack, first.key)).payload is not None
            envelope = player.received[0]
            await player.send_reply(envelope, Reply(correlation_id="nobody-waits-for-this", body={"text": "?"}))
            await player.send_reply(envelope, reply(envelope, {"text": "again"}))  # after it was answered
            forged = reply(envelope, {"text": "?"})  # CorrelationId and body disagree
            await player.send_reply(envelope, forged, correlation_id="someone-else")
            assert player.backend is not None and envelope.reply_to is not None
            from shared.queue_message import QueueMessage

            await player.backend.send(
                QueueMessage(
                    envelope.reply_to.queue,
                    "not-a-reply",
                    b"\xff not json",
                    session_id=envelope.reply_to.session_id,
                )
            )
            metrics = worker.metrics

            def counted() -> bool:
                return (
                    metrics.value("relaybus_replies_total", outcome="unknown") == 1
                    and metrics.value("relaybus_replies_total", outcome="late") == 1
                    and metrics.value("relaybus_replies_total", outcome="invalid") == 2
                )

            await slack.wait_for(counted, 3)
            second = await slack.send_slash_command("/ticket-count")  # still answering
            assert (await answered(slack, second.key)).payload == {
                "text": "3 open tickets",
                "response_type": "ephemeral",
            }
    lines = [r.getMessage() for r in caplog.records]
    assert any("does not wait for" in line and "nobody-waits-for-this" in line for line in lines)
    assert any("late reply dropped" in line and envelope.message_id in line for line in lines)
    assert any("the body is not a reply" in line and "not-a-reply" in line for line in lines)
    assert any("CorrelationId differs" in line and "someone-else" in line for line in lines)
    assert len([a for a in slack.acks if a.key == first.key]) == 1


async def test_a_publish_that_fails_is_not_acked_and_not_waited_for(tmp_path: Path) -> None:
    """The ack rule holds for answers too: when the queue refuses the envelope (over the 256 KB message
    limit) nothing is acked, and nothing waits for an answer."""
    path = tmp_path / "queue.db"
    async with SlackSandbox(seed=7, ack_deadline=1.0) as slack, worker_on(path, settings(slack)) as worker:
        await slack.wait_connections(1)
        async with FunctionPlayer(path, ticket_bot).running() as player:
            command = await slack.send_slash_command("/ticket-count", text="x" * 300_000)
            assert await slack.wait_ack(command.key, within=3) is None
            assert worker.replies is not None and worker.replies.waiting == 0
            assert player.received == []
    assert slack.stats.expired == 1
    assert worker.metrics.total("relaybus_answer_fallbacks_total") == 0


def test_events_without_accepts_response_payload_carry_no_reply_to(tmp_path: Path) -> None:
    """An events_api envelope (and a block action) is published without `reply_to` and acked at once."""

    async def main() -> list[dict[str, Any]]:
        path = tmp_path / "queue.db"
        async with SlackSandbox(seed=8) as slack, worker_on(path, settings(slack)):
            await slack.wait_connections(1)
            event_id = await slack.send_user_message("hello")
            action = await slack.send_block_action("approve", "1")
            await slack.wait_acked_keys({event_id, action.key})
        from localqueue import LocalQueueStore

        with LocalQueueStore(path, create=False) as store:
            return [json.loads(m.body) | {"_reply_to": m.reply_to} for m in store.messages()]

    bodies = asyncio.run(main())
    assert len(bodies) == 2
    assert all(b["reply_to"] is None and b["_reply_to"] is None and b["accepts_response"] is False for b in bodies)


async def test_an_ack_after_slacks_deadline_is_ignored_as_slack_ignores_it(tmp_path: Path) -> None:
    """A Slack that gives up after 300 ms (the worker waits 600 ms here): the ack arrives late, Slack does
    not take its payload, and the interaction is not retried (the user saw an error)."""
    path = tmp_path / "queue.db"

    async def slow(envelope: Envelope) -> Reply:
        await asyncio.sleep(0.4)
        return reply(envelope, {"text": "3 open tickets"})

    async with SlackSandbox(seed=9, ack_deadline=0.3) as slack, worker_on(path, settings(slack)):
        await slack.wait_connections(1)
        async with FunctionPlayer(path, slow).running():
            command = await slack.send_slash_command("/ticket-count")
            await slack.wait_for(lambda: slack.ack_for(command.key) is not None, 3)
    record = slack.ack_for(command.key)
    assert record is not None and record.late and record.payload == {"text": "3 open tickets"}
    assert command.key not in slack.ack_payloads  # not shown to the user
    assert slack.stats.late_acks == 1 and slack.stats.expired == 1 and slack.stats.redelivered == 0
