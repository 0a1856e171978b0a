"""Teams socket mode throughput and completion latency: the relaybus worker beside the official JS client.

The sandbox Teams hub runs in a process of its own (`bench.teams_hub`) and pushes `Activity`
invocations to ONE connection, which answers each with a completion:

- relaybus: `TeamsConnector` publishing each envelope to the durable local queue
  (`localqueue.LocalQueueBackend`, SQLite WAL, synchronous=FULL) before answering status
  200; and the same worker over `MemoryBackend`, to show the worker's own cost;
- @microsoft/signalr: the official JavaScript client in node (`tests/js/client.mjs`), answering at once
  with a client result (no publish at all).

Throughput: a burst of activities, from the first send to the last status-200 completion. Latency:
p50/p99 from send to completion at a fixed 1,000 activities/s. Each client gets a fresh hub.

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
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx

from bench.report import Figure, Table, Target, percentile, render
from worker.handoff import Handoff
from worker.metrics import Metrics
from worker.publish import EnvelopePublisher, QueueBackend
from worker.publish.memory import MemoryBackend
from worker.teams.connector import TeamsConnector
from worker.teams.settings import TeamsSettings

ROOT = Path(__file__).resolve().parents[1]
JS_DIR = ROOT / "tests" / "js"
RATE = 1000.0


class Hub:
    """The sandbox hub process (`bench.teams_hub`), driven line by line over its stdin/stdout."""

    def __init__(self, proc: asyncio.subprocess.Process, info: dict[str, Any]) -> None:
        self.proc = proc
        self.base_url: str = info["base_url"]
        self.app_id: str = info["app_id"]
        self.bot_token: str = info["bot_token"]
        self.hub_shares: list[float] = []

    async def call(self, within: float, **command: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), within)
        if not line:
            raise RuntimeError(f"the sandbox hub exited during {command}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply

    async def sessions(self, n: int = 1) -> None:
        await self.call(30, op="sessions", n=n)

    async def burst(self, n: int) -> float:
        """The burst's rate; `hub_shares` gets the hub process's CPU share of a core during it (from /proc)."""
        from bench.efficiency import proc_cpu

        before = proc_cpu(self.proc.pid)
        rate = float((await self.call(180, op="burst", n=n))["rate"])
        if rate > 0:
            self.hub_shares.append((proc_cpu(self.proc.pid) - before) / (n / rate))
        return rate

    async def paced(self, seconds: float, rate: float = RATE) -> list[float]:
        return [float(x) for x in (await self.call(120, op="paced", seconds=seconds, rate=rate))["latencies"]]


@contextlib.asynccontextmanager
async def hub_process() -> AsyncIterator[Hub]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.teams_hub",
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        limit=2**24,  # the paced run answers with one long line of latencies
    )
    try:
        assert proc.stdout is not None
        yield Hub(proc, json.loads(await asyncio.wait_for(proc.stdout.readline(), 20)))
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 5)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


Client = Callable[[Hub, list[str]], contextlib.AbstractAsyncContextManager[bool]]


@contextlib.asynccontextmanager
async def local_backend() -> AsyncIterator[QueueBackend]:
    with tempfile.TemporaryDirectory(prefix="bench-teams-") as tmp:
        from localqueue import LocalQueueBackend

        backend = LocalQueueBackend(Path(tmp) / "queue.db")
        await backend.open()
        try:
            yield backend
        finally:
            await backend.close()


@contextlib.asynccontextmanager
async def memory_backend() -> AsyncIterator[QueueBackend]:
    yield MemoryBackend()


def relaybus(backend: Callable[[], contextlib.AbstractAsyncContextManager[QueueBackend]]) -> Client:
    @contextlib.asynccontextmanager
    async def client(hub: Hub, notes: list[str]) -> AsyncIterator[bool]:
        async with backend() as queue:
            metrics = Metrics()
            settings = TeamsSettings.model_validate(
                {"TEAMS_APP_ID": hub.app_id, "TEAMS_BASE_URL": hub.base_url, "TEAMS_STATIC_TOKEN": hub.bot_token}
            )
            connector = TeamsConnector(settings, Handoff(EnvelopePublisher(queue), metrics=metrics), metrics)
            stopping = asyncio.Event()
            task = asyncio.create_task(connector.run(stopping))
            try:
                await hub.sessions(1)
                yield True
            finally:
                stopping.set()
                await asyncio.wait_for(task, 30)

    return client


@contextlib.asynccontextmanager
async def js_client(hub: Hub, notes: list[str]) -> AsyncIterator[bool]:
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
                f"{hub.base_url}/amer/v3/websockets/connect", headers={"Authorization": f"Bearer {hub.bot_token}"}
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
        await hub.sessions(1)
        yield True
        process.stdin.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), 5)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def measure(client: Client, quick: bool, notes: list[str]) -> tuple[float | None, list[float], float | None]:
    """Burst rate (median of 3, 1 with --quick) and paced latencies, against a fresh hub process."""
    count = 2000 if quick else 20000
    seconds = 1.0 if quick else 5.0
    repeats = 1 if quick else 3
    async with hub_process() as hub, client(hub, notes) as available:
        if not available:
            return None, [], None
        await hub.burst(200)  # warm-up
        hub.hub_shares.clear()
        rates = sorted([await hub.burst(count) for _ in range(repeats)])
        shares = sorted(hub.hub_shares)
        share = shares[len(shares) // 2] if shares else None
        return rates[len(rates) // 2], await hub.paced(seconds), share


OURS = "relaybus -> local queue, then 200"
OURS_MEMORY = "relaybus -> MemoryBackend, then 200"
JS = "@microsoft/signalr in node (answers at once)"


async def run(quick: bool) -> list[Table]:
    notes: list[str] = []
    results = {
        JS: await measure(js_client, quick, notes),
        OURS: await measure(relaybus(local_backend), quick, notes),
        OURS_MEMORY: await measure(relaybus(memory_backend), quick, notes),
    }
    js_rate = results[JS][0]
    table = Table(
        "Teams socket mode: activities through the sandbox hub, answered",
        ["client", "activities/s (burst)", "vs JS client", "hub CPU (burst)", "p50 @1,000/s", "p99 @1,000/s"],
    )
    for name, (rate, latencies, hub_share) in results.items():
        ordered = sorted(latencies)
        ours = name == OURS
        table.add(
            name,
            Figure(rate, "/s"),
            Figure(rate / js_rate if rate and js_rate else None, "x", Target(">=", 1.0) if ours else None),
            Figure(hub_share * 100 if hub_share is not None else None, "% of a core"),
            Figure(percentile(ordered, 50) * 1000 if ordered else None, "ms"),
            Figure(percentile(ordered, 99) * 1000 if ordered else None, "ms", Target("<=", 20) if ours else None),
        )
    table.note(
        "one connection each; the hub runs in its own process (bench.teams_hub), a fresh one per client; "
        f"burst of {2000 if quick else 20000:,} activities, median of {1 if quick else 3}"
    )
    table.note(
        "hub CPU: the hub process's own during the bursts (/proc); near 100 % the hub, not the client, set the rate, "
        "and the ratio to the JS client says nothing"
    )
    table.note("relaybus commits every envelope to the local queue (SQLite WAL, synchronous=FULL) before its 200")
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
