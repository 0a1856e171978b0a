"""`python -m worker run` as an operator runs it: a real process against the sandbox Slack, stopped with SIGTERM.

Everything acked before the signal is in the queue file, the process drains and exits 0, and no token
reaches its output.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from worker.sandbox.slack import SlackSandbox
from worker.sandbox.teams import TeamsSandbox

ROOT = Path(__file__).resolve().parent.parent


def worker_env(sandbox: SlackSandbox, queue: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "TEAMS_", "RELAYBUS_", "ServiceBus"))}
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "SLACK_APP_TOKEN": sandbox.app_token,
            "SLACK_API_URL": sandbox.api_url,
            "SLACK_CONNECTIONS": "2",
            "RELAYBUS_LOCAL_QUEUE_PATH": str(queue),
            "RELAYBUS_HTTP_PORT": "0",
            "RELAYBUS_LOG_LEVEL": "DEBUG",
        }
    )
    return env


async def dump(queue: Path, cwd: Path) -> list[dict[str, object]]:
    """`python -m worker queue dump` of the queue file, parsed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        "queue",
        "--path",
        str(queue),
        "dump",
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
    )
    lines, _ = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0
    return [json.loads(line) for line in lines.decode().splitlines()]


async def test_run_publishes_acks_and_drains_on_sigterm(tmp_path: Path) -> None:
    queue = tmp_path / "queue.db"
    async with SlackSandbox(seed=3) as sandbox:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "worker",
            "run",
            cwd=tmp_path,
            env=worker_env(sandbox, queue),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            await sandbox.wait_connections(2, within=20)
            ids = [await sandbox.send_user_message(f"hello {i}") for i in range(25)]
            await sandbox.wait_acked(25, within=10)
            proc.send_signal(signal.SIGTERM)
            output, _ = await asyncio.wait_for(proc.communicate(), 20)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    text = output.decode()
    assert proc.returncode == 0, text[-2000:]
    assert sandbox.app_token not in text and "xapp-" not in text

    messages = await dump(queue, tmp_path)
    assert len(messages) == 25  # each acked envelope is in the queue, once
    assert {m["message_id"] for m in messages} == set(ids)


async def test_run_with_teams_publishes_answers_and_drains_on_sigterm(tmp_path: Path) -> None:
    queue = tmp_path / "queue.db"
    async with TeamsSandbox() as sandbox:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "TEAMS_", "RELAYBUS_", "ServiceBus"))}
        env.update(
            {
                "PYTHONPATH": str(ROOT),
                "TEAMS_APP_ID": sandbox.app_id,
                "TEAMS_BASE_URL": sandbox.base_url,
                "TEAMS_STATIC_TOKEN": sandbox.bot_token,
                "RELAYBUS_LOCAL_QUEUE_PATH": str(queue),
                "RELAYBUS_HTTP_PORT": "0",
                "RELAYBUS_LOG_LEVEL": "DEBUG",
            }
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "worker",
            "run",
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            await sandbox.wait_sessions(1, within=20)
            for i in range(10):
                await sandbox.send_user_message(f"hello {i}")
            await sandbox.wait_acked(10, within=10)
            proc.send_signal(signal.SIGTERM)
            output, _ = await asyncio.wait_for(proc.communicate(), 20)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    text = output.decode()
    assert proc.returncode == 0, text[-2000:]
    assert sandbox.bot_token not in text
    assert {r["status"] for r in sandbox.acked.values()} == {200}
    messages = await dump(queue, tmp_path)
    assert len(messages) == 10 and {m["session_id"] for m in messages} == {"a:sandbox-conversation"}
