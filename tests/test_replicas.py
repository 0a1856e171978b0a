"""Two replicas of one deployment (issue 14): two `python -m worker run` processes hold the same Slack app and
Teams bot and publish to the same local queue file. One is SIGKILLed mid-stream and started again: every
envelope is in the queue exactly once (`python -m worker queue dump`), the survivor's sockets keep serving
throughout, and the restarted replica logs the connections Slack counts beyond its own pool.

What makes it hold: an envelope the killed replica had received but not acked is redelivered by the platform
(Slack after its ack deadline, Teams when the connection closes or the deadline passes) to the survivor, which
publishes it again; the queue's duplicate detection on MessageId (the local queue's, as Service Bus') drops the
copy when the killed replica's commit had landed."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

import pytest

from devstack.sandbox.slack import SlackSandbox
from devstack.sandbox.teams import TeamsSandbox
from tests.test_worker_process import Run, dump, worker_run

SLACK_CONNECTIONS = 2


def settings(slack: SlackSandbox, teams: TeamsSandbox) -> dict[str, str]:
    return {
        "SLACK_APP_TOKEN": slack.app_token,
        "SLACK_API_URL": slack.api_url,
        "SLACK_CONNECTIONS": str(SLACK_CONNECTIONS),
        "SLACK_REPLICAS": "2",  # both replicas' sockets are expected: no ghost warning for the other one's
        "TEAMS_APP_ID": teams.app_id,
        "TEAMS_BASE_URL": teams.base_url,
        "TEAMS_STATIC_TOKEN": teams.bot_token,
        "TEAMS_GEOS": "amer",
    }


async def stream(
    slack: SlackSandbox, teams: TeamsSandbox, count: int, slack_keys: list[str], teams_ids: list[str]
) -> None:
    for i in range(count):
        slack_keys.append(await slack.send_user_message(f"slack {len(slack_keys)}"))
        teams_ids.append(await teams.send_user_message(f"teams {len(teams_ids)}"))
        if i % 5 == 4:
            await asyncio.sleep(0.01)  # about 500 envelopes/s over both platforms


async def eventually(predicate: object, within: float) -> None:
    async with asyncio.timeout(within):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.02)


@pytest.mark.timeout(180)
async def test_a_replica_killed_mid_stream_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    queue = tmp_path / "queue.db"
    slack_keys: list[str] = []
    teams_ids: list[str] = []
    async with (
        SlackSandbox(ack_deadline=1.0, retry_delays=(0.0, 0.5, 1.0, 2.0), seed=14) as slack,
        TeamsSandbox(deadline_ms=1000, geos=("amer",)) as teams,
    ):
        env = settings(slack, teams)
        async with contextlib.AsyncExitStack() as stack:
            survivor: Run = await stack.enter_async_context(worker_run(tmp_path, queue, **env))
            await slack.wait_connections(SLACK_CONNECTIONS, within=20)
            await teams.wait_sessions(1, within=20)
            survivor_slack = set(slack.ready_connections())
            survivor_teams = {s.connection_id for s in teams.ready_sessions()}

            victim: Run = await stack.enter_async_context(worker_run(tmp_path, queue, **env))
            await eventually(lambda: len(slack.ready_connections()) == 2 * SLACK_CONNECTIONS, 20)
            await teams.wait_sessions(2, within=20)
            await eventually(lambda: len(teams.ready_sessions()) == 2, 20)

            await stream(slack, teams, 80, slack_keys, teams_ids)
            # mid-stream: frozen first (what the platform sends it now stays unacked), then killed, no drain
            victim.proc.send_signal(signal.SIGSTOP)
            await stream(slack, teams, 20, slack_keys, teams_ids)
            victim.proc.send_signal(signal.SIGKILL)
            await victim.proc.wait()
            before_kill = len(slack_keys)
            await stream(slack, teams, 80, slack_keys, teams_ids)
            # with the victim gone, the survivor alone serves (and takes the victim's redeliveries)
            await slack.wait_acked_keys(set(slack_keys), within=30)
            await eventually(lambda: len(teams.acked) >= len(teams_ids), 30)
            assert survivor_slack <= set(slack.ready_connections())
            assert survivor_teams <= {s.connection_id for s in teams.ready_sessions()}
            assert len(slack_keys) > before_kill

            restarted: Run = await stack.enter_async_context(worker_run(tmp_path, queue, **env))
            await eventually(lambda: len(slack.ready_connections()) == 2 * SLACK_CONNECTIONS, 20)
            await eventually(lambda: len(teams.ready_sessions()) == 2, 20)
            await stream(slack, teams, 40, slack_keys, teams_ids)
            await slack.wait_acked_keys(set(slack_keys), within=30)
            await eventually(lambda: len(teams.acked) >= len(teams_ids), 30)
            assert survivor_slack <= set(slack.ready_connections())
            assert survivor_teams <= {s.connection_id for s in teams.ready_sessions()}

            assert await restarted.stop() == 0, restarted.output[-3000:]
            assert await survivor.stop() == 0, survivor.output[-3000:]
    # what the victim held unacked was redelivered to the survivor (and what it had also published, dropped)
    print(f"redelivered: slack {slack.stats.redelivered}, teams {teams.stats.get('redeliveries', 0)}")
    assert slack.stats.redelivered >= 1 and teams.stats["redeliveries"] >= 1
    assert {r["status"] for r in teams.acked.values()} == {200}
    messages = await dump(queue, tmp_path)
    ids = [str(m["message_id"]) for m in messages]
    assert len(ids) == len(set(ids)), "a duplicate in the queue"
    expected = set(slack_keys) | {f"a:sandbox-conversation/{a}" for a in teams_ids}
    assert set(ids) == expected, (sorted(expected - set(ids))[:5], sorted(set(ids) - expected)[:5])
    # the restarted replica saw Slack count the survivor's sockets beside its own: expected with SLACK_REPLICAS=2
    assert "num_connections=4" in restarted.output or "num_connections=3" in restarted.output, restarted.output[-3000:]
    assert "ghost" not in restarted.output and "ghost" not in survivor.output
