"""Synchronous answers over the Service Bus backend: the message mapping and the session receiver seam.

The fake namespace (`worker.publish.servicebus_fake`) stands in for Service Bus: real SDK messages and
batches, delivering queues, session receivers that one consumer holds at a time, time to live.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from azure.servicebus import ServiceBusMessage
from azure.servicebus.exceptions import (
    ServiceBusAuthorizationError,
    ServiceBusConnectionError,
    SessionCannotBeLockedError,
)

from devstack.sandbox.slack import SlackSandbox
from shared.envelope import Envelope
from shared.errors import PermanentPublishError
from shared.queue_message import QueueMessage
from shared.replies import Reply
from shared.routes import REPLIES
from worker.metrics import Metrics
from worker.publish.servicebus import ServiceBusBackend, ServiceBusBackendOptions, to_servicebus_message
from worker.publish.servicebus_fake import FakeNamespace
from worker.replies import ReplyInbox, ServiceBusReplySource, process_session_id
from worker.runtime import Worker
from worker.settings import load_settings


def test_to_servicebus_message_maps_the_request_reply_fields() -> None:
    at = datetime(2031, 5, 6, 7, 8, 9)  # naive: UTC
    sb = to_servicebus_message(
        QueueMessage(
            "q",
            "m1",
            b"{}",
            session_id="s",
            correlation_id="c",
            reply_to="relaybus-replies",
            reply_to_session_id="worker-1",
            time_to_live=30,
            scheduled_enqueue_time=at,
        )
    )
    assert (sb.message_id, sb.session_id, sb.correlation_id) == ("m1", "s", "c")
    assert (sb.reply_to, sb.reply_to_session_id) == ("relaybus-replies", "worker-1")
    assert sb.time_to_live == timedelta(seconds=30)
    assert sb.scheduled_enqueue_time_utc == at.replace(tzinfo=UTC)
    plain = to_servicebus_message(QueueMessage("q", "m2", b"{}"))
    assert plain.correlation_id is None and plain.reply_to is None and plain.time_to_live is None
    assert plain.scheduled_enqueue_time_utc is None


def backend(ns: FakeNamespace) -> ServiceBusBackend:
    return ServiceBusBackend(
        ns.sender_factory, ServiceBusBackendOptions(linger_ms=0), receiver_factory=ns.receiver_factory
    )


async def send_reply(ns: FakeNamespace, session: str, reply: Reply, ttl: float | None = 30) -> None:
    sender = ns.sender_factory(REPLIES.queue)
    batch = await sender.create_message_batch()
    batch.add_message(
        ServiceBusMessage(
            reply.to_body(),
            session_id=session,
            correlation_id=reply.correlation_id,
            time_to_live=None if ttl is None else timedelta(seconds=ttl),
        )
    )
    await sender.send_messages(batch)


@contextlib.asynccontextmanager
async def inbox_running(ns: FakeNamespace, metrics: Metrics | None = None) -> AsyncIterator[ReplyInbox]:
    inbox = ReplyInbox(ServiceBusReplySource(ns.receiver_factory, REPLIES.queue, process_session_id()), metrics)
    inbox.max_wait = 0.2
    await inbox.open()
    task = asyncio.get_running_loop().create_task(inbox.run())
    try:
        yield inbox
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await inbox.close()  # run() may not have started: close() releases the session all the same


def deadline(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


async def test_two_inboxes_each_receive_only_their_sessions_answers() -> None:
    ns = FakeNamespace(latency=0.002)
    ns.deliver_to(REPLIES.queue)
    async with inbox_running(ns) as one, inbox_running(ns) as two:
        assert one.session_id != two.session_id
        waits = {
            (inbox.session_id, n): inbox.expect(f"{inbox.session_id}-{n}", deadline(3), platform="teams")
            for inbox in (one, two)
            for n in range(3)
        }
        for session, n in waits:
            await send_reply(ns, session, Reply(correlation_id=f"{session}-{n}", body={"n": n}))
        results = {key: await asyncio.wait_for(w, 3) for key, w in waits.items()}
    assert all(r.fallback is None and r.reply is not None for r in results.values())
    assert {key: r.reply.body for key, r in results.items() if r.reply} == {key: {"n": key[1]} for key in waits}
    assert one.metrics.value("relaybus_replies_total", outcome="unknown") == 0
    assert two.metrics.value("relaybus_replies_total", outcome="unknown") == 0


async def test_a_session_is_held_by_one_receiver_and_released_on_stop() -> None:
    ns = FakeNamespace()
    ns.deliver_to(REPLIES.queue)
    async with inbox_running(ns) as inbox:
        other = ns.receiver_factory(REPLIES.queue, inbox.session_id)
        with pytest.raises(SessionCannotBeLockedError):
            await other.__aenter__()
    again = ns.receiver_factory(REPLIES.queue, inbox.session_id)
    await again.__aenter__()  # released: a new receiver may take it
    await again.close()


async def test_expired_answers_are_not_delivered() -> None:
    ns = FakeNamespace()
    ns.deliver_to(REPLIES.queue)
    session = process_session_id()
    await send_reply(ns, session, Reply(correlation_id="old", body={}), ttl=1)  # whole seconds, as the SDK keeps
    await send_reply(ns, session, Reply(correlation_id="new", body={}), ttl=30)
    await asyncio.sleep(1.05)
    source = ServiceBusReplySource(ns.receiver_factory, REPLIES.queue, session)
    (got,) = await source.receive(0.05, asyncio.Event())
    assert got.correlation_id == "new"
    assert await source.receive(0.05, asyncio.Event()) == []
    await source.close()
    assert ns.mailbox(REPLIES.queue, session).expired == 1


async def test_receive_failures_are_logged_and_retried_with_a_fresh_receiver(caplog: pytest.LogCaptureFixture) -> None:
    ns = FakeNamespace()
    ns.deliver_to(REPLIES.queue)
    ns.receive_failures.append(ServiceBusConnectionError(message="link detached"))
    caplog.set_level(logging.WARNING, logger="worker.replies")
    async with inbox_running(ns) as inbox:
        wait = inbox.expect("c1", deadline(3), platform="slack", interaction="/ticket-count")
        await send_reply(ns, inbox.session_id, Reply(correlation_id="c1", body={"text": "ok"}))
        result = await asyncio.wait_for(wait, 3)
    assert result.reply is not None and result.reply.body == {"text": "ok"}
    assert inbox.receive_errors == 1
    assert len(ns.receivers) == 2  # the failed one was closed, a new one took the session
    assert any("link detached" in r.getMessage() for r in caplog.records)


async def test_a_reply_queue_the_worker_may_not_read_stops_it_at_start() -> None:
    ns = FakeNamespace()
    ns.open_failures.append(ServiceBusAuthorizationError(message="Listen claim required"))
    settings = load_settings({"RELAYBUS_HTTP_PORT": "0"})
    worker = Worker(settings, backend=backend(ns), connectors=[], serve_http=False)
    result = await asyncio.wait_for(worker.run(asyncio.Event()), 5)
    assert "reply queue 'relaybus-replies' could not be opened" in result.fatal["queue"]
    assert "ServiceBusAuthorizationError" in result.fatal["queue"]
    source = ServiceBusReplySource(ns.receiver_factory, REPLIES.queue, "s")
    ns.open_failures.append(ServiceBusAuthorizationError(message="no"))
    with pytest.raises(PermanentPublishError):
        await source.open()


async def test_a_slack_command_is_answered_through_the_service_bus_backend(tmp_path: Path) -> None:
    """The whole loop over the fake namespace: publish with ReplyTo/ReplyToSessionId, a function receives the
    envelope from its queue and sends the reply to that session, the worker acks with the answer."""
    ns = FakeNamespace(latency=0.003)
    ns.deliver_to("slack-commands", REPLIES.queue)
    async with SlackSandbox(seed=21) as slack:
        settings = load_settings(
            {
                "SLACK_APP_TOKEN": slack.app_token,
                "SLACK_API_URL": slack.api_url,
                "SLACK_CONNECTIONS": "1",
                "SLACK_ANSWER_MARGIN_MS": "2000",
            }
        )
        worker = Worker(settings, backend=backend(ns), serve_http=False)
        stopping = asyncio.Event()
        run = asyncio.get_running_loop().create_task(worker.run(stopping))
        try:
            await slack.wait_connections(1)
            command = await slack.send_slash_command("/ticket-count")
            trigger = ns.receiver("slack-commands")
            (message,) = await trigger.receive_messages(max_wait_time=3)
            envelope = Envelope.from_body(b"".join(message.body))
            assert envelope.reply_to is not None
            assert (message.reply_to, message.reply_to_session_id) == (
                envelope.reply_to.queue,
                envelope.reply_to.session_id,
            )
            assert message.message_id == envelope.message_id
            answer = Reply(correlation_id=envelope.message_id, body={"text": "3 open tickets"})
            await send_reply(ns, envelope.reply_to.session_id, answer)
            record = await slack.wait_ack(command.key, within=3)
        finally:
            stopping.set()
            result = await asyncio.wait_for(run, 10)
    assert result.ok
    assert record is not None and record.payload == {"text": "3 open tickets"}
    assert worker.metrics.value("relaybus_replies_total", outcome="answered") == 1
    assert all(r.closed for r in ns.receivers)  # the session was released at shutdown
