"""Publish throughput and latency through `EnvelopePublisher`, for each queue backend.

Backends:

- `local`: `localqueue.LocalQueueBackend`, durable (SQLite WAL, synchronous=FULL, group
  commit), in a fresh database under `bench-results/`;
- `servicebus`: `ServiceBusBackend` with batching, over fake senders (`FakeNamespace`) that use the
  SDK's real `ServiceBusMessageBatch` and sleep `SB_ROUND_TRIP` (15 ms) per `send_messages` call: the
  network round trip to a namespace in the same region. The encoding cost is real, the wire is not.

Envelopes are realistic Slack ones (80 % `events_api` app mentions on session queue `slack-events`,
10 % block actions, 10 % slash commands; about 1.7 KB of JSON each), built before the clock starts.

Two kinds of run, each with 1 and 10 concurrent publishers (a publisher models one socket connection
whose envelopes are handed off concurrently, as the connectors do):

- `max`: closed loop; each publisher keeps `WINDOW` publishes outstanding. Envelopes/s is the
  backend's capacity; latencies here are mostly queueing behind the window.
- `5,000/s`: open loop; the publishers together offer `RATE` envelopes/s on a fixed schedule.
  Latency is measured from each envelope's *scheduled* time to the return of `publish()` (so a backend
  that falls behind is charged for it), the figure a platform ack waits for.

Targets: local ≥ 5,000 envelopes/s durable; Service Bus ≥ 5,000 envelopes/s with p99 ≤ 50 ms.
"""

from __future__ import annotations

import asyncio
import gc
import math
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.report import Figure, Table, Target, percentile
from localqueue import LocalQueueBackend
from shared.envelope import Envelope, Kind, Platform
from worker.publish import EnvelopePublisher, QueueBackend
from worker.publish.servicebus import ServiceBusBackend, ServiceBusBackendOptions
from worker.publish.servicebus_fake import FakeNamespace

SB_ROUND_TRIP = 0.015
WINDOW = 256
"""Outstanding publishes per publisher in `max` runs."""
RATE = 5000.0
"""Offered envelopes/s in open-loop runs."""
PUBLISHERS = (1, 10)
THROUGHPUT_TARGET = Target(">=", 5000)
LATENCY_TARGET = Target("<=", 50)


@dataclass(frozen=True, slots=True)
class Result:
    count: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else math.nan

    def ms(self, p: float) -> float:
        return percentile(self.latencies, p) * 1000


# --- envelopes ------------------------------------------------------------------------------------


