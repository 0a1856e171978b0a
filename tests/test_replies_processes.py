"""Synchronous answers across real `python -m worker run` processes sharing one queue file.

Each worker process reads only its own session of the reply queue: two workers on the same queues get
exactly their own answers; a worker killed (SIGKILL) while answers to it are on their way leaves them in its
session, which its successor (another session) never reads, until they expire; nothing waits for them.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

from devstack.sandbox.slack import SlackSandbox
from localqueue import LocalQueueStore
from shared.envelope import Envelope
from shared.replies import Reply
from shared.routes import REPLIES
from tests.replies_helpers import FunctionPlayer, eventually, reply
from tests.test_worker_process import worker_run

BUDGET = {"SLACK_ANSWER_MARGIN_MS": "2400", "SLACK_CONNECTIONS": "1"}  # the worker waits 600 ms for an answer


def slack_settings(slack: SlackSandbox) -> dict[str, str]:
    return {"SLACK_APP_TOKEN": slack.app_token, "SLACK_API_URL": slack.api_url, **BUDGET}


def answer_naming_the_session(envelope: Envelope) -> Reply:
    assert envelope.reply_to is not None
    return reply(envelope, {"text": f"{envelope.tenant} via {envelope.reply_to.session_id}"})


async def test_two_worker_processes_on_one_queue_file_each_get_only_their_own_answers(tmp_path: Path) -> None:
    queue = tmp_path / "queue.db"
    async with (
        SlackSandbox(seed=11, team_id="TA") as a,
        SlackSandbox(seed=12, team_id="TB") as b,
        worker_run(tmp_path, queue, **slack_settings(a)) as run_a,
    ):
        await a.wait_connections(1, within=20)  # one after the other: the first open creates the file
        async with worker_run(tmp_path, queue, **slack_settings(b)) as run_b:
            await b.wait_connections(1, within=20)
            async with FunctionPlayer(queue, answer_naming_the_session).running() as player:
                sent = []
                for i in range(6):
                    sandbox = a if i % 2 == 0 else b
                    sent.append((sandbox, (await sandbox.send_slash_command("/ticket-count")).key))
                records = [await sandbox.wait_ack(key, within=5) for sandbox, key in sent]
            assert await run_b.stop() == 0, run_b.output[-3000:]
        assert await run_a.stop() == 0, run_a.output[-3000:]
    texts = [r.payload["text"] if r and r.payload else None for r in records]
    assert None not in texts, texts  # every interaction got its own answer, none fell back
    sessions = {e.tenant: e.reply_to.session_id for e in player.received if e.reply_to}
    assert set(sessions) == {"TA", "TB"} and sessions["TA"] != sessions["TB"]
    for (sandbox, _), text in zip(sent, texts, strict=True):
        assert text == f"{sandbox.team_id} via {sessions[sandbox.team_id]}"
    for run in (run_a, run_b):
        assert run.output.count("answer received") == 3, run.output[-3000:]
        assert "does not wait for" not in run.output and "late reply" not in run.output
    with LocalQueueStore(queue, create=False) as store:
        assert store.messages(REPLIES.queue) == []  # every answer was taken by its worker
        assert {s.queue: s.sessions_locked for s in store.stats()}[REPLIES.queue] == 0  # sessions released


async def test_a_killed_workers_answers_never_reach_its_successor_and_expire(tmp_path: Path) -> None:
    queue = tmp_path / "queue.db"
    release = asyncio.Event()

    async def held_for_a(envelope: Envelope) -> Reply:
        if envelope.tenant == "TA":
            await release.wait()  # the function is still working when the worker dies
        return answer_naming_the_session(envelope)

    async with (
        SlackSandbox(seed=13, team_id="TA") as a,
        SlackSandbox(seed=14, team_id="TB") as b,
        worker_run(tmp_path, queue, **slack_settings(a)) as run_a,
    ):
        await a.wait_connections(1, within=20)
        async with FunctionPlayer(queue, held_for_a).running() as player:
            for _ in range(3):
                await a.send_slash_command("/ticket-count")
            await eventually(lambda: len(player.received) == 3, 5)
            run_a.proc.send_signal(signal.SIGKILL)
            await asyncio.wait_for(run_a.proc.wait(), 10)
            release.set()  # the answers to the dead worker are sent now
            await eventually(lambda: len(player.sent) == 3, 5)
            dead_session = player.received[0].reply_to.session_id if player.received[0].reply_to else ""

            async with worker_run(tmp_path, queue, **slack_settings(b)) as run_b:  # the successor
                await b.wait_connections(1, within=20)
                started = time.monotonic()
                keys = [(await b.send_slash_command("/ticket-count")).key for _ in range(3)]
                records = [await b.wait_ack(key, within=5) for key in keys]
                answered_in = time.monotonic() - started
                assert await run_b.stop() == 0, run_b.output[-3000:]
    assert a.stats.acked == 0  # the killed worker answered nothing (Slack shows those users an error)
    assert all(r is not None and r.payload and r.payload["text"].startswith("TB via ") for r in records)
    assert answered_in < 3, answered_in  # nothing waited for the dead worker's answers
    assert dead_session not in run_b.output
    assert "does not wait for" not in run_b.output and "late reply" not in run_b.output
    with LocalQueueStore(queue, create=False) as store:
        left = store.messages(REPLIES.queue)
        assert [m.reply_to_session_id for m in left] == [None] * 3
        assert {m.session_id for m in left} == {dead_session}  # still in the dead worker's session
        assert all(m.expires_at is not None and m.expires_at <= time.time() + 31 for m in left)
    later = time.time() + REPLIES.time_to_live.total_seconds() + 1
    with LocalQueueStore(queue, create=False, clock=lambda: later) as store:
        store.sweep()
        assert store.messages(REPLIES.queue) == []  # expired: gone, not dead-lettered
        assert store.dead_letters(REPLIES.queue) == []
        assert store.expired == 3
