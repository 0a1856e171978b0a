"""The worker process: health endpoints, metrics, graceful drain, fatal connector errors."""

from __future__ import annotations

import asyncio

import httpx

from shared.errors import TransientPublishError
from tests.factories import slack_event
from worker.connector import FatalConnectorError
from worker.handoff import Handoff, Verdict
from worker.lifecycle import ConnectionStatus
from worker.publish.memory import MemoryBackend
from worker.runtime import Worker, queues_in_use
from worker.settings import load_settings


class ScriptedConnector:
    """A connector that goes Online, hands off a few envelopes, and drains when asked."""

    platform = "slack"

    def __init__(self, count: int) -> None:
        self.count = count
        self.handoff: Handoff | None = None
        self.acked: list[str] = []
        self.online = asyncio.Event()
        self.drained = False

    async def run(self, stopping: asyncio.Event) -> None:
        assert self.handoff is not None
        status = self.handoff.metrics.status
        status.set("slack", "conn-1", ConnectionStatus.CONNECTING)
        await asyncio.sleep(0.05)
        status.set("slack", "conn-1", ConnectionStatus.ONLINE)
        for i in range(self.count):
            env = slack_event(f"Ev{i}")

            def answer(verdict: Verdict, key: str = env.dedupe_key) -> bool:
                if verdict.ack:
                    self.acked.append(key)
                return verdict.ack

            await self.handoff.deliver(env, answer)
        self.online.set()
        await stopping.wait()
        status.set("slack", "conn-1", ConnectionStatus.ENDED)
        self.drained = True


class FatalConnector:
    platform = "slack"

    async def run(self, stopping: asyncio.Event) -> None:
        raise FatalConnectorError("invalid_auth: check SLACK_APP_TOKEN")


async def test_health_ready_and_metrics_endpoints() -> None:
    settings = load_settings({"SLACK_APP_TOKEN": "xapp-1-test", "RELAYBUS_HTTP_PORT": "0"})
    connector = ScriptedConnector(3)
    backend = MemoryBackend()
    worker = Worker(settings, backend=backend, connectors=[connector])
    connector.handoff = worker.handoff
    stopping = asyncio.Event()
    task = asyncio.create_task(worker.run(stopping))
    try:
        while worker.health is None or worker.health.port is None:
            await asyncio.sleep(0.01)
        base = f"http://127.0.0.1:{worker.health.port}"
        async with httpx.AsyncClient(base_url=base) as client:
            assert (await client.get("/healthz")).status_code == 200
            await asyncio.wait_for(connector.online.wait(), 5)
            ready = await client.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["connections"][0]["status"] == "Online"
            metrics = (await client.get("/metrics")).text
            assert 'relaybus_envelopes_published_total{platform="slack",route="slack_events"} 3.0' in metrics
            assert 'relaybus_envelopes_acked_total{kind="events_api",platform="slack"} 3.0' in metrics
            assert 'relaybus_connection_state{connection="conn-1",platform="slack",state="Online"} 1.0' in metrics
            assert "relaybus_publish_latency_seconds_bucket" in metrics
    finally:
        stopping.set()
        result = await asyncio.wait_for(task, 5)
    assert result.ok and connector.drained
    assert backend.count() == 3 and connector.acked == ["Ev0", "Ev1", "Ev2"]


async def test_readyz_is_503_until_every_connection_is_online() -> None:
    settings = load_settings({"SLACK_APP_TOKEN": "xapp-1-test", "RELAYBUS_HTTP_PORT": "0"})
    worker = Worker(settings, backend=MemoryBackend(), connectors=[])
    assert worker.health is not None
    await worker.health.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{worker.health.port}") as client:
            assert (await client.get("/readyz")).status_code == 503
            worker.metrics.status.set("slack", "c1", ConnectionStatus.CONNECTING)
            assert (await client.get("/readyz")).status_code == 503
            worker.metrics.status.set("slack", "c1", ConnectionStatus.ONLINE)
            assert (await client.get("/readyz")).status_code == 200
            worker.metrics.status.set("slack", "c2", ConnectionStatus.FAILED_TO_CONNECT)
            body = (await client.get("/readyz")).json()
            assert body["ready"] is False
            assert {c["status"] for c in body["connections"]} == {"Online", "FailedToConnect"}
    finally:
        await worker.health.stop()


async def test_a_fatal_connector_error_stops_the_worker_with_its_message() -> None:
    settings = load_settings({"SLACK_APP_TOKEN": "xapp-1-test", "RELAYBUS_HTTP_PORT": "0"})
    worker = Worker(settings, backend=MemoryBackend(), connectors=[FatalConnector()])
    result = await asyncio.wait_for(worker.run(asyncio.Event()), 5)
    assert not result.ok
    assert "invalid_auth" in result.fatal["slack"]


async def test_a_connector_that_does_not_drain_is_cancelled_after_the_timeout() -> None:
    class Stuck:
        platform = "teams"
        cancelled = False

        async def run(self, stopping: asyncio.Event) -> None:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                Stuck.cancelled = True
                raise

    settings = load_settings({"RELAYBUS_SHUTDOWN_TIMEOUT_SECONDS": "0.2"})
    worker = Worker(settings, backend=MemoryBackend(), connectors=[Stuck()], serve_http=False)
    stopping = asyncio.Event()
    task = asyncio.create_task(worker.run(stopping))
    await asyncio.sleep(0.05)
    stopping.set()
    await asyncio.wait_for(task, 5)
    assert Stuck.cancelled


class UnopenableBackend(MemoryBackend):
    """A Service Bus namespace whose queue is missing: the link cannot be opened."""

    async def open(self) -> None:
        raise TransientPublishError("queue=slack-events (opening the link): MessagingEntityNotFound")


async def test_a_backend_that_cannot_open_stops_the_worker_at_start_with_the_reason() -> None:
    settings = load_settings({"SLACK_APP_TOKEN": "xapp-1-test", "RELAYBUS_HTTP_PORT": "0"})
    connector = ScriptedConnector(1)
    worker = Worker(settings, backend=UnopenableBackend(), connectors=[connector])
    connector.handoff = worker.handoff
    result = await asyncio.wait_for(worker.run(asyncio.Event()), 5)
    assert not result.ok
    assert "MessagingEntityNotFound" in result.fatal["queue"]
    assert connector.acked == []  # no connector ever started


def test_the_service_bus_backend_warms_up_only_the_enabled_platforms_queues() -> None:
    teams_only = load_settings({"TEAMS_APP_ID": "app", "TEAMS_APP_PASSWORD": "p", "TEAMS_TENANT_ID": "t"})
    assert queues_in_use(teams_only) == ["teams-activities", "teams-invokes"]
    renamed = load_settings({"SLACK_APP_TOKEN": "xapp-1-test", "SLACK_EVENTS_QUEUE": "my-events"})
    assert queues_in_use(renamed) == ["my-events", "slack-interactive", "slack-answers", "slack-commands"]
