"""The Direct Line connector against the sandbox Direct Line (real sockets on 127.0.0.1, port 0): tokens,
reconnects with the watermark, restarts, collisions, polling, parking, bad input.

Timings are shrunk (ticks 50 ms, leases 1 s, reconnects 10-50 ms); token lifetimes are a second or two."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from devstack.sandbox.directline import DirectLineSandbox
from shared.errors import TransientPublishError
from tests.directline_helpers import (
    WallClock,
    dl_settings,
    eventually,
    register,
    running,
    state_of,
    stored_watermark,
    user_says,
)
from worker.directline.watermarks import SqliteDirectLineStore
from worker.publish.memory import MemoryBackend


async def test_the_agents_answers_are_published_and_the_bridges_own_messages_are_not(tmp_path: Path) -> None:
    async with DirectLineSandbox() as sandbox:
        cid = await sandbox.start_conversation()
        settings = dl_settings(sandbox, tmp_path)
        await register(settings, cid)
        async with running(settings) as run:
            await eventually(lambda: state_of(run, cid) == "Online", what="Online")
            await user_says(sandbox, cid, "hello")
            await eventually(lambda: "Echo: hello" in run.texts(), what="the echo")
            envelopes = run.envelopes()
            assert all(e.payload["from"]["role"] == "bot" for e in envelopes)  # the user's echo was not published
            assert [e.event_type for e in envelopes] == ["typing", "message"]
            message = envelopes[-1]
            assert message.dedupe_key == message.activity_id == message.payload["id"]
            assert message.conversation_key == cid and message.platform == "directline"
            assert [m.session_id for m in run.backend.all_messages()] == [cid, cid]
            await eventually(lambda: run.connector.events["own_echoes"] == 1, what="the own echo counted")
            # the stored watermark covers the published message (2 stored activities: the user's, the echo)
            await eventually(lambda: getattr(run.connector.conversations.get(cid), "stored_watermark", "") == "2")
        assert await stored_watermark(settings, cid) == "2"
        board = {(c.platform, c.name): c for c in run.metrics.status.snapshot()}
        assert board[("directline", "conversations")].status.value == "Ended"
        text = run.metrics.render().decode()
        assert 'relaybus_directline_conversations{state="Online"}' in text


async def test_tokens_are_refreshed_before_they_expire_and_the_conversation_stays_online(tmp_path: Path) -> None:
    async with DirectLineSandbox(token_lifetime=1.0) as sandbox:
        cid = await sandbox.start_conversation()
        settings = dl_settings(sandbox, tmp_path, refresh_fraction=0.5)
        await register(settings, cid)
        async with running(settings) as run:
            await eventually(lambda: state_of(run, cid) == "Online")
            await eventually(lambda: sandbox.stats.tokens_refreshed >= 3, within=4, what="three refreshes")
            assert sandbox.stats.expired_rejections == 0
            assert run.connector.events["expired_tokens"] == 0
            sandbox.drop(cid)  # a reconnect needs a live token: the refreshed one works
            await eventually(lambda: sandbox.stats.sockets_opened == 2 and state_of(run, cid) == "Online")
            assert sandbox.stats.expired_rejections == 0
            await user_says(sandbox, cid, "still here")
            await eventually(lambda: "Echo: still here" in run.texts())


async def test_a_worker_frozen_past_the_expiry_sees_expired_token_and_recovers_with_the_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = WallClock()
    async with DirectLineSandbox(token_lifetime=0.6) as sandbox:
        cid = await sandbox.start_conversation()
        settings = dl_settings(sandbox, tmp_path)
        await register(settings, cid)
        with caplog.at_level(logging.INFO, logger="worker.directline"):
            async with running(settings, clock=clock) as run:
                await eventually(lambda: state_of(run, cid) == "Online")
                clock.freeze()  # the worker's clock stops: it never refreshes, the service's token expires
                await asyncio.sleep(0.9)
                await sandbox.say(cid, "while you were away")  # stored; streamed on the live socket
                sandbox.drop(cid)
                # the reconnect with the dead token gets 403 TokenExpired: ExpiredToken, then the secret
                await eventually(lambda: run.connector.events["expired_tokens"] >= 1, what="ExpiredToken")
                await eventually(lambda: state_of(run, cid) == "Online" and sandbox.stats.sockets_opened >= 2)
                assert sandbox.stats.expired_rejections >= 1
                clock.thaw()
                await user_says(sandbox, cid, "back")
                await eventually(lambda: "Echo: back" in run.texts())
                assert run.texts().count("while you were away") == 1
    assert any("ExpiredToken" in r.getMessage() for r in caplog.records)


async def test_a_wall_clock_past_the_expiry_never_refreshes_and_regenerates_from_the_secret(tmp_path: Path) -> None:
    clock = WallClock()
    async with DirectLineSandbox(token_lifetime=60.0) as sandbox:
        cid = await sandbox.start_conversation()
        settings = dl_settings(sandbox, tmp_path)
        await register(settings, cid)
        async with running(settings, clock=clock) as run:
            await eventually(lambda: state_of(run, cid) == "Online")
            refreshed = sandbox.stats.tokens_refreshed
            clock.jump(3600)  # a laptop that slept an hour: the token is past its expiry
            await eventually(lambda: run.connector.events["regenerated_tokens"] >= 1, what="a token from the secret")
            assert sandbox.stats.tokens_refreshed == refreshed  # no refresh after the expiry
            assert run.connector.events["expired_tokens"] >= 1
            await eventually(lambda: state_of(run, cid) == "Online")
            await user_says(sandbox, cid, "awake")
            await eventually(lambda: "Echo: awake" in run.texts())


async def test_a_dropped_socket_resumes_with_the_watermark_without_gap_or_duplicate(tmp_path: Path) -> None:
    async with DirectLineSandbox() as sandbox:
        cid = await sandbox.start_conversation()
        settings = dl_settings(sandbox, tmp_path, reconnect_min_seconds=0.3, reconnect_max_seconds=0.3)
        await register(settings, cid)
        async with running(settings) as run:
            await eventually(lambda: state_of(run, cid) == "Online")
            for i in range(5):
                await sandbox.say(cid, f"before {i}")
            await eventually(lambda: len(run.texts()) == 5)
            sandbox.drop(cid)
            await eventually(lambda: not sandbox.socket_open(cid))
            for i in range(5):
                await sandbox.say(cid, f"during {i}")  # no socket: only the replay can bring these
            await eventually(lambda: len(run.texts()) == 10, what="the replay")
            await asyncio.sleep(0.2)
            assert run.texts() == [f"before {i}" for i in range(5)] + [f"during {i}" for i in range(5)]
            assert len(set(run.ids())) == 10 and run.backend.sends == 10  # nothing sent twice
            assert sandbox.stats.resumes >= 2


async def test_a_silent_socket_is_replaced_by_the_watchdog(tmp_path: Path) -> None:
    async with DirectLineSandbox(keepalive_interval=0.1) as sandbox:
        cid = await sandbox.start_conversation()
        settings = dl_settings(sandbox, tmp_path, ping_interval=0.1, liveness_timeout=0.5)
        await register(settings, cid)
        async with running(settings) as run:
            await eventually(lambda: state_of(run, cid) == "Online")
            sandbox.freeze(cid)  # a sleeping laptop: nothing comes in, not even pongs
            await sandbox.say(cid, "said while frozen")
            # the watchdog drops the silent socket and resumes with the watermark (the service still holds the
            # frozen one: the new socket collides, and the conversation polls until the socket is free again)
            await eventually(lambda: "said while frozen" in run.texts(), within=5, what="the replay")
            assert sandbox.stats.sockets_opened + sandbox.stats.collisions >= 2
            assert run.texts().count("said while frozen") == 1


async def test_a_restart_resumes_from_the_stored_watermark_and_publishes_exactly_once(tmp_path: Path) -> None:
    backend = MemoryBackend()
    async with DirectLineSandbox() as sandbox:
        cid = await sandbox.start_conversation()
        settings = dl_settings(sandbox, tmp_path)
        await register(settings, cid)
        async with running(settings, backend=backend) as first:
            await eventually(lambda: state_of(first, cid) == "Online")
            for i in range(3):
                await sandbox.say(cid, f"one {i}")
            await eventually(lambda: len(first.texts()) == 3)
        assert await stored_watermark(settings, cid) == "3"
        for i in range(3):
            await sandbox.say(cid, f"two {i}")  # while no worker runs
        sends = backend.sends
        async with running(settings, backend=backend) as second:  # a new connector, a new handoff
            await eventually(lambda: len(second.texts()) == 6, what="what came while down")
            await asyncio.sleep(0.2)
        assert backend.sends - sends == 3  # resumed after the stored watermark: nothing replayed
        assert second.texts() == [f"one {i}" for i in range(3)] + [f"two {i}" for i in range(3)]


async def test_a_crash_before_the_watermark_was_written_replays_and_the_queue_keeps_one_copy(tmp_path: Path) -> None:
    backend = MemoryBackend()
    async with DirectLineSandbox() as sandbox:
        cid = await sandbox.start_conversation()
        settings = dl_settings(sandbox, tmp_path, flush_seconds=30.0)  # no watermark is written in time
        await register(settings, cid)
        async with running(settings, backend=backend) as first:
            await eventually(lambda: state_of(first, cid) == "Online")
            for i in range(3):
                await sandbox.say(cid, f"m {i}")
            await eventually(lambda: len(first.texts()) == 3)
            first.task.cancel()  # no graceful stop: the stored watermark stays behind
            with pytest.raises(asyncio.CancelledError):
                await first.task
        assert await stored_watermark(settings, cid) is None
        # its lease lapses; a new instance takes over and replays from the start
        async with running(dl_settings(sandbox, tmp_path), backend=backend) as second:
            await eventually(lambda: backend.duplicates == 3, what="the replay dropped as duplicates")
            await sandbox.say(cid, "after")
            await eventually(lambda: second.texts()[-1:] == ["after"])
        assert second.texts() == ["m 0", "m 1", "m 2", "after"]  # MessageId = activity id: one copy each


async def test_a_collision_is_handled_and_the_conversation_keeps_flowing(tmp_path: Path) -> None:
    async with DirectLineSandbox() as sandbox:
        cid = await sandbox.start_conversation()
        async with httpx.AsyncClient() as http:
            grant = (
                await http.get(
                    f"{sandbox.base_url}/conversations/{cid}", headers={"Authorization": f"Bearer {sandbox.secret}"}
                )
            ).json()
        async with connect(grant["streamUrl"]) as other:  # someone else holds the conversation's socket
            settings = dl_settings(sandbox, tmp_path)
            await register(settings, cid)
            async with running(settings) as run:
                await eventually(lambda: run.connector.events["collisions"] >= 1, what="a collision")
                await eventually(lambda: run.connector.events["polling_fallbacks"] >= 1, what="polling instead")
                await sandbox.say(cid, "through the poll")
                await eventually(lambda: "through the poll" in run.texts())
            assert sandbox.stats.collisions >= 1
            await other.close()


async def test_polling_is_the_fallback_when_websockets_fail(tmp_path: Path) -> None:
    async with DirectLineSandbox(stream_url_lifetime=0.0) as sandbox:  # every upgrade is refused (403)
        cid = await sandbox.start_conversation()
        settings = dl_settings(sandbox, tmp_path, websocket_failures_before_polling=2)
        await register(settings, cid)
        async with running(settings) as run:
            await eventually(lambda: getattr(run.connector.conversations.get(cid), "mode", "") == "polling")
            await eventually(lambda: state_of(run, cid) == "Online")
            await user_says(sandbox, cid, "polled")
            await eventually(lambda: "Echo: polled" in run.texts())
            assert sandbox.stats.streams_refused >= 2 and sandbox.stats.polls >= 1
            assert run.connector.events["polling_fallbacks"] == 1
            # typing is WebSocket only: polling sees the message, never the typing activity
            assert [e.event_type for e in run.envelopes()] == ["message"]


async def test_polling_and_a_socket_delivering_the_same_activities_publish_them_once(tmp_path: Path) -> None:
    async with DirectLineSandbox() as sandbox:
        cid = await sandbox.start_conversation()
        settings = dl_settings(sandbox, tmp_path)
        await register(settings, cid)
        async with running(settings) as run:
            await eventually(lambda: state_of(run, cid) == "Online")
            for i in range(4):
                await sandbox.say(cid, f"both {i}")
            await eventually(lambda: len(run.texts()) == 4)
            conversation = run.connector.conversations[cid]
            conversation._poll_watermark = None  # a poll from the start: every activity again
            conversation.tracker.seen = None
            await conversation._poll_once(use_token=False)
            await asyncio.sleep(0.2)
            assert len(run.texts()) == 4 and run.backend.sends == 4
            assert run.metrics.total("relaybus_duplicates_dropped_total", platform="directline") == 4


async def test_a_parked_conversation_is_resumed_by_an_outgoing_message(tmp_path: Path) -> None:
    async with DirectLineSandbox() as sandbox:
        cid = await sandbox.start_conversation()
        settings = dl_settings(sandbox, tmp_path, idle_park_seconds=0.3, park_poll_seconds=30.0)
        await register(settings, cid)
        async with running(settings) as run:
            await eventually(lambda: state_of(run, cid) == "Parked", within=3, what="parked")
            await eventually(lambda: not sandbox.socket_open(cid))
            assert run.connector.counts()["Parked"] == 1
            await register(settings, cid)  # what the function side does on every outgoing message
            await eventually(lambda: state_of(run, cid) == "Online" and sandbox.socket_open(cid), what="resumed")
            await user_says(sandbox, cid, "wake up")
            await eventually(lambda: "Echo: wake up" in run.texts())
            assert run.connector.events["resumed"] == 1


async def test_a_parked_conversation_is_resumed_by_a_poll_that_finds_a_proactive_message(tmp_path: Path) -> None:
    async with DirectLineSandbox() as sandbox:
        cid = await sandbox.start_conversation()
        settings = dl_settings(sandbox, tmp_path, idle_park_seconds=0.3, park_poll_seconds=0.3)
        await register(settings, cid)
        async with running(settings) as run:
            await eventually(lambda: state_of(run, cid) == "Parked", within=3)
            await sandbox.say(cid, "a proactive message, much later")
            await eventually(lambda: "a proactive message, much later" in run.texts(), what="found by the poll")
            await eventually(lambda: state_of(run, cid) == "Online", what="resumed")


async def test_bad_frames_are_counted_and_the_conversation_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with DirectLineSandbox() as sandbox:
        cid = await sandbox.start_conversation()
        settings = dl_settings(sandbox, tmp_path)
        await register(settings, cid)
        async with running(settings) as run:
            await eventually(lambda: state_of(run, cid) == "Online")
            for i in range(3):
                await sandbox.say(cid, f"m {i}")
            await eventually(lambda: len(run.texts()) == 3)
            bot = {"type": "message", "from": {"id": "sandbox-agent", "role": "bot"}, "text": "no id"}
            with caplog.at_level(logging.WARNING, logger="worker.directline"):
                await sandbox.send_raw(cid, "not json")
                await sandbox.send_raw(cid, "[1, 2]")
                await sandbox.send_raw(cid, b"\xff\xfe")
                await sandbox.send_raw(cid, json.dumps({"activities": "nope", "watermark": "9"}))
                await sandbox.send_raw(cid, json.dumps({"activities": [bot, 7], "watermark": "3"}))
                stale = {**bot, "id": f"{cid}|0000001", "text": "m 1"}
                await sandbox.send_raw(cid, json.dumps({"activities": [stale], "watermark": "1"}))  # backwards
                await sandbox.send_raw(cid, "")  # a keep-alive: nothing to count
                await sandbox.say(cid, "after the noise")
                await eventually(lambda: run.texts()[-1:] == ["after the noise"])
            invalid = {
                reason: run.metrics.value("relaybus_invalid_frames_total", platform="directline", reason=reason)
                for reason in (
                    "not_json",
                    "not_object",
                    "not_utf8",
                    "bad_activities",
                    "missing_id",
                    "activity_not_object",
                    "watermark_backwards",
                )
            }
            assert invalid == dict.fromkeys(invalid, 1.0), invalid
            assert run.texts() == ["m 0", "m 1", "m 2", "after the noise"]  # the stale copy was a duplicate
            await eventually(lambda: run.connector.conversations[cid].stored_watermark == "4", what="stored")
            assert await stored_watermark(settings, cid) == "4"
        reasons = " ".join(r.getMessage() for r in caplog.records)
        assert "reason=missing_id" in reasons and "reason=watermark_backwards" in reasons


async def test_a_conversation_the_service_no_longer_knows_ends_with_the_reason(tmp_path: Path) -> None:
    async with DirectLineSandbox() as sandbox:
        gone, kept = await sandbox.start_conversation(), await sandbox.start_conversation()
        settings = dl_settings(sandbox, tmp_path)
        await register(settings, gone)
        await register(settings, kept)
        async with running(settings) as run:
            await eventually(lambda: state_of(run, gone) == "Online" and state_of(run, kept) == "Online")
            sandbox.forget(gone)
            await eventually(lambda: gone not in run.connector.conversations, what="ended and let go")
            await sandbox.say(kept, "the other one goes on")
            await eventually(lambda: "the other one goes on" in run.texts())
            assert run.connector.events["ended"] == 1
        store = SqliteDirectLineStore(settings.store_path)
        row = await store.get(gone)
        await store.aclose()
        assert row is not None and row.state == "ended" and "404" in (row.ended_reason or "")


async def test_throttling_and_bad_gateway_are_waited_out_with_retry_after(tmp_path: Path) -> None:
    async with DirectLineSandbox() as sandbox:
        cid = await sandbox.start_conversation()
        settings = dl_settings(sandbox, tmp_path)
        sandbox.fail_next(429, 1, retry_after=0.4)
        sandbox.fail_next(502, 1, retry_after=None)
        started = asyncio.get_running_loop().time()
        await register(settings, cid)
        async with running(settings) as run:
            await eventually(lambda: state_of(run, cid) == "FailedToConnect", what="FailedToConnect")
            await eventually(lambda: state_of(run, cid) == "Online", what="Online after the waits")
            assert asyncio.get_running_loop().time() - started >= 0.4  # Retry-After honoured
            assert sandbox.stats.failures_injected == 2


async def test_a_failing_queue_holds_the_watermark_back_until_the_activity_is_durable(tmp_path: Path) -> None:
    backend = MemoryBackend()
    async with DirectLineSandbox() as sandbox:
        cid = await sandbox.start_conversation()
        settings = dl_settings(sandbox, tmp_path)
        await register(settings, cid)
        async with running(settings, backend=backend) as run:
            await eventually(lambda: state_of(run, cid) == "Online")
            await sandbox.say(cid, "first")
            await eventually(lambda: run.texts() == ["first"])
            await eventually(lambda: getattr(run.connector.conversations.get(cid), "stored_watermark", "") == "1")
            backend.fail_with(TransientPublishError("queue down"))
            await sandbox.say(cid, "second")
            await asyncio.sleep(0.4)
            assert run.connector.conversations[cid].watermark == "1"  # not durable: the watermark waits
            assert await stored_watermark(settings, cid) == "1"
            backend.recover()
            await eventually(lambda: run.texts() == ["first", "second"], within=8)
            await eventually(lambda: getattr(run.connector.conversations.get(cid), "stored_watermark", "") == "2")
