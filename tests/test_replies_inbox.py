"""The reply inbox's own rules: session ids, what it remembers, and a worker without one."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr

from devstack.sandbox.slack import SlackSandbox
from localqueue import LocalQueueBackend
from shared.errors import ConfigurationError
from shared.replies import Reply
from shared.routes import REPLIES
from worker.dedupe import DedupeWindow
from worker.handoff import Handoff
from worker.metrics import Metrics
from worker.publish import EnvelopePublisher
from worker.publish.memory import MemoryBackend
from worker.replies import IncomingReply, LocalReplySource, ReplyInbox, process_session_id
from worker.settings import load_settings
from worker.slack.connector import SlackConnector
from worker.slack.settings import SlackSettings


def test_session_ids_are_per_process_unique_and_fit_a_session_id() -> None:
    first, second = process_session_id("host", 42), process_session_id("host", 42)
    assert first.startswith("host-42-") and first != second  # a restart with the same pid differs too
    long = process_session_id("h" * 300 + ".example/with spaces", 4_000_000)
    assert len(long) <= 128 and " " not in long and "/" not in long
    assert process_session_id("", 1).startswith("host-1-")


def _incoming(correlation_id: str, body: dict[str, object] | None = None) -> IncomingReply:
    return IncomingReply(Reply(correlation_id=correlation_id, body=body).to_body(), "m", correlation_id, "s")


async def test_late_and_unknown_are_told_apart_within_a_bounded_memory(tmp_path: Path) -> None:
    async with LocalQueueBackend(tmp_path / "q.db") as backend:
        metrics = Metrics()
        inbox = ReplyInbox(LocalReplySource(backend, REPLIES.queue, "s"), metrics, remember=2)
        now = datetime.now(UTC)
        waits = [inbox.expect(f"c{n}", now + timedelta(milliseconds=20), platform="teams") for n in range(3)]
        results = await asyncio.gather(*waits)
        assert [r.fallback for r in results] == ["timeout"] * 3
        assert metrics.value("relaybus_answer_fallbacks_total", platform="teams", reason="timeout") == 3
        for n in range(3):
            inbox.handle(_incoming(f"c{n}", {}))
        assert metrics.value("relaybus_replies_total", outcome="late") == 2  # c1, c2: remembered
        assert metrics.value("relaybus_replies_total", outcome="unknown") == 1  # c0: forgotten (memory of 2)
        assert inbox.waiting == 0


async def test_a_wait_whose_publish_failed_is_discarded_without_a_fallback(tmp_path: Path) -> None:
    async with LocalQueueBackend(tmp_path / "q.db") as backend:
        metrics = Metrics()
        inbox = ReplyInbox(LocalReplySource(backend, REPLIES.queue, "s"), metrics)
        wait = inbox.expect("c", datetime.now(UTC) + timedelta(seconds=5), platform="slack")
        inbox.discard("c")
        await asyncio.sleep(0)
        assert not wait.done() and inbox.waiting == 0
        assert metrics.total("relaybus_answer_fallbacks_total") == 0
        inbox.handle(_incoming("c", {"text": "x"}))
        assert metrics.value("relaybus_replies_total", outcome="late") == 1


async def test_without_an_inbox_an_interaction_is_acked_plainly_and_carries_no_reply_to() -> None:
    """The in-memory backend takes no replies: envelopes that accept a payload are acked as before."""
    memory = MemoryBackend()
    metrics = Metrics()
    handoff = Handoff(EnvelopePublisher(memory), DedupeWindow(), metrics)
    assert handoff.replies is None
    async with SlackSandbox(seed=31) as slack:
        settings = SlackSettings(app_token=SecretStr(slack.app_token), api_url=slack.api_url, connections=1)
        connector = SlackConnector(settings, handoff, metrics)
        stopping = asyncio.Event()
        task = asyncio.get_running_loop().create_task(connector.run(stopping))
        try:
            await slack.wait_connections(1)
            command = await slack.send_slash_command("/ticket-count")
            record = await slack.wait_ack(command.key, within=3)
        finally:
            stopping.set()
            await asyncio.wait_for(task, 10)
    assert record is not None and record.payload is None and record.ms < 500
    (message,) = memory.all_messages()
    assert message.queue == "slack-commands" and message.reply_to is None


def test_the_new_settings_are_checked_with_the_settings_name() -> None:
    with pytest.raises(ConfigurationError, match=r"RELAYBUS_REPLY_QUEUE.*the queue of SLACK_EVENTS_QUEUE"):
        load_settings({"RELAYBUS_REPLY_QUEUE": "slack-events"})
    with pytest.raises(ConfigurationError, match="SLACK_ANSWER_MARGIN_MS"):
        load_settings({"SLACK_APP_TOKEN": "xapp-1-x", "SLACK_ANSWER_MARGIN_MS": "3000"})
    with pytest.raises(ConfigurationError, match="TEAMS_ANSWER_MARGIN_MS"):
        load_settings(
            {
                "TEAMS_APP_ID": "a",
                "TEAMS_STATIC_TOKEN": "t",
                "TEAMS_BASE_URL": "http://127.0.0.1:1",
                "TEAMS_ANSWER_MARGIN_MS": "-1",
            }
        )
    settings = load_settings({"RELAYBUS_REPLY_QUEUE": "my-replies", "SLACK_APP_TOKEN": "xapp-1-x"})
    assert settings.reply_queue == "my-replies" and settings.queue_names["RELAYBUS_REPLY_QUEUE"] == "my-replies"
    assert settings.slack is not None and settings.slack.answer_margin_ms == 300