def slack_envelopes(n: int, run: str) -> list[Envelope]:
    """`n` realistic Slack envelopes with keys unique to `run`."""
    now = datetime.now(UTC)
    out = []
    for i in range(n):
        team = f"T{i % 4:08d}"
        channel = f"C{i % 50:08d}"
        kind_pick = i % 10
        if kind_pick < 8:
            event_id = f"Ev{run}{i:08d}"
            ts = f"{1735689600 + i}.{i % 1000000:06d}"
            payload: dict[str, Any] = {
                "team_id": team,
                "api_app_id": "A0123456789",
                "event": {
                    "type": "app_mention",
                    "user": "U0123ABCDEF",
                    "text": "<@U0BOT12345> can you open a ticket for the failing deploy in prod-eu? thanks!",
                    "ts": ts,
                    "client_msg_id": f"8f3c1d6e-{i:04d}-4a7b-9c2d-1e5f6a7b8c9d",
                    "team": team,
                    "channel": channel,
                    "event_ts": ts,
                    "blocks": [
                        {
                            "type": "rich_text",
                            "block_id": "x1Yz",
                            "elements": [
                                {
                                    "type": "rich_text_section",
                                    "elements": [
                                        {"type": "user", "user_id": "U0BOT12345"},
                                        {"type": "text", "text": " can you open a ticket for the failing deploy in "},
                                        {"type": "text", "text": "prod-eu", "style": {"code": True}},
                                        {"type": "text", "text": "? thanks!"},
                                    ],
                                }
                            ],
                        }
                    ],
                },
                "type": "event_callback",
                "event_id": event_id,
                "event_time": 1735689600 + i,
                "authorizations": [
                    {
                        "enterprise_id": None,
                        "team_id": team,
                        "user_id": "U0BOT12345",
                        "is_bot": True,
                        "is_enterprise_install": False,
                    }
                ],
                "is_ext_shared_channel": False,
                "event_context": f"4-eyJldCI6ImFwcF9tZW50aW9uIiwidGlkIjoi{i:010d}",
            }
            out.append(
                Envelope(
                    dedupe_key=event_id,
                    platform=Platform.SLACK,
                    kind=Kind.EVENTS_API,
                    event_type="app_mention",
                    envelope_id=f"{run}-{i:08d}-5a2e-4b8c-9d1f",
                    event_id=event_id,
                    tenant=team,
                    conversation_key=f"{team}:{channel}",
                    received_at=now,
                    connection_id="bench-1",
                    payload=payload,
                )
            )
        elif kind_pick == 8:
            envelope_id = f"{run}-{i:08d}-interactive"
            payload = {
                "type": "block_actions",
                "user": {"id": "U0123ABCDEF", "username": "ada", "team_id": team},
                "api_app_id": "A0123456789",
                "container": {"type": "message", "message_ts": "1735689600.000100", "channel_id": channel},
                "trigger_id": f"{i}.1234567890.abcdef0123456789abcdef0123456789",
                "team": {"id": team, "domain": "example"},
                "channel": {"id": channel, "name": "deploys"},
                "response_url": f"https://hooks.slack.com/actions/{team}/{i}/abcdefABCDEF0123456789",
                "actions": [
                    {
                        "action_id": "approve",
                        "block_id": "approval",
                        "text": {"type": "plain_text", "text": "Approve", "emoji": True},
                        "value": f"deploy-{i}",
                        "style": "primary",
                        "type": "button",
                        "action_ts": "1735689601.000200",
                    }
                ],
            }
            out.append(
                Envelope(
                    dedupe_key=envelope_id,
                    platform=Platform.SLACK,
                    kind=Kind.INTERACTIVE,
                    event_type="block_actions",
                    envelope_id=envelope_id,
                    tenant=team,
                    conversation_key=f"{team}:{channel}",
                    received_at=now,
                    connection_id="bench-1",
                    payload=payload,
                )
            )
        else:
            envelope_id = f"{run}-{i:08d}-command"
            payload = {
                "token": "verification-token-placeholder",
                "team_id": team,
                "team_domain": "example",
                "channel_id": channel,
                "channel_name": "deploys",
                "user_id": "U0123ABCDEF",
                "user_name": "ada",
                "command": "/ticket",
                "text": "deploy failing in prod-eu",
                "api_app_id": "A0123456789",
                "is_enterprise_install": "false",
                "response_url": f"https://hooks.slack.com/commands/{team}/{i}/abcdefABCDEF0123456789",
                "trigger_id": f"{i}.1234567890.abcdef0123456789abcdef0123456789",
            }
            out.append(
                Envelope(
                    dedupe_key=envelope_id,
                    platform=Platform.SLACK,
                    kind=Kind.SLASH_COMMANDS,
                    event_type="/ticket",
                    envelope_id=envelope_id,
                    tenant=team,
                    conversation_key=f"{team}:{channel}",
                    received_at=now,
                    connection_id="bench-1",
                    payload=payload,
                )
            )
    return out


# --- load generators --------------------------------------------------------------------------------


async def closed_loop(publisher: EnvelopePublisher, envelopes: list[Envelope], publishers: int) -> Result:
    """Each publisher keeps `WINDOW` publishes outstanding until its share is done."""
    latencies: list[float] = []

    async def one(envelope: Envelope) -> None:
        started = time.perf_counter()
        await publisher.publish(envelope)
        latencies.append(time.perf_counter() - started)

    async def worker(share: list[Envelope]) -> None:
        window = asyncio.Semaphore(WINDOW)

        async def guarded(envelope: Envelope) -> None:
            try:
                await one(envelope)
            finally:
                window.release()

        async with asyncio.TaskGroup() as tg:
            for envelope in share:
                await window.acquire()
                tg.create_task(guarded(envelope))

    started = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for p in range(publishers):
            tg.create_task(worker(envelopes[p::publishers]))
    return Result(len(envelopes), time.perf_counter() - started, latencies)


async def open_loop(publisher: EnvelopePublisher, envelopes: list[Envelope], publishers: int, rate: float) -> Result:
    """The publishers together offer `rate` envelopes/s on a fixed schedule; latency from the schedule."""
    latencies: list[float] = []
    interval = publishers / rate

    async def one(envelope: Envelope, due: float) -> None:
        await publisher.publish(envelope)
        latencies.append(time.perf_counter() - due)

    async def worker(share: list[Envelope], offset: float, t0: float) -> None:
        async with asyncio.TaskGroup() as tg:
            for i, envelope in enumerate(share):
                due = t0 + offset + i * interval
                delay = due - time.perf_counter()
                if delay > 0.0005:
                    await asyncio.sleep(delay)
                tg.create_task(one(envelope, due))

    t0 = time.perf_counter() + 0.01
    async with asyncio.TaskGroup() as tg:
        for p in range(publishers):
            tg.create_task(worker(envelopes[p::publishers], p / rate, t0))
    return Result(len(envelopes), time.perf_counter() - t0, latencies)


