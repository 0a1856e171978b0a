"""CPU per envelope on the production path: Slack → worker → Service Bus (and the local queue), beside the bare
loop and the official Node client, every client in a process of its own.

Each client (`bench.efficiency_client`, or `@slack/socket-mode` in node) holds ONE socket to a sandbox Slack of
its own (`python -m devstack.sandbox.slack`, another process), all of them alive at once; the runs are
interleaved (client A, B, C, … then again), so that the VM's drift hits every client alike. Per run:

- flat out: the sandbox pushes a burst as fast as the socket takes it; envelopes/s = burst / (first send →
  last ack), as the sandbox sees it;
- 1,000/s: the sandbox pushes at a fixed rate; p99 ack = send → ack, measured by the sandbox.

CPU is each client process's own (`resource.getrusage` in Python, `process.cpuUsage()` in node: user +
system, every thread), read before and after the run; the sandbox's CPU (from /proc) says when the sandbox
was the bound. Figures are medians over the runs; ratios are against the bare loop in the same run.

    python -m bench.efficiency [--quick]
    python -m bench --only efficiency
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.report import Figure, Table, Target, render
from bench.slack import Sandbox, sandbox_process

ROOT = Path(__file__).resolve().parents[1]
NODE_PACKAGE = ROOT / "bench" / "npm" / "slack-socket-mode"
NODE_CACHE = ROOT / ".relaybus" / "node" / "slack-socket-mode"
SOCKET_MODE_VERSION = "2.0.7"
RTT = 0.015
RATE = 1000.0

BARE = "bare websockets loop"
NODE = f"@slack/socket-mode {SOCKET_MODE_VERSION} (node)"
LOCAL = "relaybus worker -> durable local queue"
SERVICEBUS = "relaybus worker -> Service Bus (15 ms RTT)"
MEMORY = "relaybus worker -> MemoryBackend"

KINDS = {BARE: "bare", LOCAL: "local", SERVICEBUS: "servicebus", MEMORY: "memory"}


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process, from /proc (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def node_client() -> tuple[list[str], dict[str, str]] | str:
    """The command that runs the Node client (installing the pinned package once), or why it cannot run."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        return "node/npm not found on PATH"
    stamp = hashlib.sha256(b"".join((NODE_PACKAGE / n).read_bytes() for n in ("package.json", "package-lock.json")))
    NODE_CACHE.mkdir(parents=True, exist_ok=True)
    modules = NODE_CACHE / "node_modules"
    with (NODE_CACHE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        marker = NODE_CACHE / ".installed"
        if not (marker.is_file() and marker.read_text().strip() == stamp.hexdigest()):
            for name in ("package.json", "package-lock.json"):
                shutil.copyfile(NODE_PACKAGE / name, NODE_CACHE / name)
            result = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--omit=dev", "--ignore-scripts", "--loglevel=error"],
                cwd=NODE_CACHE,
                capture_output=True,
                text=True,
                timeout=300,
            )
            if result.returncode != 0:
                tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["?"]
                return f"npm ci of @slack/socket-mode@{SOCKET_MODE_VERSION} failed: {tail[0][:200]}"
            marker.write_text(stamp.hexdigest() + "\n")
    return [node, str(NODE_PACKAGE / "client.mjs")], {"RELAYBUS_NODE_MODULES": str(modules)}


