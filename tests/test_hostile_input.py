"""No input stops the worker, and no fault costs more than it must (issue 9, section 5).

Every case through real sockets on loopback against the sandboxes: hostile frames are counted as invalid
with a reason while the connection stays up and the next valid envelope is published and acked; hostile
connect URLs are failed attempts with backoff; a failing queue backend is paced, not spun on; envelopes
the platform cannot redeliver are kept until durable; no status detail shows a secret.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace

import httpx
import pytest

from tests.test_slack_connector import fast_sandbox, worker
from tests.test_teams_connector import FAST, make_sandbox, running
from worker.handoff import Breaker, Handoff
from worker.lifecycle import ConnectionStatus
from worker.metrics import Metrics
from worker.publish import EnvelopePublisher
from worker.publish.memory import MemoryBackend
from worker.runtime import Worker
from worker.settings import load_settings
from worker.teams.connector import TeamsConnector
from worker.teams.signalr import RECORD_SEPARATOR

DEEP = "[" * 100_000 + "]" * 100_000

SLACK_CORPUS: list[tuple[str | bytes, bool, str]] = [
    # (frame, sent as a text frame, the reason it is counted under)
    (DEEP, True, "too_deep"),
    ('{"type":"events_api","envelope_id":"x","payload":{"n":' + "9" * 5000 + "}}", True, "not_json"),
    (b'{"type":"hello"\xff\xfe}', True, "not_utf8"),
    (b"\x00\x01\x02 binary garbage \xff", False, "not_utf8"),
    ('{"type":"events_api","envelope_id":"e-inf","retry_attempt":1e999,"payload":NaN}', True, "bad_payload"),
    ("Infinity", True, "not_object"),
    # 100,000 characters, 300,000 bytes: over a 256 KiB limit only when counted in bytes
    ('{"type":"events_api","envelope_id":"big","payload":{"t":"' + "€" * 100_000 + '"}}', True, "oversized"),
]


async def test_hostile_slack_frames_are_counted_and_the_socket_stays_up() -> None:
    async with fast_sandbox() as slack, worker(slack, connections=1, max_frame_bytes=256 * 1024) as w:
        await slack.wait_connections(1)
        (conn,) = slack.connections
        for frame, text, _reason in SLACK_CORPUS:
            await slack.send_raw(frame, text=text)
        # payloads with numbers out of range are valid JSON: the envelope goes through and is acked
        weird = {"type": "events_api", "envelope_id": "e-big", "payload": {"event_id": "EvWeird", "x": 1e308}}
        await slack.send_raw(json.dumps(weird) + " ")
        event_id = await slack.send_user_message("still here")
        await slack.wait_acked_keys({event_id}, within=5)
        assert slack.connections == [conn], "the socket must stay up"
        for reason in {r for _, _, r in SLACK_CORPUS}:
            counted = w.metrics.value("relaybus_invalid_frames_total", platform="slack", reason=reason)
            assert counted >= 1, reason
        assert event_id in w.published_keys()


async def test_a_slack_frame_beyond_the_socket_limit_costs_one_reconnect_not_the_process() -> None:
    async with fast_sandbox() as slack, worker(slack, connections=1, max_frame_bytes=1024) as w:
        await slack.wait_connections(1)
        await slack.send_raw("x" * (1024 * 4 + 10))  # beyond max_size: the websocket closes with 1009
        await slack.wait_for(lambda: slack.stats.opens >= 2, within=5)
        await w.online(1)
        event_id = await slack.send_user_message("after the big one")
        await slack.wait_acked_keys({event_id}, within=5)


async def test_hostile_slack_connect_urls_are_failed_attempts_with_backoff() -> None:
    async with fast_sandbox() as slack:
        slack.hand_out_urls(
            "wss://127.0.0.1:99999/link/?ticket=SECRET1",
            "ftp://127.0.0.1/link/?ticket=SECRET2",
            "not a url at all",
            "ws://[::1/link/",
        )
        async with worker(slack, connections=1) as w:
            await w.online(1, within=10)
            assert slack.stats.opens >= 5
            event_id = await slack.send_user_message("connected in the end")
            await slack.wait_acked_keys({event_id}, within=5)
            for info in w.metrics.status.snapshot():
                assert "SECRET" not in info.detail + info.last_error


TEAMS_CORPUS: list[tuple[str | bytes, str]] = [
    ('{"type":8,"sequenceId":1e999}' + RECORD_SEPARATOR, "missing_field"),
    ('{"type":9,"sequenceId":Infinity}' + RECORD_SEPARATOR, "missing_field"),
    ('{"type":8,"sequenceId":NaN}' + RECORD_SEPARATOR, "missing_field"),
    (DEEP + RECORD_SEPARATOR, "too_deep"),
    (b'{"type":6,"x":"\xff\xfe"}\x1e', "not_utf8"),
    ('{"type":"1"}' + RECORD_SEPARATOR, "bad_type"),
    ('{"type":1,"target":"Activity","arguments":[{"envelopeId":"e1","payload":{}}],"invocationId":"n1"}\x1e', ""),
]


async def test_hostile_teams_frames_are_counted_and_the_connection_stays_up() -> None:
    async with make_sandbox() as sandbox, running(sandbox) as h:
        (session,) = sandbox.ready_sessions()
        for frame, _reason in TEAMS_CORPUS:
            await sandbox.send_raw(frame)
        huge_version = {
            "envelopeId": "e2",
            "protocolVersion": "9" * 5000,
            "deadlineMs": 1e999,
            "payload": {"type": "message", "id": "x", "conversation": {"id": ["not", "a", "string"]}},
        }
        frame = json.dumps({"type": 1, "target": "Activity", "invocationId": "n2", "arguments": [huge_version]})
        await sandbox.send_raw(frame + RECORD_SEPARATOR)
        await sandbox.send_user_message("still here")
        await sandbox.wait_acked(1)
        assert sandbox.ready_sessions() == [session], "the connection must stay up"
        for reason in {r for _, r in TEAMS_CORPUS if r}:
            assert h.metrics.value("relaybus_invalid_frames_total", platform="teams", reason=reason) >= 1, reason
        assert h.metrics.value("relaybus_invalid_frames_total", platform="teams", reason="bad_protocol_version") == 1
        assert len(h.backend.all_messages()) == 2  # the one without conversation/activity ids, and "still here"


async def test_hostile_teams_socket_urls_are_failed_attempts_with_backoff() -> None:
    async with make_sandbox() as sandbox:
        sandbox.hand_out_urls("wss://127.0.0.1:99999/client/?access_token=SECRET", "gopher://x/", "http://[::1")
        async with running(sandbox, wait_sessions=0) as h:
            await sandbox.wait_sessions(1, within=10)
            await h.until(lambda: h.statuses().get("amer") is ConnectionStatus.ONLINE)
            assert sandbox.stats["service_negotiates"] >= 4
            await sandbox.send_user_message("connected in the end")
            await sandbox.wait_acked(1)
            assert all("SECRET" not in c.detail + c.last_error for c in h.metrics.status.snapshot())


async def test_a_failing_backend_paces_teams_redeliveries_instead_of_spinning() -> None:
    """The shipped contract answers 500 (the service redelivers at once here); the breaker bounds the rate."""
    backend = MemoryBackend()
    backend.fail_all()
    metrics = Metrics()
    breaker = Breaker(threshold=3, base_pause=0.1, max_pause=0.4)
    handoff = Handoff(EnvelopePublisher(backend), metrics=metrics, breaker=breaker)
    async with make_sandbox() as sandbox:
        settings_env = {
            "TEAMS_APP_ID": sandbox.app_id,
            "TEAMS_BASE_URL": sandbox.base_url,
            "TEAMS_STATIC_TOKEN": sandbox.bot_token,
        }
        from worker.teams.settings import TeamsSettings

        connector = TeamsConnector(TeamsSettings.model_validate(settings_env), handoff, metrics, timings=FAST)
        stopping = asyncio.Event()
        task = asyncio.create_task(connector.run(stopping))
        try:
            await sandbox.wait_sessions(1)
            for i in range(20):
                await sandbox.send_user_message(f"m{i}")
            started = time.monotonic()
            await asyncio.sleep(2.0)
            redeliveries = sandbox.stats["redeliveries"]
            rate = redeliveries / (time.monotonic() - started)
            # unpaced, 20 activities answered 500 and redelivered at once make thousands of round trips a second
            assert rate < 100, f"{rate:.0f} redeliveries/s"
            assert backend.sends < 40, backend.sends
            backend.recover()
            await sandbox.wait_acked(20, within=5)
            assert len(backend.all_messages()) == 20
        finally:
            stopping.set()
            await asyncio.wait_for(task, 10)


async def test_draft_envelopes_are_kept_until_durable_not_dropped() -> None:
    backend = MemoryBackend()
    backend.fail_all()
    metrics = Metrics()
    handoff = Handoff(EnvelopePublisher(backend), metrics=metrics, breaker=Breaker(base_pause=0.05, max_pause=0.1))
    async with make_sandbox(contract="draft") as sandbox:
        from worker.teams.settings import TeamsSettings

        settings = TeamsSettings.model_validate(
            {
                "TEAMS_APP_ID": sandbox.app_id,
                "TEAMS_BASE_URL": sandbox.base_url,
                "TEAMS_STATIC_TOKEN": sandbox.bot_token,
                "TEAMS_CONTRACT": "draft",
                "TEAMS_CONNECTIONS": "2",
            }
        )
        connector = TeamsConnector(settings, handoff, metrics, timings=FAST)
        stopping = asyncio.Event()
        run = asyncio.create_task(connector.run(stopping))
        retry = asyncio.create_task(handoff.retry_kept())
        try:
            await sandbox.wait_sessions(2)
            for i in range(5):
                await sandbox.send_user_message(f"m{i}")
            async with asyncio.timeout(3):
                while handoff.kept < 5:
                    await asyncio.sleep(0.02)
            assert backend.count() == 0
            backend.recover()
            async with asyncio.timeout(3):
                while handoff.kept:
                    await asyncio.sleep(0.02)
            assert backend.count() == 5  # each event once, although both slots received it
        finally:
            stopping.set()
            retry.cancel()
            await asyncio.wait_for(run, 10)


async def test_stopping_while_the_service_negotiate_hangs_returns_at_once() -> None:
    async with make_sandbox() as sandbox:
        sandbox.negotiate_delay = 30.0
        slow = replace(FAST, connection=replace(FAST.connection, negotiate_timeout=30.0, ready_timeout=30.0))
        async with running(sandbox, timings=slow, wait_sessions=0) as h:
            await h.until(lambda: sandbox.stats["service_negotiates"] >= 1)
            started = time.monotonic()
            h.stopping.set()
            await asyncio.wait_for(h.task, 5)
            assert time.monotonic() - started < 2


async def test_stopping_while_waiting_for_socket_ready_leaves_no_reader_running() -> None:
    async with make_sandbox(send_socket_ready=False) as sandbox:
        slow = replace(FAST, connection=replace(FAST.connection, ready_timeout=30.0))
        before = {t for t in asyncio.all_tasks()}
        async with running(sandbox, timings=slow, wait_sessions=0) as h:
            await h.until(lambda: bool(sandbox.sessions))
            started = time.monotonic()
            h.stopping.set()
            await asyncio.wait_for(h.task, 5)
            assert time.monotonic() - started < 3
        await asyncio.sleep(0.05)
        left = {t for t in asyncio.all_tasks() if t not in before and not t.done()}
        assert not [t for t in left if t.get_name().startswith("teams-")], left


async def test_readyz_and_status_details_never_show_secrets() -> None:
    async with fast_sandbox() as slack:
        slack.hand_out_urls(*["wss://127.0.0.1:99999/link/?ticket=SECRETTICKET&access_token=SECRETTOKEN"] * 50)
        settings = load_settings(
            {
                "SLACK_APP_TOKEN": slack.app_token,
                "SLACK_API_URL": slack.api_url,
                "SLACK_CONNECTIONS": "1",
                "SLACK_BACKOFF_BASE_SECONDS": "0.05",
                "SLACK_BACKOFF_CAP_SECONDS": "0.1",
                "RELAYBUS_HTTP_PORT": "0",
            }
        )
        w = Worker(settings, backend=MemoryBackend())
        stopping = asyncio.Event()
        task = asyncio.create_task(w.run(stopping))
        try:
            async with asyncio.timeout(5):
                while w.health is None or not w.health.port or slack.stats.opens < 3:
                    await asyncio.sleep(0.02)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{w.health.port}") as client:
                async with asyncio.timeout(5):
                    while True:  # between attempts the slot says Connecting; the detail we want is the failure's
                        ready = await client.get("/readyz")
                        if ready.json()["connections"][0]["last_error"]:
                            break
                        await asyncio.sleep(0.02)
                metrics = await client.get("/metrics")
            assert ready.status_code == 503
            body = ready.json()
            assert body["connections"][0]["status"] in ("FailedToConnect", "Connecting")
            assert "websocket connect failed" in body["connections"][0]["last_error"]
            for text in (ready.text, metrics.text):
                assert "SECRETTICKET" not in text and "SECRETTOKEN" not in text
        finally:
            stopping.set()
            await asyncio.wait_for(task, 10)


@pytest.mark.parametrize("reason", ["too_deep", "not_utf8"])
def test_corpus_reasons_are_the_parsers_own(reason: str) -> None:
    # the corpus above names reasons the pure parsers produce: keep the two in step
    from worker.slack.protocol import Invalid, parse_frame
    from worker.teams.signalr import MalformedFrame, parse_message

    slack = next(f for f, _, r in SLACK_CORPUS if r == reason)
    parsed = parse_frame(slack, max_frame_bytes=10**9)
    assert isinstance(parsed, Invalid) and parsed.reason == reason
    teams = next(f for f, r in TEAMS_CORPUS if r == reason)
    raw = teams.rstrip(RECORD_SEPARATOR) if isinstance(teams, str) else teams.rstrip(b"\x1e")
    event = parse_message(raw)
    assert isinstance(event, MalformedFrame) and event.reason == reason
