"""The Slack connector end to end against the sandbox Slack (real sockets on 127.0.0.1, port 0).

Timings are shrunk (ack deadline 0.5 s, pings 0.1 s, watchdog 0.6 s) so the module stays fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import SecretStr

from devstack.sandbox.slack import SlackSandbox
from worker.connector import FatalConnectorError
from worker.dedupe import DedupeWindow
from worker.handoff import Breaker, Handoff
from worker.lifecycle import ConnectionStatus
from worker.metrics import Metrics
from worker.publish import EnvelopePublisher
from worker.publish.memory import MemoryBackend
from worker.slack.connector import SlackConnector
from worker.slack.settings import SlackSettings

FAST: dict[str, Any] = {
    "ping_interval": 0.1,
    "liveness_timeout": 0.6,
    "hello_timeout": 2.0,
    "open_timeout": 2.0,
    "close_timeout": 0.5,
    "drain_timeout": 2.0,
    "backoff_base": 0.05,
    "backoff_cap": 0.2,
}


def fast_sandbox(**overrides: Any) -> SlackSandbox:
    options: dict[str, Any] = {
        "ack_deadline": 0.5,
        "retry_delays": (0.0, 0.0, 0.0),
        "retire_after": 0.3,
        "server_ping_interval": 0.2,
        "seed": 7,
    }
    options.update(overrides)
    return SlackSandbox(**options)


@dataclass
class Worker:
    sandbox: SlackSandbox
    backend: MemoryBackend
    metrics: Metrics
    connector: SlackConnector
    stopping: asyncio.Event
    task: asyncio.Task[None]

    def published_keys(self) -> list[str]:
        return [m.message_id for m in self.backend.all_messages()]

    async def online(self, count: int, within: float = 5.0) -> None:
        """Wait until `count` slots report Online on the status board."""
        await self.sandbox.wait_for(
            lambda: list(self.status().values()).count(ConnectionStatus.ONLINE) == count, within=within
        )

    def status(self) -> dict[str, ConnectionStatus]:
        return {c.name: c.status for c in self.metrics.status.snapshot() if c.platform == "slack"}

    async def stop(self) -> None:
        self.stopping.set()
        async with asyncio.timeout(5):
            await self.task


@contextlib.asynccontextmanager
async def worker(
    sandbox: SlackSandbox, backend: MemoryBackend | None = None, **overrides: Any
) -> AsyncIterator[Worker]:
    options: dict[str, Any] = {"app_token": SecretStr(sandbox.app_token), "api_url": sandbox.api_url, **FAST}
    options.update(overrides)
    settings = SlackSettings(**options)
    backend = backend or MemoryBackend()
    metrics = Metrics()
    handoff = Handoff(
        EnvelopePublisher(backend), DedupeWindow(ttl=600), metrics, breaker=Breaker(base_pause=0.05, max_pause=0.2)
    )
    connector = SlackConnector(settings, handoff, metrics)
    stopping = asyncio.Event()
    task = asyncio.create_task(connector.run(stopping))
    w = Worker(sandbox, backend, metrics, connector, stopping, task)
    try:
        yield w
    finally:
        if not task.done():
            await w.stop()


async def test_events_are_published_then_acked() -> None:
    async with fast_sandbox() as slack, worker(slack, connections=2) as w:
        await slack.wait_connections(2)
        event_id = await slack.send_user_message("hello", channel="C1")
        command = await slack.send_slash_command("/ticket", "printer on fire")
        action = await slack.send_block_action("ack_button", "42")
        await slack.wait_acked_keys({event_id, command.key, action.key}, within=5)
        published = {m.message_id: m for m in w.backend.all_messages()}
        assert set(published) == {event_id, command.key, action.key}
        mention = published[event_id]
        assert mention.queue == "slack-events"
        assert mention.session_id == "C1"
        assert mention.application_properties["event_type"] == "app_mention"
        assert published[command.key].queue == "slack-commands"
        assert published[action.key].queue == "slack-interactive"
        await w.online(2)
        assert w.metrics.total("relaybus_envelopes_acked_total", platform="slack") == 3
        assert slack.stats.redelivered == 0


async def test_many_envelopes_in_flight_at_once() -> None:
    """The reader does not wait for a publish: with 50 ms per publish, 200 events take far less than 10 s."""
    backend = MemoryBackend(latency=0.05)
    async with fast_sandbox(ack_deadline=3.0) as slack, worker(slack, backend, connections=1) as w:
        await slack.wait_connections(1)
        started = time.perf_counter()
        keys = await slack.push(200)
        await slack.wait_acked_keys(keys, within=5)
        assert time.perf_counter() - started < 2.0
        assert w.backend.count() == 200
        assert slack.stats.redelivered == 0


async def test_socket_dropped_before_ack_is_redelivered_and_published_once() -> None:
    backend = MemoryBackend(latency=0.2)
    async with fast_sandbox() as slack, worker(slack, backend, connections=1) as w:
        await slack.wait_connections(1)
        event_id = await slack.send_user_message("hello")
        await slack.wait_for(lambda: backend.sends >= 1, within=2)
        slack.drop()  # the publish is under way: its ack will find the socket gone
        await slack.wait_acked_keys({event_id}, within=5)
        assert slack.stats.redelivered >= 1
        assert w.published_keys() == [event_id]
        assert backend.sends == 1  # the redelivery was a known duplicate: acked without a second publish


async def test_refresh_requested_mid_stream_loses_nothing() -> None:
    async with fast_sandbox(ack_deadline=2.0) as slack, worker(slack, connections=2) as w:
        await slack.wait_connections(2)
        first = slack.connections
        sender = asyncio.create_task(slack.push(300, rate=1000))
        await asyncio.sleep(0.1)
        await slack.disconnect("refresh_requested", first[0])
        keys = await sender
        await slack.wait_acked_keys(keys, within=5)
        await slack.wait_for(lambda: first[0] not in slack.connections and len(slack.ready_connections()) == 2)
        assert slack.stats.redelivered == 0  # make-before-break: no envelope waited for a retry
        assert max(slack.latencies) < 0.5  # no gap: every envelope acked promptly across the rotation
        assert slack.stats.expired == 0
        assert sorted(w.published_keys()) == sorted(keys)
        await w.online(2)


async def test_same_event_on_two_connections_is_published_once() -> None:
    backend = MemoryBackend(latency=0.1)
    async with fast_sandbox() as slack, worker(slack, backend, connections=2) as w:
        await slack.wait_connections(2)
        a, b = slack.connections
        payload = {"type": "event_callback", "team_id": "T1", "event_id": "EvTWICE", "event": {"type": "message"}}
        await slack.deliver("events_api", payload, key="EvTWICE", connection=a)
        await slack.deliver("events_api", payload, key="EvTWICE", connection=b)
        await slack.wait_acked(2, within=3)
        assert w.published_keys() == ["EvTWICE"]
        assert backend.sends == 1
        assert w.metrics.total("relaybus_duplicates_dropped_total", platform="slack") == 1


async def test_publish_failing_means_no_acks_then_exactly_once_after_recovery() -> None:
    backend = MemoryBackend()
    backend.fail_all()
    async with fast_sandbox(retry_delays=(0.0, 0.3, 0.3)) as slack, worker(slack, backend, connections=2) as w:
        await slack.wait_connections(2)
        keys = [await slack.send_user_message(f"m{i}") for i in range(10)]
        await slack.wait_for(lambda: backend.sends >= 10, within=3)
        await asyncio.sleep(0.3)
        assert slack.stats.acked == 0
        assert w.backend.count() == 0
        backend.recover()
        await slack.wait_acked_keys(keys, within=5)
        assert sorted(w.published_keys()) == sorted(keys)
        assert slack.stats.redelivered >= 10


async def test_invalid_auth_stops_at_once_without_retrying() -> None:
    async with fast_sandbox() as slack:
        settings_token = "xapp-1-wrong"
        started = time.perf_counter()
        with pytest.raises(FatalConnectorError, match="invalid_auth"):
            async with worker(slack, app_token=SecretStr(settings_token), connections=3) as w:
                async with asyncio.timeout(3):
                    await w.task
        assert time.perf_counter() - started < 1.0
        assert slack.stats.opens <= 3  # one attempt per slot at most, no retry loop
        assert w.status()["0"] is ConnectionStatus.EXPIRED_TOKEN


async def test_rate_limited_open_honours_retry_after() -> None:
    async with fast_sandbox(open_rate_limit=1, open_rate_window=1.0) as slack:
        started = time.perf_counter()
        async with worker(slack, connections=2) as w:
            await slack.wait_connections(2, within=5)
            elapsed = time.perf_counter() - started
            assert slack.stats.opens_rate_limited >= 1
            assert elapsed >= 0.9  # Retry-After: 1 was honoured
            assert slack.stats.opens_rate_limited <= 3  # no hammering meanwhile
            await w.online(2)


async def test_half_open_socket_is_detected_and_replaced(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "worker.slack")
    async with fast_sandbox() as slack, worker(slack, connections=1) as w:
        await slack.wait_connections(1)
        (frozen,) = slack.freeze()
        started = time.perf_counter()
        await slack.wait_for(lambda: any(c != frozen for c in slack.ready_connections()), within=5)
        assert time.perf_counter() - started < 2.0  # liveness_timeout 0.6 s + backoff
        event_id = await slack.send_user_message("after the freeze")
        await slack.wait_acked_keys({event_id}, within=5)
        assert "half-open" in caplog.text
        await w.online(1)


async def test_malformed_frames_are_counted_and_the_socket_stays_up() -> None:
    async with fast_sandbox() as slack, worker(slack, connections=1, max_frame_bytes=4096) as w:
        await slack.wait_connections(1)
        (conn,) = slack.connections
        await slack.send_raw("not json")
        await slack.send_raw("[1, 2]")
        await slack.send_raw(json.dumps({"type": "mystery", "envelope_id": "x1"}))
        await slack.send_raw(json.dumps({"type": "events_api", "payload": {}}))
        await slack.send_raw(json.dumps({"type": "events_api", "envelope_id": "x2", "payload": "nope"}))
        await slack.send_raw(json.dumps({"type": "events_api", "envelope_id": "x3", "payload": {"x": "y" * 5000}}))
        event_id = await slack.send_user_message("still here")
        await slack.wait_acked_keys({event_id}, within=3)
        assert slack.connections == [conn]
        invalid = {
            reason: w.metrics.value("relaybus_invalid_frames_total", platform="slack", reason=reason)
            for reason in ("not_json", "not_object", "unknown_type", "missing_envelope_id", "bad_payload", "oversized")
        }
        assert invalid == dict.fromkeys(invalid, 1.0)


async def test_too_many_websockets_shrinks_the_pool() -> None:
    async with fast_sandbox(max_connections=2) as slack, worker(slack, connections=3) as w:
        await slack.wait_connections(2)
        await slack.wait_for(lambda: w.connector.pool is not None and w.connector.pool.size == 2, within=3)
        opens = slack.stats.opens
        await asyncio.sleep(0.5)
        assert slack.stats.opens == opens  # no reconnect storm
        assert len(w.status()) == 2
        event_id = await slack.send_user_message("hi")
        await slack.wait_acked_keys({event_id}, within=3)


async def test_link_disabled_stops_with_a_clear_error() -> None:
    async with fast_sandbox() as slack, worker(slack, connections=1) as w:
        await slack.wait_connections(1)
        await slack.disconnect("link_disabled")
        with pytest.raises(FatalConnectorError, match="Socket Mode is turned off"):
            async with asyncio.timeout(3):
                await w.task


async def test_graceful_drain_finishes_in_flight_acks() -> None:
    backend = MemoryBackend(latency=0.3)
    async with fast_sandbox(ack_deadline=2.0) as slack, worker(slack, backend, connections=1) as w:
        await slack.wait_connections(1)
        keys = await slack.push(20)
        await slack.wait_for(lambda: backend.sends >= 20, within=2)
        await w.stop()
        assert slack.stats.acked == 20
        assert set(keys) <= slack.acked_keys
        assert w.status() == {"0": ConnectionStatus.ENDED}
        await slack.wait_for(lambda: not slack.connections, within=2)


async def test_events_sent_while_no_socket_is_open_arrive_later() -> None:
    async with fast_sandbox() as slack:
        event_id = await slack.send_user_message("early")
        async with worker(slack, connections=1) as w:
            await slack.wait_acked_keys({event_id}, within=3)
            assert w.published_keys() == [event_id]


async def test_ghost_connections_are_reported(caplog: pytest.LogCaptureFixture) -> None:
    """Slack still counts half-open sockets: a hello with more connections than the pool holds is a warning."""
    caplog.set_level(logging.WARNING, "worker.slack")
    async with fast_sandbox() as slack, worker(slack, connections=1):
        for ghosts in (1, 2):
            await slack.wait_connections(ghosts)
            slack.freeze(slack.connections[-1])
            await slack.wait_for(lambda n=ghosts: len(slack.connections) == n + 1, within=3)
        await slack.wait_for(lambda: "ghost" in caplog.text, within=3)
    assert "but 1 replica(s) hold 1" in caplog.text


async def test_the_sockets_of_other_replicas_are_not_ghosts(caplog: pytest.LogCaptureFixture) -> None:
    """With SLACK_REPLICAS=2, another replica's pool and a rotation of each are expected (1 × 2 + 2 = 4 counted
    without a warning); the fifth socket Slack counts is a ghost."""
    caplog.set_level(logging.WARNING, "worker.slack")
    async with fast_sandbox() as slack, worker(slack, connections=1, replicas=2):
        for ghosts in (1, 2, 3):
            await slack.wait_connections(ghosts)
            slack.freeze(slack.connections[-1])  # half-open: Slack still counts it
            await slack.wait_for(lambda n=ghosts: len(slack.connections) == n + 1, within=3)
            await slack.wait_connections(ghosts + 1)
            assert "ghost" not in caplog.text, f"{ghosts + 1} counted, 4 expected"
        slack.freeze(slack.connections[-1])
        await slack.wait_for(lambda: "ghost" in caplog.text, within=3)
    assert "Slack counts 5 connections for this app but 2 replica(s) hold 2" in caplog.text