class Client:
    """A client process speaking the `ready` / `cpu` line protocol."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc

    async def cpu(self) -> float:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"cpu\n")
        await self.proc.stdin.drain()
        return float(await asyncio.wait_for(self.proc.stdout.readline(), 10))


@contextlib.asynccontextmanager
async def client_process(name: str, sandbox: Sandbox, notes: list[str]) -> AsyncIterator[Client | None]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "TEAMS_", "RELAYBUS_", "ServiceBus"))}
    env["PYTHONPATH"] = str(ROOT)
    if name == NODE:
        found = node_client()
        if isinstance(found, str):
            notes.append(f"{NODE} not measured: {found}")
            yield None
            return
        command, extra = found
        env.update(extra)
        command = [*command, sandbox.api_url, sandbox.app_token]
    else:
        command = [sys.executable, "-m", "bench.efficiency_client", KINDS[name], sandbox.api_url, sandbox.app_token]
    proc = await asyncio.create_subprocess_exec(
        *command, cwd=ROOT, env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        if line.strip() != b"ready":
            notes.append(f"{name} not measured: it did not start ({line[:200]!r})")
            yield None
            return
        await sandbox.wait_ready(1)
        yield Client(name, proc)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 20)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@dataclass
class Runs:
    cpu_per_10k: list[float] = field(default_factory=list)
    rate: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    client_share: list[float] = field(default_factory=list)
    sandbox_share: list[float] = field(default_factory=list)
    short: int = 0

    def median(self, name: str) -> float | None:
        values: list[float] = getattr(self, name)
        return float(statistics.median(values)) if values else None


async def one_run(client: Client, sandbox: Sandbox, count: int, rate: float | None, runs: Runs) -> None:
    within = 60.0 if rate is None else count / rate + 30
    await sandbox.reset()
    cpu0, box0 = await client.cpu(), proc_cpu(sandbox.proc.pid)
    stats = await sandbox.run_burst(count, rate, within)
    cpu1, box1 = await client.cpu(), proc_cpu(sandbox.proc.pid)
    if stats["acked"] < count:
        runs.short += 1
        return
    seconds = float(stats["push_seconds"])
    runs.cpu_per_10k.append((cpu1 - cpu0) / count * 10_000)
    runs.rate.append(count / seconds)
    runs.client_share.append((cpu1 - cpu0) / seconds)
    runs.sandbox_share.append((box1 - box0) / seconds)
    if stats.get("latency_p99") is not None:
        runs.p99_ms.append(float(stats["latency_p99"]) * 1000)


def bound(name: str, runs: Runs, paced: bool) -> str:
    client = runs.median("client_share") or 0.0
    box = runs.median("sandbox_share") or 0.0
    if paced:
        return f"the offered rate (client {client:.0%} of a core)"
    if box >= 0.85:
        return f"the sandbox ({box:.0%} of a core; client {client:.0%})"
    if client >= 0.85:
        return f"the client's CPU ({client:.0%} of a core)"
    if name == LOCAL:
        return f"the disk: fsync per group commit (client {client:.0%} of a core)"
    if name == SERVICEBUS:
        return f"the 15 ms round trip, one batch in flight (client {client:.0%} of a core)"
    return f"hand-offs between the processes (client {client:.0%}, sandbox {box:.0%} of a core)"


async def run(quick: bool) -> list[Table]:
    burst = 2_000 if quick else 20_000
    paced = 1_000 if quick else 5_000
    repeats = 1 if quick else 3
    notes: list[str] = []
    names = [BARE, NODE, LOCAL, SERVICEBUS, MEMORY]
    flat: dict[str, Runs] = {n: Runs() for n in names}
    steady: dict[str, Runs] = {n: Runs() for n in names}
    async with contextlib.AsyncExitStack() as stack:
        clients: dict[str, tuple[Client, Sandbox]] = {}
        for name in names:
            sandbox = await stack.enter_async_context(sandbox_process())
            client = await stack.enter_async_context(client_process(name, sandbox, notes))
            if client is not None:
                clients[name] = (client, sandbox)
                await sandbox.run_burst(500, None, 30)  # warm-up (imports, first batch, caches)
        for _ in range(repeats):
            for name, (client, sandbox) in clients.items():
                await one_run(client, sandbox, burst, None, flat[name])
        for _ in range(repeats):
            for name, (client, sandbox) in clients.items():
                await one_run(client, sandbox, paced, RATE, steady[name])

    bare_flat, bare_paced = flat[BARE].median("cpu_per_10k"), steady[BARE].median("cpu_per_10k")
    targets: dict[str, tuple[Target | None, Target | None, Target | None]] = {
        LOCAL: (Target("<=", 1.5), Target("<=", 2.0), Target("<=", 20.0)),
        SERVICEBUS: (Target("<=", 3.0), Target("<=", 3.0), None),
    }
    table = Table(
        "Slack → worker → queue: CPU per envelope, each client in its own process (one socket)",
        [
            "client",
            "CPU s/10k flat out",
            "vs bare",
            "envelopes/s",
            "bound by (flat out)",
            f"CPU s/10k @{RATE:,.0f}/s",
            "vs bare",
            "p99 ack",
        ],
    )
    for name in names:
        f, s = flat[name], steady[name]
        t_flat, t_paced, t_p99 = targets.get(name, (None, None, None))
        cf, cs = f.median("cpu_per_10k"), s.median("cpu_per_10k")
        table.add(
            name,
            Figure(cf, "s"),
            Figure(cf / bare_flat if cf and bare_flat else None, "x", t_flat),
            Figure(f.median("rate"), "/s"),
            bound(name, f, paced=False) if f.cpu_per_10k else "",
            Figure(cs, "s"),
            Figure(cs / bare_paced if cs and bare_paced else None, "x", t_paced),
            Figure(s.median("p99_ms"), "ms", t_p99),
        )
    table.note(
        f"flat out: bursts of {burst:,} envelopes; paced: {paced:,} at {RATE:,.0f}/s; median of {repeats} "
        "interleaved runs per client; each client and each sandbox in its own process"
    )
    table.note(
        "CPU: the client process's own (getrusage / process.cpuUsage, all threads); the worker rows include its "
        "reply inbox, metrics and the queue backend's threads"
    )
    table.note(
        "Service Bus: ServiceBusBackend with the SDK's real ServiceBusMessage and ServiceBusMessageBatch encoding, "
        f"sent to FakeNamespace senders that sleep {RTT * 1000:.0f} ms per send_messages (no broker-side time)"
    )
    table.note("local queue: SQLite WAL, synchronous=FULL (an fsync per group commit) in the worker's writer thread")
    for name in names:
        for label, runs in (("flat out", flat[name]), ("paced", steady[name])):
            if runs.short:
                notes.append(f"{name}: {runs.short} {label} run(s) did not ack everything in time (left out)")
    for note in notes:
        table.note(note)
    return [table]


def results(tables: list[Table]) -> dict[str, Any]:
    return {t.title: t.to_json() for t in tables}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(render(asyncio.run(run(args.quick))))


if __name__ == "__main__":
    main()
