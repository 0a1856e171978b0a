"""Many apps in one worker (issue 14): what idle sockets cost, and a 20-app fleet at its platforms' peak rates.

The worker runs in a process of its own (`bench.efficiency_client fleet-…`, built from `RELAYBUS_SLACK_APPS` /
`RELAYBUS_TEAMS_BOTS` settings as `python -m worker run` builds it); the sandboxes (one per app: each its own
tokens) run in this process. CPU and memory are the worker process's own (`getrusage`, VmRSS).

- Idle: 20 Slack apps × 1 socket, 20 × 10 sockets (200), 20 Teams bots × 1 socket; after the sockets are
  online, the worker's CPU over the idle window (the sandboxes ping every 10 s, Teams keepalives every 15 s;
  the worker's watchdogs and reply-inbox polls run) per app per minute, and its resident memory.
- Fleet: 10 Slack apps at 30,000 events/hour each (Slack's Events API limit per workspace per app: 8.3/s) and
  10 Teams bots at 50 activities/s each (the Bot Framework's per-bot-per-tenant limit), 583 envelopes/s in
  all, through the Service Bus backend (the SDK's real encoding, a fake namespace with 15 ms per send).

    python -m bench.fleet [--quick]
    python -m bench --only fleet
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from bench.report import Figure, Table, render
from devstack.sandbox.slack import SlackSandbox
from devstack.sandbox.teams import TeamsSandbox

ROOT = Path(__file__).resolve().parents[1]
SLACK_PEAK = 30_000 / 3600
"""Events API deliveries per second per workspace per app (Slack: 30,000 an hour)."""
TEAMS_PEAK = 50.0
"""Activities per second per bot per tenant (Bot Framework's limit)."""


class FleetWorker:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def ask(self, what: bytes) -> float:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(what + b"\n")
        await self.proc.stdin.drain()
        return float(await asyncio.wait_for(self.proc.stdout.readline(), 10))


@contextlib.asynccontextmanager
async def fleet_worker(kind: str, settings: dict[str, str]) -> AsyncIterator[FleetWorker]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "TEAMS_", "RELAYBUS_", "ServiceBus"))}
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        env.update(PYTHONPATH=str(ROOT), RELAYBUS_LOCAL_QUEUE_PATH=str(Path(tmp) / "queue.db"), **settings)
        profile = os.environ.get("BENCH_FLEET_PROFILE")  # a directory: cProfile the worker into <dir>/<kind>.prof
        profiling = ["-m", "cProfile", "-o", str(Path(profile) / f"{kind}.prof")] if profile else []
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *profiling,
            "-m",
            "bench.efficiency_client",
            f"fleet-{kind}",
            "-",
            "-",
            "--queue",
            str(Path(tmp) / "queue.db"),
            cwd=ROOT,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            if line.strip() != b"ready":
                raise RuntimeError(f"the fleet worker did not start: {line[:200]!r}")
            yield FleetWorker(proc)
        finally:
            if proc.stdin is not None:
                proc.stdin.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 30)
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


@contextlib.asynccontextmanager
async def sandboxes(slack: int, teams: int) -> AsyncIterator[tuple[list[SlackSandbox], list[TeamsSandbox]]]:
    async with contextlib.AsyncExitStack() as stack:
        slacks = [
            await stack.enter_async_context(
                SlackSandbox(app_token=f"xapp-1-A{i:04d}-fleet{i}", bot_token=f"xoxb-fleet-{i}", app_id=f"A{i:04d}")
            )
            for i in range(slack)
        ]
        hubs = [
            await stack.enter_async_context(
                TeamsSandbox(app_id=f"fleet-bot-{i}", bot_token=f"fleet-bot-token-{i}", geos=("amer",))
            )
            for i in range(teams)
        ]
        yield slacks, hubs


def fleet_settings(slacks: list[SlackSandbox], hubs: list[TeamsSandbox], connections: int) -> dict[str, str]:
    env: dict[str, str] = {"RELAYBUS_LOG_LEVEL": "WARNING", "TEAMS_GEOS": "amer"}
    if slacks:
        env["RELAYBUS_SLACK_APPS"] = ",".join(f"s{i:02d}" for i in range(len(slacks)))
        env["SLACK_CONNECTIONS"] = str(connections)
    for i, box in enumerate(slacks):
        env[f"SLACK_APP_TOKEN__S{i:02d}"] = box.app_token
        env[f"SLACK_API_URL__S{i:02d}"] = box.api_url
    if hubs:
        env["RELAYBUS_TEAMS_BOTS"] = ",".join(f"t{i:02d}" for i in range(len(hubs)))
    for i, hub in enumerate(hubs):
        env[f"TEAMS_APP_ID__T{i:02d}"] = hub.app_id
        env[f"TEAMS_STATIC_TOKEN__T{i:02d}"] = hub.bot_token
        env[f"TEAMS_BASE_URL__T{i:02d}"] = hub.base_url
    return env


