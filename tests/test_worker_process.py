"""`python -m worker run` as an operator runs it: a real process against the sandboxes, stopped with SIGTERM.

Everything acked before the signal is in the queue file, the process drains and exits 0, and no token
reaches its output.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from devstack.sandbox.slack import SlackSandbox
from devstack.sandbox.teams import TeamsSandbox

ROOT = Path(__file__).resolve().parent.parent


class Run:
    """A `python -m worker run` process; `stop()` sends SIGTERM and returns its exit code and output."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.output = ""

    async def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(self.proc.communicate(), 20)
        self.output = output.decode()
        assert self.proc.returncode is not None
        return self.proc.returncode


@contextlib.asynccontextmanager
async def worker_run(cwd: Path, queue: Path, **settings: str) -> AsyncIterator[Run]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "TEAMS_", "RELAYBUS_", "ServiceBus"))}
    env.update(
        PYTHONPATH=str(ROOT),
        RELAYBUS_LOCAL_QUEUE_PATH=str(queue),
        RELAYBUS_HTTP_PORT="0",
        RELAYBUS_LOG_LEVEL="DEBUG",
        **settings,
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        "run",
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        yield Run(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


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


async def send_all(send: Callable[[str], Awaitable[str]], count: int) -> list[str]:
    return [await send(f"hello {i}") for i in range(count)]


async def test_run_publishes_acks_and_drains_on_sigterm(tmp_path: Path) -> None:
    queue = tmp_path / "queue.db"
    async with SlackSandbox(seed=3) as sandbox:
        settings = {"SLACK_APP_TOKEN": sandbox.app_token, "SLACK_API_URL": sandbox.api_url, "SLACK_CONNECTIONS": "2"}
        async with worker_run(tmp_path, queue, **settings) as run:
            await sandbox.wait_connections(2, within=20)
            ids = await send_all(sandbox.send_user_message, 25)
            await sandbox.wait_acked(25, within=10)
            assert await run.stop() == 0, run.output[-2000:]
    assert sandbox.app_token not in run.output and "xapp-" not in run.output
    messages = await dump(queue, tmp_path)
    assert len(messages) == 25  # each acked envelope is in the queue, once
    assert {m["message_id"] for m in messages} == set(ids)


async def test_run_with_teams_publishes_answers_and_drains_on_sigterm(tmp_path: Path) -> None:
    queue = tmp_path / "queue.db"
    async with TeamsSandbox() as sandbox:
        settings = {
            "TEAMS_APP_ID": sandbox.app_id,
            "TEAMS_BASE_URL": sandbox.base_url,
            "TEAMS_STATIC_TOKEN": sandbox.bot_token,
        }
        async with worker_run(tmp_path, queue, **settings) as run:
            await sandbox.wait_sessions(1, within=20)
            await send_all(sandbox.send_user_message, 10)
            await sandbox.wait_acked(10, within=10)
            assert await run.stop() == 0, run.output[-2000:]
    assert sandbox.bot_token not in run.output
    assert {r["status"] for r in sandbox.acked.values()} == {200}
    messages = await dump(queue, tmp_path)
    assert len(messages) == 10 and {m["session_id"] for m in messages} == {"a:sandbox-conversation"}
