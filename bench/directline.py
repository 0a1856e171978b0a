"""Direct Line: activities/s from the sandbox through the connector to the durable queue with 1, 100 and 1,000
open conversations; CPU and memory per open conversation; agent reply → Slack post latency on the local stack.

- The sandbox Direct Line runs in its own process (`python -m devstack.sandbox.directline`), driven over its
  control endpoints (`_sandbox/push`); the worker's `DirectLineConnector` runs in this process and publishes to
  the durable local queue (`localqueue.LocalQueueBackend`, SQLite WAL), the watermark advancing after each publish.
- Throughput: every open conversation gets a burst of agent messages (one per frame); the rate is all of them over
  the time from the push until the last one is in the queue.
- Per open conversation: this process's CPU (`resource.getrusage`, user + system) while the conversations sit
  idle and Online (keepalive pings, the token keeper's ticks, the directory scan and lease renewal), and the
  growth of its resident memory (VmRSS) from before the conversations were taken to all of them Online, over N.
- Latency: on the local stack of the bridge (sandbox Slack, sandbox Direct Line, worker, local functions host,
  in this process), the agent says something in a bridged conversation; the time until the Slack sandbox
  records the `chat.postMessage` in the thread, p50/p99.

    python -m bench.directline [--quick]     # alone
    python -m bench --only directline        # with the other benchmarks
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import resource
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from pydantic import SecretStr

from bench.report import Figure, Table, render
from shared.directline import want
from worker.directline.connector import DirectLineConnector
from worker.directline.settings import DirectLineSettings
from worker.handoff import Handoff
from worker.metrics import Metrics
from worker.publish import EnvelopePublisher

ROOT = Path(__file__).resolve().parents[1]
SECRET = "sandbox-directline-secret"  # the sandbox's public test secret
QUEUE = "directline-activities"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@contextlib.asynccontextmanager
async def sandbox_process() -> AsyncIterator[str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "devstack.sandbox.directline",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        base = line.split("DIRECTLINE_BASE_URL=", 1)[1].split()[0]
        yield base
    finally:
        proc.terminate()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 10)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def measure_open(base: str, n: int, per_conversation: int, idle: float, folder: Path) -> dict[str, float]:
    from localqueue import LocalQueueBackend

    store = folder / f"dl-{n}.db"
    async with httpx.AsyncClient(timeout=30) as http:
        headers = {"Authorization": f"Bearer {SECRET}"}
        cids = []
        for _ in range(n):
            answer = await http.post(f"{base}/conversations", headers=headers, json={})
            cids.append(answer.json()["conversationId"])
        for cid in cids:
            want(store, cid)
        settings = DirectLineSettings(
            secret=SecretStr(SECRET), base_url=base, store_path=store
        )  # production defaults: scans 2 s, pings 20 s, leases 30 s
        backend = LocalQueueBackend(folder / f"q-{n}.db")
        metrics = Metrics()
        handoff = Handoff(EnvelopePublisher(backend), metrics=metrics)
        connector = DirectLineConnector(settings, handoff, metrics)
        stopping = asyncio.Event()
        rss0 = rss_bytes()
        task = asyncio.create_task(connector.run(stopping))
        try:
            deadline = time.monotonic() + 120
            while connector.counts()["Online"] < n:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {connector.counts()['Online']} of {n} conversations came Online")
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)
            rss1 = rss_bytes()
            cpu0 = cpu_seconds()
            await asyncio.sleep(idle)
            idle_cpu = cpu_seconds() - cpu0
            total = n * per_conversation
            started = time.perf_counter()
            await http.post(
                f"{base}/_sandbox/push", json={"conversations": None, "count": per_conversation, "per_frame": 1}
            )
            while metrics.total("relaybus_envelopes_published_total", platform="directline") < total:
                if time.perf_counter() - started > 300:
                    raise RuntimeError("the burst did not reach the queue in 300 s")
                await asyncio.sleep(0.005)
            seconds = time.perf_counter() - started
        finally:
            stopping.set()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(60):
                    await task
            await backend.close()
    return {
        "rate": total / seconds,
        "total": float(total),
        "rss_per_conversation": (rss1 - rss0) / n,
        "cpu_ms_per_conversation_minute": idle_cpu / idle * 60 * 1000 / n,
    }


async def measure_open_in_a_fresh_process(
    base: str, n: int, per_conversation: int, idle: float, folder: Path
) -> dict[str, float]:
    """`measure_open` in a process of its own: in the bench's process the memory earlier modules freed is
    reused, so VmRSS would not grow with the conversations (the figure would read near zero)."""
    import json

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.directline",
        "--measure-open",
        str(n),
        "--base",
        base,
        "--per",
        str(per_conversation),
        "--idle",
        str(idle),
        "--folder",
        str(folder),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"bench.directline --measure-open {n} exited {proc.returncode}")
    result: dict[str, float] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def measure_latency(count: int, folder: Path) -> list[float]:
    """Agent message → Slack post on the bridge's local stack, seconds each."""
    import azure.functions as func

    from devstack.funchost import LocalFunctionsHost
    from devstack.sandbox.directline import DirectLineSandbox
    from devstack.sandbox.slack import SlackSandbox
    from functions import Bot
    from functions.directline import DirectLineBridgeSettings
    from functions.settings import FunctionSettings
    from functions.triggers import register_routes
    from handlers.bridge import install
    from localqueue import LocalQueueBackend
    from worker.runtime import Worker
    from worker.settings import load_settings

    async with SlackSandbox() as slack, DirectLineSandbox() as directline:
        env = {
            "SLACK_APP_TOKEN": slack.app_token,
            "SLACK_API_URL": slack.api_url,
            "SLACK_BOT_TOKEN": slack.bot_token,
            "DIRECTLINE_SECRET": directline.secret,
            "DIRECTLINE_BASE_URL": directline.base_url,
            "DIRECTLINE_STORE_PATH": str(folder / "bridge-dl.db"),
            "DIRECTLINE_SCAN_SECONDS": "0.1",
            "RELAYBUS_LOCAL_QUEUE_PATH": str(folder / "bridge-q.db"),
            "RELAYBUS_STATE_PATH": str(folder / "bridge-state.db"),
        }
        bot = Bot()
        bridge = install(bot, DirectLineBridgeSettings.model_validate(env))
        worker = Worker(load_settings(env), serve_http=False)
        app = func.FunctionApp()
        clients = register_routes(app, bot, FunctionSettings.from_env(env))
        assert isinstance(worker.backend, LocalQueueBackend)
        host = LocalFunctionsHost(app, worker.backend, None, env, poll_interval=0.01)
        stopping = asyncio.Event()
        worker_task = asyncio.create_task(worker.run(stopping))
        await slack.wait_connections(1, within=30)
        host_task = asyncio.create_task(host.run(stopping))
        latencies: list[float] = []
        try:
            await slack.send_user_message("hello")
            await slack.wait_for(lambda: any(r.body.get("text") == "Echo: hello" for r in slack.replies), 30)
            [cid] = list(directline.conversations)
            for i in range(count):
                text = f"reply {i}"
                started = time.perf_counter()
                await directline.say(cid, text)
                await slack.wait_for(lambda t=text: any(r.body.get("text") == t for r in slack.replies), 30)  # type: ignore[misc]
                latencies.append(time.perf_counter() - started)
                await asyncio.sleep(0.02)
        finally:
            stopping.set()
            async with asyncio.timeout(30):
                await asyncio.gather(worker_task, host_task, return_exceptions=True)
            await clients.aclose()
            for client in list(bridge._clients.values()):
                await client.aclose()
    return latencies


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run(quick: bool) -> list[Table]:
    logging.getLogger("worker").setLevel(logging.WARNING)
    sizes = (1, 100, 1000)
    per = {1: 500, 100: 10, 1000: 2} if quick else {1: 5000, 100: 50, 1000: 10}
    idle = 5.0 if quick else 30.0
    table = Table(
        "Direct Line connector: sandbox → connector → durable local queue (one connector process per row)",
        ["open conversations", "activities", "activities/s", "memory / conversation", "idle CPU / conversation"],
    )
    with tempfile.TemporaryDirectory(prefix="bench-directline-") as tmp:
        folder = Path(tmp)
        results: dict[int, dict[str, float]] = {}
        async with sandbox_process() as base:
            for n in sizes:
                results[n] = r = await measure_open_in_a_fresh_process(base, n, per[n], idle, folder)
                table.add(
                    n,
                    int(r["total"]),
                    Figure(round(r["rate"]), "/s"),
                    Figure(round(r["rss_per_conversation"] / 1024, 1), "KiB"),
                    Figure(round(r["cpu_ms_per_conversation_minute"], 2), "ms CPU/min"),
                )
        latencies = await measure_latency(20 if quick else 200, folder)
    table.note(
        "memory: growth of the connector process's VmRSS (a fresh process per row) from before the conversations "
        "were taken to all Online, over N (sockets, tasks, tokens, trackers); idle CPU: getrusage of that process over "
        f"{idle:.0f} s with every conversation Online and quiet (production timings: pings 20 s, leases 30 s)"
    )
    table.note("the sandbox runs in its own process; its CPU is not counted")
    latency = Table(
        "Direct Line bridge: agent reply → Slack post (local stack, one process)", ["samples", "p50", "p99"]
    )
    latency.add(
        len(latencies),
        Figure(round(_percentile(latencies, 0.5) * 1000, 1), "ms"),
        Figure(round(_percentile(latencies, 0.99) * 1000, 1), "ms"),
    )
    latency.note(
        "sandbox Direct Line → worker socket → local queue → local functions host (bridge) → Slack Web API sandbox"
    )
    return [table, latency]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.directline")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--measure-open", type=int, help=argparse.SUPPRESS)  # one row, in its own process
    parser.add_argument("--base", help=argparse.SUPPRESS)
    parser.add_argument("--per", type=int, default=10, help=argparse.SUPPRESS)
    parser.add_argument("--idle", type=float, default=5.0, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure_open is not None:
        import json

        logging.getLogger("worker").setLevel(logging.WARNING)
        result = asyncio.run(measure_open(args.base, args.measure_open, args.per, args.idle, args.folder))
        print(json.dumps(result))
        return 0
    tables = asyncio.run(run(args.quick))
    print(render(tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