async def idle_row(table: Table, label: str, slack: int, teams: int, connections: int, seconds: float) -> float:
    async with sandboxes(slack, teams) as (slacks, hubs):  # noqa: SIM117 (the worker needs the sandboxes' URLs)
        async with fleet_worker("local", fleet_settings(slacks, hubs, connections)) as worker:
            sockets = slack * connections + teams
            await asyncio.sleep(2.0)  # settle: imports done, first pings exchanged
            rss = await worker.ask(b"rss")
            cpu0 = await worker.ask(b"cpu")
            await asyncio.sleep(seconds)
            cpu1 = await worker.ask(b"cpu")
            online = sum(len(b.ready_connections()) for b in slacks) + sum(len(h.ready_sessions()) for h in hubs)
    apps = slack + teams
    per_app_minute = (cpu1 - cpu0) / apps / (seconds / 60)
    table.add(
        label,
        f"{online} of {sockets}",
        Figure(rss / 2**20, "MB"),
        Figure(rss / sockets / 1024, "KB"),
        Figure(per_app_minute * 1000, "ms"),
        Figure((cpu1 - cpu0) / seconds * 100, "%"),
    )
    return rss


async def paced(count: int, rate: float, send: object) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    for n in range(count):
        delay = start + n / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await send(f"fleet message {n}")  # type: ignore[operator]


async def fleet_table(seconds: float) -> Table:
    table = Table(
        "A 20-app fleet at peak rates (10 Slack apps × 8.3/s, 10 Teams bots × 50/s) → Service Bus (15 ms RTT)",
        ["backend", "offered", "acked", "worker CPU", "CPU per envelope", "worker RSS"],
    )
    for kind in ("servicebus", "local"):
        async with sandboxes(10, 10) as (slacks, hubs):  # noqa: SIM117 (the worker needs the sandboxes' URLs)
            async with fleet_worker(kind, fleet_settings(slacks, hubs, 1)) as worker:
                await asyncio.sleep(1.0)
                slack_count, teams_count = int(SLACK_PEAK * seconds), int(TEAMS_PEAK * seconds)
                cpu0 = await worker.ask(b"cpu")
                loop = asyncio.get_running_loop()
                started = loop.time()
                await asyncio.gather(
                    *(b.push(slack_count, SLACK_PEAK) for b in slacks),
                    *(paced(teams_count, TEAMS_PEAK, h.send_user_message) for h in hubs),
                )
                total = 10 * (slack_count + teams_count)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(30):
                        while sum(b.stats.acked for b in slacks) + sum(len(h.acked) for h in hubs) < total:
                            await asyncio.sleep(0.05)
                elapsed = loop.time() - started
                cpu1 = await worker.ask(b"cpu")
                rss = await worker.ask(b"rss")
                acked = sum(b.stats.acked for b in slacks) + sum(len(h.acked) for h in hubs)
        used = cpu1 - cpu0
        table.add(
            "Service Bus (fake, 15 ms)" if kind == "servicebus" else "durable local queue",
            Figure(total / elapsed, "/s"),
            f"{acked:,} of {total:,}",
            Figure(used / elapsed * 100, "% of a core"),
            Figure(used / max(acked, 1) * 1e6, "µs"),
            Figure(rss / 2**20, "MB"),
        )
    table.note(
        f"{seconds:.0f} s at Slack's 30,000 events/hour per workspace per app and Teams' 50 RPS per bot per tenant; "
        "one socket per app (Slack) / one geo per bot (Teams); the worker's own CPU (getrusage, every thread)"
    )
    table.note("the sandboxes and the load generator run in the bench process, not the worker's")
    return table


async def run(quick: bool) -> list[Table]:
    seconds = 10.0 if quick else 60.0
    idle = Table(
        "Idle apps in one worker: memory per socket, CPU per app per minute",
        ["fleet", "sockets online", "worker RSS", "RSS per socket", "CPU per app per minute", "worker CPU"],
    )
    rss20 = await idle_row(idle, "20 Slack apps × 1 socket", 20, 0, 1, seconds)
    rss200 = await idle_row(idle, "20 Slack apps × 10 sockets", 20, 0, 10, seconds)
    await idle_row(idle, "20 Teams bots × 1 socket", 0, 20, 1, seconds)
    idle.note(
        f"memory per additional idle Slack socket: {(rss200 - rss20) / 180 / 1024:,.0f} KB ((RSS 200 − RSS 20) / 180)"
    )
    idle.note(
        f"idle window {seconds:.0f} s after a 2 s settle; Slack sandbox pings every 10 s, Teams keepalive 15 s; "
        "local queue backend (its reply-inbox poll every 250 ms included)"
    )
    return [idle, await fleet_table(seconds)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(render(asyncio.run(run(args.quick))))


if __name__ == "__main__":
    main()
