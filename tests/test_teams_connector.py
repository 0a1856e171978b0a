"""The Teams connector against the sandbox over real sockets on 127.0.0.1 (issue 5's Tests section).

Timings are shrunk (keepalive 0.2 s, server timeout 1 s, rotations every second) so the module stays fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from devstack.sandbox.teams import TeamsSandbox
from worker.connector import FatalConnectorError
from worker.handoff import Handoff
from worker.lifecycle import ConnectionStatus
from worker.metrics import Metrics
from worker.publish import EnvelopePublisher
from worker.publish.memory import MemoryBackend
from worker.teams.connection import Timings
from worker.teams.connector import ConnectorTimings, TeamsConnector
from worker.teams.settings import TeamsSettings

FAST = ConnectorTimings(
    connection=Timings(
        keepalive=0.2,
        server_timeout=1.0,
        handshake_timeout=2.0,
        ready_timeout=2.0,
        open_timeout=2.0,
        close_timeout=0.3,
        drain_timeout=2.0,
        negotiate_timeout=2.0,
    ),
    rotate_before_expiry=1.0,
    overlap=0.2,
    backoff_base=0.05,
    backoff_cap=0.2,
    draft_delays=(0.0, 0.05, 0.1),
    unavailable_retry=0.2,
    rotation_retry=0.2,
)


def make_sandbox(**options: Any) -> TeamsSandbox:
    """A sandbox whose server pings come every 0.2 s (the connector's shrunk server timeout is 1 s)."""
    options.setdefault("keepalive", 0.2)
    return TeamsSandbox(**options)


@dataclass
class Harness:
    sandbox: TeamsSandbox
    connector: TeamsConnector
    backend: MemoryBackend
    metrics: Metrics
    stopping: asyncio.Event
    task: asyncio.Task[None]

    def statuses(self) -> dict[str, ConnectionStatus]:
        return {c.name: c.status for c in self.metrics.status.snapshot() if c.platform == "teams"}

    async def until(self, predicate: Callable[[], bool], within: float = 5.0) -> None:
        async with asyncio.timeout(within):
            while not predicate():
                await asyncio.sleep(0.01)


def settings_for(sandbox: TeamsSandbox, **env: str) -> TeamsSettings:
    values = {
        "TEAMS_APP_ID": sandbox.app_id,
        "TEAMS_BASE_URL": sandbox.base_url,
        "TEAMS_STATIC_TOKEN": sandbox.bot_token,
        "TEAMS_CONTRACT": sandbox.contract,
    }
    values.update(env)
    return TeamsSettings.model_validate(values)


@contextlib.asynccontextmanager
async def running(
    sandbox: TeamsSandbox,
    *,
    timings: ConnectorTimings = FAST,
    backend: MemoryBackend | None = None,
    wait_sessions: int = 1,
    **env: str,
) -> AsyncIterator[Harness]:
    backend = backend or MemoryBackend()
    metrics = Metrics()
    handoff = Handoff(EnvelopePublisher(backend), metrics=metrics)
    connector = TeamsConnector(settings_for(sandbox, **env), handoff, metrics, timings=timings)
    stopping = asyncio.Event()
    task = asyncio.create_task(connector.run(stopping))
    harness = Harness(sandbox, connector, backend, metrics, stopping, task)
    try:
        if wait_sessions:
            await sandbox.wait_sessions(wait_sessions)
        yield harness
    finally:
        stopping.set()
        if not task.done():
            await asyncio.wait_for(task, 10)


def published_ids(backend: MemoryBackend) -> list[str]:
    return [m.message_id for m in backend.all_messages()]


async def test_messages_are_published_then_acked_with_status_200() -> None:
    async with make_sandbox() as sandbox, running(sandbox) as h:
        ids = [await sandbox.send_user_message(f"hello {i}") for i in range(20)]
        await sandbox.wait_acked(20)
        assert h.backend.count() == 20
        assert {m.split("/")[-1] for m in published_ids(h.backend)} == set(ids)
        assert h.metrics.total("relaybus_envelopes_acked_total", platform="teams") == 20
        result = next(iter(sandbox.acked.values()))
        assert result["protocolVersion"] == 1 and result["status"] == 200 and result["botKey"] == sandbox.bot_key
        assert result["recvAt"] <= result["ts"]
        assert h.statuses() == {"amer": ConnectionStatus.ONLINE}
        message = h.backend.all_messages()[0]
        assert message.queue == "teams-activities" and message.session_id == "a:sandbox-conversation"
    assert h.statuses() == {"amer": ConnectionStatus.ENDED}


@pytest.mark.parametrize("url_mode", ["negotiate", "redirect", "websocket"])
async def test_signalr_negotiate_shapes_and_redirects(url_mode: Any) -> None:
    async with make_sandbox(url_mode=url_mode) as sandbox, running(sandbox):
        await sandbox.send_user_message("hi")
        await sandbox.wait_acked(1)
        assert sandbox.stats["redirects"] == (1 if url_mode == "redirect" else 0)
        assert sandbox.handshake_versions == [1]


async def test_envelope_fields_for_a_message() -> None:
    async with make_sandbox() as sandbox, running(sandbox) as h:
        activity = sandbox.new_activity("fields")
        envelope_id = await sandbox.send_activity(activity)
        await sandbox.wait_acked(1)
        from shared.envelope import Envelope

        envelope = Envelope.from_body(h.backend.all_messages()[0].body)
        assert envelope.kind == "activity" and envelope.event_type == "message"
        assert envelope.envelope_id == envelope_id and envelope.activity_id == activity["id"]
        assert envelope.tenant == sandbox.tenant_id and envelope.conversation_key == "a:sandbox-conversation"
        assert envelope.payload == activity
        assert envelope.connection_id == next(iter(sandbox.sessions))


async def test_pascal_case_keys_and_target_case_are_accepted() -> None:
    async with make_sandbox(pascal_case=True, target="ACTIVITY") as sandbox, running(sandbox) as h:
        await sandbox.send_user_message("shouting")
        await sandbox.wait_acked(1)
        assert h.backend.count() == 1


async def test_invoke_goes_to_its_own_route_and_is_answered_with_an_empty_body(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with make_sandbox() as sandbox, running(sandbox) as h:
        await sandbox.send_card_action({"ticket": 7}, verb="approve")
        await sandbox.wait_acked(1)
        result = next(iter(sandbox.acked.values()))
        assert result["status"] == 200 and "body" in result and result["body"] is None
        [message] = h.backend.all_messages()
        assert message.queue == "teams-invokes"
        assert message.application_properties["event_type"] == "adaptiveCard/action"


async def test_socket_dropped_mid_stream_loses_nothing_and_publishes_once() -> None:
    async with make_sandbox(redeliver_delay=0.01) as sandbox, running(sandbox) as h:
        for i in range(30):
            await sandbox.send_user_message(f"before {i}")
        assert sandbox.drop_all() == 1
        for i in range(30):
            await sandbox.send_user_message(f"after {i}")
        await sandbox.wait_acked(60, within=10)
        assert h.backend.count() == 60 and h.backend.duplicates == 0
        assert sandbox.stats["connections"] >= 2


@pytest.mark.parametrize("allow_reconnect", [True, False])
async def test_close_message_with_and_without_allow_reconnect(allow_reconnect: bool) -> None:
    timings = replace(FAST, backoff_base=0.5, backoff_cap=0.5)
    async with make_sandbox() as sandbox, running(sandbox, timings=timings) as h:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await sandbox.close_all("maintenance", allow_reconnect=allow_reconnect)
        await h.until(lambda: sandbox.stats["connections"] == 2 and bool(sandbox.ready_sessions()))
        elapsed = loop.time() - started
        if allow_reconnect:
            assert elapsed < 0.5  # no backoff
        assert sandbox.stats["service_negotiates"] == 2  # a fresh negotiate each cycle, never SignalR's reconnect
        await sandbox.send_user_message("after the close")
        await sandbox.wait_acked(1)


@pytest.mark.parametrize("mode", ["silent", "frozen"])
async def test_silent_or_frozen_server_is_replaced_within_the_timeout(mode: str) -> None:
    async with make_sandbox() as sandbox, running(sandbox) as h:
        loop = asyncio.get_running_loop()
        started = loop.time()
        (sandbox.silence_all if mode == "silent" else sandbox.freeze_all)()
        await h.until(lambda: sandbox.stats["connections"] == 2 and len(sandbox.live_sessions()) == 1, within=4)
        elapsed = loop.time() - started
        assert 0.9 <= elapsed < 2.5, elapsed  # server_timeout is 1 s
        await sandbox.send_user_message("on the new connection")
        await sandbox.wait_acked(1)


async def test_client_sends_pings_so_the_server_keeps_it() -> None:
    async with make_sandbox(client_timeout=0.5, keepalive=0.1) as sandbox, running(sandbox):
        await asyncio.sleep(1.2)
        assert sandbox.stats["client_timeouts"] == 0 and sandbox.stats["connections"] == 1
        assert sandbox.stats["pings_received"] >= 4


async def test_rotation_under_load_loses_nothing_and_publishes_nothing_twice() -> None:
    async with make_sandbox(expires_in=1.6, redeliver_delay=0.01) as sandbox, running(sandbox) as h:
        total = 0
        deadline = asyncio.get_running_loop().time() + 2.5
        while asyncio.get_running_loop().time() < deadline:
            for _ in range(10):
                await sandbox.send_user_message(f"load {total}")
                total += 1
            await asyncio.sleep(0.02)
        await sandbox.wait_acked(total, within=10)
        assert h.connector.rotations >= 2
        assert h.backend.count() == total and h.backend.duplicates == 0
        assert h.metrics.total("relaybus_envelopes_published_total", platform="teams") == total
        assert sandbox.stats["expired_closes"] == 0  # every rotation happened before the token expired


async def test_failed_rotation_keeps_the_old_connection_serving() -> None:
    async with make_sandbox(expires_in=1.5) as sandbox, running(sandbox) as h:
        sandbox.fail_negotiate(500, times=2)
        await h.until(lambda: sandbox.stats["negotiate_500"] == 2, within=3)
        assert h.statuses()["amer"] is ConnectionStatus.ONLINE
        await sandbox.send_user_message("still here")
        await sandbox.wait_acked(1)
        await h.until(lambda: h.connector.rotations >= 1, within=3)


async def test_503_then_recovery() -> None:
    async with make_sandbox() as sandbox:
        sandbox.fail_negotiate(503, times=2, retry_after=0.3)
        async with running(sandbox, wait_sessions=0) as h:
            await h.until(lambda: h.statuses().get("amer") is ConnectionStatus.FAILED_TO_CONNECT, within=2)
            await sandbox.wait_sessions(1, within=3)
            await h.until(lambda: h.statuses().get("amer") is ConnectionStatus.ONLINE)
            assert sandbox.stats["negotiate_503"] == 2
            await sandbox.send_user_message("recovered")
            await sandbox.wait_acked(1)


@pytest.mark.parametrize("status", [503, 429])
async def test_shipped_transient_503_or_429_honours_retry_after_not_the_slow_fallback(status: int) -> None:
    # An outside run lost every activity to this: a 503 with Retry-After: 1 left the worker without a socket
    # for 60 s. Only the draft contract's "not available" answer may select the slow fallback.
    slow_fallback = replace(FAST, unavailable_retry=60.0, backoff_base=5.0, backoff_cap=15.0)
    async with make_sandbox() as sandbox:
        sandbox.fail_negotiate(status, times=1, retry_after=1, body="Service Unavailable")
        started = time.monotonic()
        async with running(sandbox, timings=slow_fallback, wait_sessions=0):
            await sandbox.wait_sessions(1, within=5)
            assert 0.9 <= time.monotonic() - started < 4
            await sandbox.send_user_message("back")
            await sandbox.wait_acked(1)


async def test_shipped_503_without_retry_after_backs_off_with_jitter_up_to_15_s() -> None:
    jitter = replace(FAST, unavailable_retry=60.0, backoff_base=0.1, backoff_cap=0.3)
    async with make_sandbox() as sandbox:
        sandbox.fail_negotiate(503, times=3)  # "Socket mode is not available." but on the shipped contract
        started = time.monotonic()
        async with running(sandbox, timings=jitter, wait_sessions=0):
            await sandbox.wait_sessions(1, within=3)
            assert time.monotonic() - started < 2


async def test_draft_not_available_selects_the_slow_fallback() -> None:
    slow = replace(FAST, unavailable_retry=30.0)
    async with make_sandbox(contract="draft") as sandbox:
        sandbox.fail_negotiate(503, times=1)
        async with running(sandbox, timings=slow, wait_sessions=0) as h:
            await h.until(lambda: h.statuses().get("slot1") is ConnectionStatus.FAILED_TO_CONNECT, within=2)
            await asyncio.sleep(1.0)
            assert not sandbox.live_sessions()  # still waiting for the slow retry
            assert "not available" in next(c.detail for c in h.metrics.status.snapshot() if c.name == "slot1")


async def test_401_is_terminal_and_names_the_credential() -> None:
    async with make_sandbox() as sandbox:
        sandbox.unauthorized = True
        metrics = Metrics()
        connector = TeamsConnector(
            settings_for(sandbox), Handoff(EnvelopePublisher(MemoryBackend())), metrics, timings=FAST
        )
        with pytest.raises(FatalConnectorError, match="TEAMS_STATIC_TOKEN"):
            await asyncio.wait_for(connector.run(asyncio.Event()), 5)
        assert sandbox.stats["service_negotiates"] == 1


async def test_redelivery_after_a_failed_publish_is_published_once() -> None:
    backend = MemoryBackend()
    backend.fail_all()
    async with make_sandbox(redeliver_delay=0.05) as sandbox, running(sandbox, backend=backend) as h:
        await sandbox.send_user_message("will fail first")
        await h.until(lambda: sandbox.stats["status_500"] >= 2)
        assert not sandbox.acked
        backend.recover()
        await sandbox.wait_acked(1)
        assert backend.count() == 1
        assert h.metrics.total("relaybus_publish_failed_total", platform="teams") >= 2


async def test_redelivery_with_a_new_envelope_id_is_deduped_on_the_activity() -> None:
    async with make_sandbox() as sandbox, running(sandbox) as h:
        activity = sandbox.new_activity("twice")
        await sandbox.send_activity(activity)
        await sandbox.send_activity(activity)  # same activity, new envelopeId
        await sandbox.wait_acked(2)
        assert h.backend.count() == 1
        assert h.metrics.total("relaybus_duplicates_dropped_total", platform="teams") == 1


async def test_draft_mode_with_three_slots_publishes_each_event_once() -> None:
    async with (
        TeamsSandbox(contract="draft") as sandbox,
        running(sandbox, wait_sessions=3, TEAMS_CONNECTIONS="3") as h,
    ):
        assert sandbox.stats["service_negotiates"] == 3
        ids = [await sandbox.send_user_message(f"fan-out {i}") for i in range(20)]
        await h.until(lambda: h.metrics.total("relaybus_envelopes_received_total", platform="teams") == 60)
        assert h.backend.count() == 20 and h.backend.sends == 20
        assert {m.split("/")[-1] for m in published_ids(h.backend)} == set(ids)
        assert set(h.statuses()) == {"slot1", "slot2", "slot3"}


async def test_draft_rotation_at_a_fraction_of_expiry() -> None:
    async with make_sandbox(contract="draft", expires_in=1.5) as sandbox, running(sandbox) as h:
        await h.until(lambda: h.connector.rotations >= 1, within=3)
        await sandbox.send_user_message("after rotation")
        await h.until(lambda: h.backend.count() == 1)


async def test_protocol_version_2_is_refused_with_400_without_publishing() -> None:
    async with make_sandbox() as sandbox, running(sandbox) as h:
        await sandbox.send_activity(sandbox.new_activity("from the future"), protocol_version=2)
        await h.until(lambda: sandbox.stats["status_400"] == 1)
        assert h.backend.sends == 0
        assert h.metrics.value("relaybus_invalid_frames_total", platform="teams", reason="protocol_version") == 1


async def test_malformed_frames_are_counted_and_partial_frames_reassembled() -> None:
    async with make_sandbox() as sandbox, running(sandbox) as h:
        await sandbox.send_raw("not json\x1e[1,2]\x1e" + '{"type":"x"}\x1e')
        await sandbox.send_raw('{"type":1,"target":"Activity","invocationId":"z","arguments":[{"envelopeId":"e"}]}\x1e')
        await sandbox.send_activity(sandbox.new_activity("split in three"), split=3)
        two = sandbox.new_activity("batched a"), sandbox.new_activity("batched b")
        await sandbox.wait_acked(1)
        frames = sandbox.delivery_frame(two[0]) + sandbox.delivery_frame(two[1])
        await sandbox.send_raw(frames)
        await sandbox.wait_acked(3)
        assert h.backend.count() == 3
        invalid = {
            reason: h.metrics.value("relaybus_invalid_frames_total", platform="teams", reason=reason)
            for reason in ("not_json", "not_object", "bad_type", "no_activity")
        }
        assert invalid == {"not_json": 1, "not_object": 1, "bad_type": 1, "no_activity": 1}
        refused = [c for c in sandbox.completions if c.get("status") == 400]
        assert [c["envelopeId"] for c in refused] == ["e"]  # the envelope without an activity, refused by id
        assert h.statuses()["amer"] is ConnectionStatus.ONLINE


async def test_the_receive_loop_does_not_wait_for_publishes() -> None:
    backend = MemoryBackend(latency=0.3)
    async with make_sandbox() as sandbox, running(sandbox, backend=backend):
        started = time.perf_counter()
        for i in range(50):
            await sandbox.send_user_message(f"slow {i}")
        await sandbox.wait_acked(50, within=5)
        assert time.perf_counter() - started < 1.5  # serialised it would take 15 s


async def test_in_flight_envelopes_are_bounded() -> None:
    backend = MemoryBackend(latency=0.2)
    async with make_sandbox() as sandbox, running(sandbox, backend=backend, TEAMS_MAX_IN_FLIGHT="5") as h:
        for i in range(20):
            await sandbox.send_user_message(f"bounded {i}")
        await h.until(lambda: "amer" in h.connector.connections and h.connector.connections["amer"].in_flight == 5)
        await asyncio.sleep(0.05)
        assert h.connector.connections["amer"].in_flight == 5
        await sandbox.wait_acked(20, within=5)


async def test_stopping_drains_in_flight_envelopes_before_closing() -> None:
    backend = MemoryBackend(latency=0.3)
    async with make_sandbox() as sandbox, running(sandbox, backend=backend) as h:
        for i in range(10):
            await sandbox.send_user_message(f"drain {i}")
        await h.until(lambda: "amer" in h.connector.connections and h.connector.connections["amer"].received == 10)
        h.stopping.set()
        await asyncio.wait_for(h.task, 5)
        assert len(sandbox.acked) == 10 and backend.count() == 10


async def test_several_geos_one_socket_each() -> None:
    async with make_sandbox() as sandbox, running(sandbox, wait_sessions=2, TEAMS_GEOS="amer,emea") as h:
        assert sorted(s.geo for s in sandbox.ready_sessions()) == ["amer", "emea"]
        await sandbox.send_activity(sandbox.new_activity("to emea"), geo="emea")
        await sandbox.wait_acked(1)
        assert set(h.statuses()) == {"amer", "emea"}


async def test_connection_ids_are_single_use() -> None:
    async with make_sandbox() as sandbox, httpx.AsyncClient() as client:
        grant = (
            await client.post(
                f"{sandbox.base_url}/amer/v3/websockets/connect",
                headers={"Authorization": "Bearer " + sandbox.bot_token},
            )
        ).json()
        negotiated = (
            await client.post(
                f"{sandbox.base_url}/client/negotiate?hub=bot&negotiateVersion=1",
                headers={"Authorization": "Bearer " + grant["accessToken"]},
            )
        ).json()
        url = f"ws://127.0.0.1:{sandbox.port}/client/?hub=bot&id={negotiated['connectionToken']}&access_token={grant['accessToken']}"
        async with connect(url) as ws:
            await ws.send('{"protocol":"json","version":1}\x1e')
            assert await ws.recv() == "{}\x1e"
            with pytest.raises(InvalidStatus):
                async with connect(url):
                    pass


async def test_no_token_in_any_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with make_sandbox(url_mode="redirect", expires_in=1.5) as sandbox, running(sandbox) as h:
        await sandbox.send_user_message("secret-free")
        await sandbox.wait_acked(1)
        await h.until(lambda: h.connector.rotations >= 1, within=3)
        sandbox.drop_all()
        await sandbox.wait_sessions(1)
    secrets_seen = [sandbox.bot_token, *sandbox._access_tokens]
    assert len(secrets_seen) >= 3
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "GET /client" in text  # websockets' own DEBUG request line is there, redacted
    for secret in secrets_seen:
        assert secret not in text
    envelope_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("envelope published")]
    assert envelope_lines
    assert all("cv=" in line and "envelopeId=" in line and "geo=amer" in line for line in envelope_lines)
    assert all("connection=" in line and "connection=None" not in line for line in envelope_lines)


async def test_completions_finishing_together_each_reach_the_service() -> None:
    # 60 publishes that end in the same instant: their completions leave in one socket write
    # (worker/wsio.py) and must still arrive as 60 separate completions, each for its own envelope.
    backend = MemoryBackend(latency=0.2)
    async with make_sandbox() as sandbox, running(sandbox, backend=backend) as h:
        ids = [await sandbox.send_user_message(f"together {i}") for i in range(60)]
        await sandbox.wait_acked(60, within=5)
        assert len(sandbox.completions) == 60
        assert {r["status"] for r in sandbox.acked.values()} == {200}
        assert {m.split("/")[-1] for m in published_ids(h.backend)} == set(ids)
        assert h.metrics.total("relaybus_envelopes_acked_total", platform="teams") == 60
