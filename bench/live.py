"""Live pushes: handler → local SignalR Service → connected clients (`functions.live`, `devstack.signalr_service`).

Three processes, so that each one's CPU is its own (read from /proc, robust to a shared machine):

- the local SignalR Service (`python -m devstack.signalr_service --json`);
- the clients (`python -m bench.live client …`): 1, 100 or 1,000 lightweight SignalR JSON-protocol clients on
  asyncio (aiohttp WebSockets, the same negotiate → connect → handshake as `@microsoft/signalr`), all users in the
  tenant group, each recording when every push arrived;
- this process, the "handler": `LiveChannel.send` (what `ctx.live.send` runs: the data-plane REST call the
  `signalR` output binding makes), to the tenant group.

Rows:
- throughput: pushes/s the handler gets accepted with 8 concurrent senders, and deliveries/s to the clients,
  until every client has every push;
- latency at 100 pushes/s (paced): handler call → client receipt, p50 / p99 over every delivery (one machine:
  CLOCK_MONOTONIC is shared by the processes).

    python -m bench.live [--quick]
    python -m bench --only live --quick
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.report import Figure, Table, percentile, render

ROOT = Path(__file__).resolve().parent.parent
HUB = "relaybus"
TENANT = "bench"
GROUP = f"tenant:{TENANT}"
CLIENT_COUNTS = (1, 100, 1000)
SENDERS = 8
PACED_RATE = 100.0


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process, from /proc (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- the client process ------------------------------------------------------------------------------------------


async def _client_main(endpoint: str, key: str, count: int) -> None:
    import aiohttp

    from devstack.signalr_service import connect_hub
    from functions.live import access_key_token
    from worker.teams import signalr

    received = 0
    latencies: list[float] = []
    record = False
    hub_url = f"{endpoint}/client/?hub={HUB}"

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        connections = []
        for start in range(0, count, 50):  # connect in batches: the service negotiates each
            batch = [
                connect_hub(http, hub_url, token=access_key_token(key, hub_url, nameid=f"{TENANT}:u{i}"))
                for i in range(start, min(count, start + 50))
            ]
            connections += await asyncio.gather(*batch)

        async def read(connection: Any) -> None:
            nonlocal received
            last_ping = time.monotonic()
            ws = connection.ws
            while True:
                message = await ws.receive()
                if message.type != aiohttp.WSMsgType.TEXT:
                    return
                now = time.monotonic()
                for frame in connection.buffer.feed(message.data):
                    event = signalr.parse_message(frame)
                    if isinstance(event, signalr.Invocation) and event.arguments:
                        received += 1
                        if record:
                            latencies.append(now - float(event.arguments[0]["t"]))
                if now - last_ping > 10:
                    last_ping = now
                    await ws.send_str(signalr.ping())

        readers = [asyncio.create_task(read(c)) for c in connections]
        loop = asyncio.get_running_loop()
        stdin = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
        print("ready", flush=True)
        while line := (await stdin.readline()).decode().strip():
            if line == "record":
                latencies.clear()
                record = True
                print("ok", flush=True)
            elif line == "stats":
                print(json.dumps({"received": received, "cpu": self_cpu()}), flush=True)
            elif line == "latencies":
                record = False
                summary = {"p50": percentile(latencies, 50), "p99": percentile(latencies, 99), "n": len(latencies)}
                print(json.dumps(summary), flush=True)
        for task in readers:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*(c.ws.close() for c in connections)), 5)


# -- the bench ---------------------------------------------------------------------------------------------------


@dataclass
class Proc:
    proc: asyncio.subprocess.Process

    async def ask(self, line: str, within: float = 30.0) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()
        return (await asyncio.wait_for(self.proc.stdout.readline(), within)).decode().strip()

    async def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(await self.ask("stats"))
        return data


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "TEAMS_", "RELAYBUS_", "Azure"))}
    env["PYTHONPATH"] = str(ROOT)
    return env


@contextlib.asynccontextmanager
async def _process(*args: str) -> AsyncIterator[Proc]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, cwd=ROOT, env=_env(), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    try:
        yield Proc(proc)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 15)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def _channel(endpoint: str, key: str) -> Any:
    from functions.live import LiveChannel, LiveConfig, LivePublisher

    config = LiveConfig(
        hub=HUB,
        endpoint=endpoint,
        access_key=key,
        client_id=None,
        audiences=("api://bench",),
        issuers=("https://login.microsoftonline.com/{tid}/v2.0",),
        jwks_url="https://login.microsoftonline.com/common/discovery/v2.0/keys",
        tenants=None,
        aliases={},
        client_js=Path(),
    )
    publisher = LivePublisher(config)
    return LiveChannel(publisher, TENANT, what="bench"), publisher


async def _add_users(endpoint: str, key: str, count: int) -> None:
    from functions.live import LiveService, SignalRAction

    service = LiveService(endpoint, HUB, access_key=key, timeout=10.0)
    try:
        for i in range(count):
            await service.perform(SignalRAction(user_id=f"{TENANT}:u{i}", group_name=GROUP, action="add"))
    finally:
        await service.aclose()


async def _wait_received(clients: Proc, want: int, within: float) -> tuple[int, float]:
    deadline = time.monotonic() + within
    while True:
        got = int((await clients.stats())["received"])
        now = time.monotonic()
        if got >= want or now > deadline:
            return got, now
        await asyncio.sleep(0.02)


async def _one(count: int, quick: bool, service_pid: int, endpoint: str, key: str) -> dict[str, Any]:
    await _add_users(endpoint, key, count)
    async with _process("-m", "bench.live", "client", endpoint, key, str(count)) as clients:
        assert clients.proc.stdout is not None
        ready = await asyncio.wait_for(clients.proc.stdout.readline(), 120)
        if ready.strip() != b"ready":
            raise RuntimeError(f"the client process did not start: {ready[:200]!r}")
        channel, publisher = _channel(endpoint, key)
        try:
            for i in range(20):  # warm-up (connections, the HTTP client)
                await channel.send("activity", {"t": time.monotonic(), "seq": -i})
            base, _ = await _wait_received(clients, 20 * count, 30)
            # throughput: 8 senders as fast as the service accepts, then until every client has every push
            duration = 1.0 if quick else 4.0
            sent = 0
            svc0, me0, cl0 = proc_cpu(service_pid), self_cpu(), float((await clients.stats())["cpu"])
            started = time.monotonic()
            stop_at = started + duration

            async def sender() -> None:
                nonlocal sent
                while time.monotonic() < stop_at:
                    if await channel.send("activity", {"t": time.monotonic(), "seq": sent}):
                        sent += 1

            await asyncio.gather(*(sender() for _ in range(SENDERS)))
            sent_done = time.monotonic()
            got, finished = await _wait_received(clients, base + sent * count, 20 if quick else 60)
            svc1, me1, cl1 = proc_cpu(service_pid), self_cpu(), float((await clients.stats())["cpu"])
            throughput = {
                "pushes_per_s": sent / (sent_done - started),
                "deliveries_per_s": (got - base) / (finished - started),
                "complete": got - base >= sent * count,
                "cpu_ms_per_1k": {
                    "handler": (me1 - me0) / sent * 1e6,
                    "service": (svc1 - svc0) / sent * 1e6,
                    "clients": (cl1 - cl0) / sent * 1e6,
                },
            }
            # latency at 100 pushes/s, paced
            base = got
            assert await clients.ask("record") == "ok"
            seconds = 2.0 if quick else 10.0
            n = int(PACED_RATE * seconds)
            svc0, me0, cl0 = proc_cpu(service_pid), self_cpu(), float((await clients.stats())["cpu"])
            start = time.monotonic()
            pushes = []
            for i in range(n):  # each push its own task, as concurrent handler invocations would be
                delay = start + i / PACED_RATE - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                pushes.append(asyncio.create_task(channel.send("activity", {"t": time.monotonic(), "seq": i})))
            paced_seconds = time.monotonic() - start
            await asyncio.gather(*pushes)
            await _wait_received(clients, base + n * count, 20 if quick else 60)
            svc1, me1, cl1 = proc_cpu(service_pid), self_cpu(), float((await clients.stats())["cpu"])
            summary = json.loads(await clients.ask("latencies", 60))
            latency = {
                "p50_ms": summary["p50"] * 1000,
                "p99_ms": summary["p99"] * 1000,
                "deliveries": summary["n"],
                "expected": n * count,
                "rate": n / paced_seconds,
                "cpu_share": {
                    "handler": (me1 - me0) / paced_seconds,
                    "service": (svc1 - svc0) / paced_seconds,
                    "clients": (cl1 - cl0) / paced_seconds,
                },
            }
            dropped = publisher.stats.failed + publisher.stats.skipped
        finally:
            await publisher.aclose()
    return {"clients": count, "throughput": throughput, "latency": latency, "dropped": dropped}


async def measure(quick: bool) -> list[dict[str, Any]]:
    results = []
    # a deep send queue: the clients' process reads 1,000 sockets on one core and must not be closed as "slow"
    async with _process("-m", "devstack.signalr_service", "--json", "--send-queue", "1000000") as service:
        assert service.proc.stdout is not None
        info = json.loads(await asyncio.wait_for(service.proc.stdout.readline(), 30))
        for count in CLIENT_COUNTS:
            results.append(await _one(count, quick, service.proc.pid, info["endpoint"], info["access_key"]))
    return results


async def run(quick: bool) -> list[Table]:
    results = await measure(quick)
    throughput = Table(
        "live pushes: handler → local SignalR Service → clients (throughput, 8 concurrent senders)",
        ["clients", "pushes/s", "deliveries/s", "all delivered", "CPU ms/1k pushes: handler", "service", "clients"],
    )
    latency = Table(
        f"live pushes at {PACED_RATE:.0f}/s: handler call → client receipt",
        ["clients", "p50 ms", "p99 ms", "deliveries", "CPU share: handler", "service", "clients"],
    )
    for r in results:
        t, lat = r["throughput"], r["latency"]
        cpu = t["cpu_ms_per_1k"]
        throughput.add(
            r["clients"],
            Figure(round(t["pushes_per_s"], 1), "/s"),
            Figure(round(t["deliveries_per_s"], 1), "/s"),
            "yes" if t["complete"] else "NO",
            round(cpu["handler"], 1),
            round(cpu["service"], 1),
            round(cpu["clients"], 1),
        )
        share = lat["cpu_share"]
        latency.add(
            r["clients"],
            Figure(round(lat["p50_ms"], 2), "ms"),
            Figure(round(lat["p99_ms"], 2), "ms"),
            f"{lat['deliveries']}/{lat['expected']}",
            f"{share['handler']:.0%}",
            f"{share['service']:.0%}",
            f"{share['clients']:.0%}",
        )
    throughput.note(
        "pushes: LiveChannel.send (what ctx.live.send runs: the data-plane REST call to the tenant group), each "
        "awaited; deliveries: invocations the clients received. The local service is one Python process: a "
        "stand-in for Azure SignalR Service, whose figures these are not."
    )
    throughput.note("CPU: /proc of the service process; getrusage of the client and handler processes.")
    latency.note("one machine: the processes share CLOCK_MONOTONIC; every delivery to every client is a sample.")
    if any(r["dropped"] for r in results):
        throughput.note(f"pushes dropped by the publisher: {[r['dropped'] for r in results]}")
    return [throughput, latency]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.live", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("role", nargs="*", help=argparse.SUPPRESS)  # client <endpoint> <key> <count>
    args = parser.parse_args(argv)
    if args.role:
        _, endpoint, key, count = args.role
        asyncio.run(_client_main(endpoint, key, int(count)))
        return 0
    print(render(asyncio.run(run(args.quick))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
