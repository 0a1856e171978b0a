"""One Slack Socket Mode client in a process of its own, for `bench.efficiency` (CPU measured per process).

    python -m bench.efficiency_client KIND API_URL APP_TOKEN [--queue PATH] [--rtt SECONDS]

KIND `fleet-local` / `fleet-servicebus` (`bench.fleet`): the `Worker` built from the settings in the environment
(`load_settings(os.environ)`: several apps, `RELAYBUS_SLACK_APPS` …) over the local queue or the fake Service Bus
(API_URL and APP_TOKEN are ignored then). An `rss` line is answered with the resident set size in bytes.

KIND: `bare` (websockets receive → json.loads → ack), `local` (the relaybus `Worker` over the durable local
queue, its reply inbox included, as `python -m worker run` builds it), `servicebus` (the same `Worker` over
`ServiceBusBackend` with the SDK's real `ServiceBusMessage`/`ServiceBusMessageBatch` encoding, sent to
`FakeNamespace` senders that sleep `--rtt` per `send_messages`), `memory` (the `Worker` over `MemoryBackend`).

Protocol on stdin/stdout, one line each: the process prints `ready` once its socket said hello; each `cpu`
line read is answered with this process's CPU seconds so far (`resource.getrusage(RUSAGE_SELF)`: user +
system, every thread included: the local queue's writer thread counts); end of stdin stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import resource
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from pydantic import SecretStr


def rss_bytes() -> int:
    """Resident set size of this process, from /proc (0 where there is none)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@contextlib.asynccontextmanager
async def bare(api_url: str, app_token: str) -> AsyncIterator[None]:
    import httpx
    import websockets

    async with httpx.AsyncClient() as http:
        response = await http.post(api_url + "apps.connections.open", headers={"Authorization": f"Bearer {app_token}"})
    ws = await websockets.connect(str(response.json()["url"]), max_size=None, compression=None)
    await ws.recv()  # hello

    async def loop() -> None:
        async for message in ws:
            frame = json.loads(message)
            envelope_id = frame.get("envelope_id")
            if envelope_id:
                await ws.send(json.dumps({"envelope_id": envelope_id}))

    task = asyncio.create_task(loop())
    try:
        yield None
    finally:
        await ws.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
            await task


@contextlib.asynccontextmanager
async def worker(kind: str, api_url: str, app_token: str, queue: Path, rtt: float) -> AsyncIterator[None]:
    from worker.metrics import Metrics
    from worker.publish import QueueBackend
    from worker.runtime import Worker
    from worker.settings import WorkerSettings
    from worker.slack.settings import SlackSettings

    backend: QueueBackend
    if kind.startswith("fleet-"):
        from worker.settings import load_settings

        fleet_settings = load_settings(dict(os.environ))
        kind = kind.removeprefix("fleet-")
    else:
        fleet_settings = None
    if kind == "local":
        from localqueue import LocalQueueBackend

        interval = float(os.environ.get("BENCH_COMMIT_INTERVAL_MS", "5")) / 1000
        backend = LocalQueueBackend(queue, commit_interval=interval)
    elif kind == "servicebus":
        from worker.publish.servicebus import ServiceBusBackend
        from worker.publish.servicebus_fake import FakeNamespace

        fake = FakeNamespace(latency=rtt, record=False)
        backend = ServiceBusBackend(fake.sender_factory, receiver_factory=fake.receiver_factory)
    else:
        from worker.publish.memory import MemoryBackend

        backend = MemoryBackend()
    settings = fleet_settings or WorkerSettings(
        slack=SlackSettings(app_token=SecretStr(app_token), api_url=api_url, connections=1), local_queue_path=queue
    )
    metrics = Metrics()
    runner = Worker(settings, backend=backend, metrics=metrics, serve_http=False)
    stopping = asyncio.Event()
    task = asyncio.create_task(runner.run(stopping))
    try:
        while not metrics.status.ready(settings.platforms):
            if task.done():
                task.result()
                raise RuntimeError("the worker stopped before its socket was online")
            await asyncio.sleep(0.02)
        yield None
    finally:
        stopping.set()
        await asyncio.wait_for(task, 30)


async def main_async(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    with tempfile.TemporaryDirectory(prefix="bench-efficiency-") as tmp:
        queue = Path(args.queue) if args.queue else Path(tmp) / "queue.db"
        client = (
            bare(args.api_url, args.app_token)
            if args.kind == "bare"
            else worker(args.kind, args.api_url, args.app_token, queue, args.rtt)
        )
        async with client:
            print("ready", flush=True)
            while line := await stdin.readline():
                if line.strip() == b"cpu":
                    print(f"{cpu_seconds():.6f}", flush=True)
                elif line.strip() == b"rss":
                    print(rss_bytes(), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("kind", choices=("bare", "local", "servicebus", "memory", "fleet-local", "fleet-servicebus"))
    parser.add_argument("api_url")
    parser.add_argument("app_token")
    parser.add_argument("--queue", help="the local queue file (default: a temporary one)")
    parser.add_argument("--rtt", type=float, default=0.015, help="Service Bus round trip per send (seconds)")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
