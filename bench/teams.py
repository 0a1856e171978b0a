"""Teams socket mode throughput and completion latency: the relaybus worker beside the official JS client.

The sandbox Teams hub (`worker.sandbox.teams.TeamsSandbox`) pushes `Activity` invocations to ONE
connection, which answers each with a completion:

- relaybus: `TeamsConnector` publishing each envelope to the durable local queue
  (`shared.queueing.local.LocalQueueBackend`; MemoryBackend with a visible note if unavailable) before
  answering status 200. It shares its event loop with the sandbox (a handicap for relaybus);
- @microsoft/signalr: the official JavaScript client in node (`tests/js/client.mjs`), answering at once
  with a client result (no publish at all).

Throughput: a burst of activities, from the first send to the last status-200 completion. Latency:
p50/p99 from send to completion at a fixed 1,000 activities/s.

    python -m bench.teams [--quick]      # alone
    python -m bench --only teams         # with the other benchmarks
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from bench.report import Figure, Table, Target, percentile, render
from shared.queueing.base import EnvelopePublisher, QueueBackend
from shared.queueing.memory import MemoryBackend
from worker.handoff import Handoff
from worker.metrics import Metrics
from worker.sandbox.teams import TeamsSandbox
from worker.teams.connector import TeamsConnector
from worker.teams.settings import TeamsSettings

ROOT = Path(__file__).resolve().parents[1]
JS_DIR = ROOT / "tests" / "js"
RATE = 1000.0


@contextlib.asynccontextmanager
async def relaybus(sandbox: TeamsSandbox, notes: list[str]) -> AsyncIterator[None]:
    with tempfile.TemporaryDirectory() as tmp:
        backend: QueueBackend
        try:
            from shared.queueing.local import LocalQueueBackend

            local = LocalQueueBackend(Path(tmp) / "queue.db")
            await local.open()
            backend = local
        except ImportError:
            backend = MemoryBackend()
            notes.append("relaybus published to MemoryBackend: the local queue is not available")
        metrics = Metrics()
        settings = TeamsSettings.model_validate(
            {
                "TEAMS_APP_ID": sandbox.app_id,
                "TEAMS_BASE_URL": sandbox.base_url,
                "TEAMS_STATIC_TOKEN": sandbox.bot_token,
            }
        )
        connector = TeamsConnector(settings, Handoff(EnvelopePublisher(backend), metrics=metrics), metrics)
        stopping = asyncio.Event()
        task = asyncio.create_task(connector.run(stopping))
        try:
            await sandbox.wait_sessions(1, within=10)
            yield
        finally:
            stopping.set()
            await asyncio.wait_for(task, 30)
            await backend.close()


@contextlib.asynccontextmanager
async def js_client(sandbox: TeamsSandbox, notes: list[str]) -> AsyncIterator[bool]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        notes.append("@microsoft/signalr not measured: node/npm not found")
        yield False
        return
    if not (JS_DIR / "node_modules" / "@microsoft" / "signalr").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS_DIR, check=True, timeout=300, capture_output=True)
    async with httpx.AsyncClient() as http:
        grant = (
            await http.post(
                f"{sandbox.base_url}/amer/v3/websockets/connect",
                headers={"Authorization": f"Bearer {sandbox.bot_token}"},
            )
        ).json()
    process = await asyncio.create_subprocess_exec(
        node,
        str(JS_DIR / "client.mjs"),
        grant["url"],
        grant["accessToken"],
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None and process.stdin is not None
        await asyncio.wait_for(process.stdout.readline(), 20)
        await sandbox.wait_sessions(1, within=10)
        yield True
        process.stdin.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), 5)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def burst(sandbox: TeamsSandbox, count: int) -> float:
    """Activities per second: `count` sent back to back, until the last completion."""
    acked = len(sandbox.acked)
    started = time.perf_counter()
    for i in range(count):
        await sandbox.send_activity(sandbox.new_activity(f"burst {i}"))
    await sandbox.wait_acked(acked + count, within=120)
    return count / (sandbox.last_ack_at - started)


async def paced(sandbox: TeamsSandbox, seconds: float, rate: float = RATE) -> list[float]:
    """Send at `rate`/s in 10 ms ticks for `seconds`; return the completion latencies (s)."""
    sandbox.latencies.clear()
    acked = len(sandbox.acked)
    per_tick = max(1, int(rate / 100))
    ticks = int(seconds * 100)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for tick in range(ticks):
        for _ in range(per_tick):
            await sandbox.send_activity(sandbox.new_activity("paced"))
        delay = start + (tick + 1) / 100 - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
    await sandbox.wait_acked(acked + ticks * per_tick, within=60)
    return list(sandbox.latencies)


async def measure(client: str, quick: bool, notes: list[str]) -> tuple[float | None, list[float]]:
    count = 2000 if quick else 20000
    seconds = 1.0 if quick else 5.0
    async with TeamsSandbox(deadline_ms=30000) as sandbox:
        if client == "relaybus":
            async with relaybus(sandbox, notes):
                await burst(sandbox, 200)  # warm-up
                rate = await burst(sandbox, count)
                return rate, await paced(sandbox, seconds)
        async with js_client(sandbox, notes) as available:
            if not available:
                return None, []
            await burst(sandbox, 200)
            rate = await burst(sandbox, count)
            return rate, await paced(sandbox, seconds)


async def run(quick: bool) -> list[Table]:
    notes: list[str] = []
    js_rate, js_lat = await measure("@microsoft/signalr", quick, notes)
    rb_rate, rb_lat = await measure("relaybus", quick, notes)
    table = Table(
        "Teams socket mode: activities through the sandbox hub, answered",
        ["client", "activities/s (burst)", "p50 @1,000/s", "p99 @1,000/s"],
    )
    table.add(
        "relaybus (publish to local queue, then 200)",
        Figure(rb_rate, "/s", Target(">=", js_rate) if js_rate else None),
        Figure(percentile(sorted(rb_lat), 50) * 1000 if rb_lat else None, "ms"),
        Figure(percentile(sorted(rb_lat), 99) * 1000 if rb_lat else None, "ms", Target("<=", 20)),
    )
    table.add(
        "@microsoft/signalr in node (answers at once)",
        Figure(js_rate, "/s"),
        Figure(percentile(sorted(js_lat), 50) * 1000 if js_lat else None, "ms"),
        Figure(percentile(sorted(js_lat), 99) * 1000 if js_lat else None, "ms"),
    )
    table.note("one connection each; the sandbox hub runs in the relaybus process (shares its event loop)")
    for note in notes:
        table.note(note)
    return [table]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    tables = asyncio.run(run(args.quick))
    if args.json:
        print(json.dumps([t.to_json() for t in tables], indent=2))
    else:
        print(render(tables))


if __name__ == "__main__":
    main()