# --- backends -------------------------------------------------------------------------------------


@asynccontextmanager
async def servicebus_backend(stats: dict[str, float]) -> AsyncIterator[QueueBackend]:
    fake = FakeNamespace(latency=SB_ROUND_TRIP, record=False)
    backend = ServiceBusBackend(fake.sender_factory, ServiceBusBackendOptions())
    try:
        yield backend
    finally:
        await backend.close()
        stats["batches"] = stats.get("batches", 0) + fake.batches
        stats["messages"] = stats.get("messages", 0) + fake.count


@asynccontextmanager
async def local_backend(directory: Path) -> AsyncIterator[QueueBackend]:
    with tempfile.TemporaryDirectory(prefix="local-queue-", dir=directory) as tmp:
        backend = LocalQueueBackend(Path(tmp) / "queue.db")
        await backend.open()
        try:
            yield backend
        finally:
            await backend.close()


# --- the benchmark --------------------------------------------------------------------------------


async def measure(
    backend_cm: Callable[[], Any], mode: str, publishers: int, count: int, run_id: str
) -> tuple[Result, float]:
    """One run on a fresh backend; returns the result and the wall time including setup."""
    envelopes = slack_envelopes(count, run_id)
    # The envelopes are built up front (a worker builds each as it arrives and drops it once acked):
    # keep them out of the cyclic GC, whose full passes over them would otherwise show up as latency.
    gc.collect()
    gc.freeze()
    wall = time.perf_counter()
    try:
        async with backend_cm() as backend:
            publisher = EnvelopePublisher(backend)
            await publisher.publish(slack_envelopes(1, run_id + "w")[0])  # warm-up: open the store/link
            if mode == "max":
                result = await closed_loop(publisher, envelopes, publishers)
            else:
                result = await open_loop(publisher, envelopes, publishers, RATE)
    finally:
        gc.unfreeze()
    return result, time.perf_counter() - wall


async def run(quick: bool) -> list[Table]:
    seconds = 0.4 if quick else 2.0
    table = Table(
        "Publish through EnvelopePublisher (realistic Slack envelopes)",
        ["backend", "publishers", "load", "envelopes/s", "p50", "p99"],
    )
    results_dir = Path("bench-results")
    results_dir.mkdir(exist_ok=True)
    sb_stats: dict[str, float] = {}
    backends: list[tuple[str, Callable[[], Any]]] = []
    backends.append(("local (durable)", lambda: local_backend(results_dir)))
    backends.append((f"servicebus ({SB_ROUND_TRIP * 1000:.0f} ms RTT)", lambda: servicebus_backend(sb_stats)))

    for name, factory in backends:
        is_sb = name.startswith("servicebus")
        for mode in ("max", "rate"):
            for publishers in PUBLISHERS:
                count = int(RATE * seconds) if mode == "rate" else int(RATE * seconds * 1.5)
                run_id = f"{name[:2]}{mode[0]}{publishers}{time.time_ns() % 10**8}"
                result, _ = await measure(factory, mode, publishers, count, run_id)
                throughput = Figure(round(result.rate), "/s", THROUGHPUT_TARGET if mode == "max" else None)
                p99_target = LATENCY_TARGET if (is_sb and mode == "rate") else None
                load = f"max ({WINDOW} in flight each)" if mode == "max" else f"{RATE:,.0f}/s offered"
                table.add(
                    name,
                    publishers,
                    load,
                    throughput,
                    Figure(result.ms(50), "ms"),
                    Figure(result.ms(99), "ms", p99_target),
                )
    if sb_stats.get("batches"):
        table.note(
            f"servicebus: {int(sb_stats['messages']):,} messages in {int(sb_stats['batches']):,} batches "
            f"(mean {sb_stats['messages'] / sb_stats['batches']:.1f} per send_messages call); "
            "fake senders sleep the RTT per call, batches are the SDK's real ServiceBusMessageBatch"
        )
    sample = slack_envelopes(10, "size")
    mean_size = sum(len(e.to_body()) for e in sample) / len(sample)
    table.note(f"envelope body: {mean_size:,.0f} bytes on average; each run on a fresh backend, {seconds} s of load")
    table.note(
        "open-loop envelopes/s = envelopes / (last publish returned - first scheduled): a little under the offer"
    )
    return [table]
