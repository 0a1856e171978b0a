"""Synchronous answers: the request/reply round trip at 50 interactions/s, and its share of the budget.

Each interaction (a Slack `/ticket-count` slash command, a Teams `composeExtension/query` for
`searchTickets`) is sent by the sandbox, answered with a body, and timed by the sandbox from its send to
the ack (Slack) or completion (Teams) carrying the answer: the worker's own round trip plus two loopback
socket hops (well under a millisecond). Paths:

- local stack (what `make dev` runs): the worker publishes to the local queue (SQLite WAL,
  synchronous=FULL), the local functions host runs the real `function_app` (the example handlers of
  `handlers/tickets.py`) and its outbox sends the answer to the reply queue in the same file, the worker's
  reply inbox receives it and writes the ack/completion;
- Service Bus backend over the fake namespace (`worker.publish.servicebus_fake`) with 15 ms per operation:
  the worker's publish (one send), the trigger's delivery to the function (one receive), the answer's send
  (one send, one at a time per process as the function side's outbox sends), its delivery to the worker's
  session receiver (one receive): four round trips. The function here answers at once (the handler's own
  time is in the local stack row);
- in-process: the handler answers from the process holding the socket, what Bolt (slack_sdk's
  SocketModeClient) and teams.py (a SignalR client completing the invocation itself) do: no queue at all.

    python -m bench.replies [--quick]     # alone
    python -m bench --only replies        # with the other benchmarks
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import statistics
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from azure.servicebus import ServiceBusMessage

from bench.report import Figure, Table, Target, percentile, render
from devstack.sandbox.slack import SlackSandbox
from devstack.sandbox.teams import TeamsSandbox
from localqueue import LocalQueueBackend
from shared.envelope import Envelope
from shared.replies import Reply
from shared.routes import REPLIES
from shared.teams_auth import StaticTokenProvider
from worker.metrics import Metrics
from worker.publish.servicebus import ServiceBusBackend
from worker.publish.servicebus_fake import FakeNamespace
from worker.runtime import Worker
from worker.settings import load_settings

RATE = 50.0
RTT = 0.015
SLACK_BUDGET_MS = 3000.0
TEAMS_BUDGET_MS = 5000.0
TARGET_P99_MS = 250.0
SEARCH_TEXT = "printer"

Samples = tuple[list[float], int]
"""Round trips (ms) of the answered interactions, and how many interactions were sent."""


# --- what the example bot answers (the in-process and Service Bus rows answer the same) ---------------------


def slack_answer(envelope: Envelope | None = None) -> dict[str, Any]:
    return {"text": "3 open tickets", "response_type": "ephemeral"}


def teams_answer(envelope: Envelope | None = None) -> dict[str, Any]:
    card = {"contentType": "application/vnd.microsoft.card.adaptive", "content": {"type": "AdaptiveCard"}}
    return {"composeExtension": {"type": "result", "attachmentLayout": "list", "attachments": [card, card]}}


# --- driving the sandboxes ------------------------------------------------------------------------------------


async def paced(count: int, send: Callable[[], Awaitable[str]]) -> list[str]:
    """Send `count` interactions at RATE per second; returns their keys."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    keys = []
    for n in range(count):
        delay = start + n / RATE - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        keys.append(await send())
    return keys


async def slack_round(slack: SlackSandbox, count: int) -> Samples:
    async def send() -> str:
        return (await slack.send_slash_command("/ticket-count")).key

    keys = await paced(count, send)
    await slack.wait_for(lambda: all(slack.ack_for(k) is not None for k in keys), within=SLACK_BUDGET_MS / 1000 + 5)
    records = [slack.ack_for(k) for k in keys]
    return [r.ms for r in records if r is not None and r.payload and not r.late], count


async def teams_round(teams: TeamsSandbox, count: int) -> Samples:
    async def send() -> str:
        return await teams.send_compose_query("searchTickets", SEARCH_TEXT)

    keys = await paced(count, send)
    deadline = asyncio.get_running_loop().time() + TEAMS_BUDGET_MS / 1000 + 5
    while not all(teams.invoke_response(k) is not None for k in keys):
        if asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.01)
    responses = [teams.invoke_response(k) for k in keys]
    return [r.ms for r in responses if r is not None and r.status == 200 and r.body and not r.late], count


def worker_env(slack: SlackSandbox, teams: TeamsSandbox, path: Path) -> dict[str, str]:
    return {
        "RELAYBUS_QUEUE_BACKEND": "local",
        "RELAYBUS_LOCAL_QUEUE_PATH": str(path),
        "RELAYBUS_HTTP_PORT": "0",
        "RELAYBUS_LOG_LEVEL": "WARNING",
        "SLACK_APP_TOKEN": slack.app_token,
        "SLACK_API_URL": slack.api_url,
        "SLACK_BOT_TOKEN": slack.bot_token,
        "SLACK_CONNECTIONS": "1",
        "TEAMS_APP_ID": teams.app_id,
        "TEAMS_TENANT_ID": teams.tenant_id,
        "TEAMS_BASE_URL": teams.base_url,
        "TEAMS_STATIC_TOKEN": teams.bot_token,
        "TEAMS_GEOS": "amer",
        "BOT_CONNECTOR_ALLOWED_HOSTS": "127.0.0.1",
    }


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Any:
    """The function app reads its settings from the process environment: set them, and restore after."""
    saved = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[None]:
    stopping = asyncio.Event()
    task = asyncio.get_running_loop().create_task(worker.run(stopping))
    try:
        yield None
    finally:
        stopping.set()
        await asyncio.wait_for(task, 30)


async def wait_online(slack: SlackSandbox, teams: TeamsSandbox) -> None:
    await slack.wait_connections(1, within=20)
    await teams.wait_sessions(1, within=20)


# --- the paths ------------------------------------------------------------------------------------------------


async def local_stack(count: int, warmup: int) -> tuple[Samples, Samples]:
    """Worker + the local functions host running function_app over one local queue file (`make dev`)."""
    with tempfile.TemporaryDirectory(prefix="bench-replies-") as tmp:
        async with SlackSandbox(seed=1) as slack, TeamsSandbox() as teams:
            env = worker_env(slack, teams, Path(tmp) / "queue.db")
            with environment(env):
                import function_app
                from devstack.funchost import LocalFunctionsHost

                worker = Worker(load_settings(env), serve_http=False)
                stopping = asyncio.Event()
                worker_task = asyncio.get_running_loop().create_task(worker.run(stopping))
                host_task: asyncio.Task[None] | None = None
                try:
                    await wait_online(slack, teams)
                    backend = worker.backend
                    assert isinstance(backend, LocalQueueBackend)
                    host = LocalFunctionsHost(
                        function_app.app, backend, Path(function_app.__file__).with_name("host.json"), env
                    )
                    host_task = asyncio.get_running_loop().create_task(host.run(stopping))
                    await slack_round(slack, warmup)
                    await teams_round(teams, warmup)
                    slack_samples = await slack_round(slack, count)
                    teams_samples = await teams_round(teams, count)
                finally:
                    stopping.set()
                    await asyncio.wait_for(asyncio.gather(worker_task, *([host_task] if host_task else [])), 30)
    return slack_samples, teams_samples


class FakeFunctions:
    """The function side over the fake namespace: the triggers' deliveries, an answer at once, the outbox's
    send of it (one at a time, as `functions.outbox` sends per process)."""

    def __init__(self, ns: FakeNamespace) -> None:
        self.ns = ns
        self._sender = ns.sender_factory(REPLIES.queue)
        self._one_at_a_time = asyncio.Lock()

    async def serve(self, queue: str, answer: Callable[[Envelope], dict[str, Any]]) -> None:
        trigger = self.ns.receiver(queue)
        while True:
            for message in await trigger.receive_messages(max_message_count=32, max_wait_time=1.0):
                envelope = Envelope.from_body(b"".join(message.body))
                asyncio.get_running_loop().create_task(self.reply(envelope, answer(envelope)))

    async def reply(self, envelope: Envelope, body: dict[str, Any]) -> None:
        address = envelope.reply_to
        if address is None:
            return
        message = ServiceBusMessage(
            Reply(correlation_id=envelope.message_id, body=body).to_body(),
            session_id=address.session_id,
            correlation_id=envelope.message_id,
            time_to_live=timedelta(seconds=REPLIES.time_to_live.total_seconds()),
        )
        async with self._one_at_a_time:
            batch = await self._sender.create_message_batch()
            batch.add_message(message)
            await self._sender.send_messages(batch)


async def service_bus(count: int, warmup: int) -> tuple[Samples, Samples]:
    """The worker on the Service Bus backend over a fake namespace with RTT per operation."""
    ns = FakeNamespace(latency=RTT, record=False)
    ns.deliver_to("slack-commands", "teams-invokes", REPLIES.queue)
    backend = ServiceBusBackend(ns.sender_factory, receiver_factory=ns.receiver_factory)
    functions = FakeFunctions(ns)
    with tempfile.TemporaryDirectory(prefix="bench-replies-") as tmp:
        async with SlackSandbox(seed=2) as slack, TeamsSandbox() as teams:
            env = worker_env(slack, teams, Path(tmp) / "q.db")
            worker = Worker(load_settings(env), backend=backend, serve_http=False)
            serving = [
                asyncio.get_running_loop().create_task(functions.serve("slack-commands", slack_answer)),
                asyncio.get_running_loop().create_task(functions.serve("teams-invokes", teams_answer)),
            ]
            try:
                async with running(worker):
                    await wait_online(slack, teams)
                    await slack_round(slack, warmup)
                    await teams_round(teams, warmup)
                    slack_samples = await slack_round(slack, count)
                    teams_samples = await teams_round(teams, count)
            finally:
                for task in serving:
                    task.cancel()
                await asyncio.gather(*serving, return_exceptions=True)
    return slack_samples, teams_samples


async def in_process(count: int, warmup: int) -> tuple[Samples, Samples]:
    """The handler answers from the socket-holding process (Bolt's SocketModeClient; a teams.py-like client)."""
    from slack_sdk.socket_mode.aiohttp import SocketModeClient
    from slack_sdk.socket_mode.response import SocketModeResponse
    from slack_sdk.web.async_client import AsyncWebClient

    from worker.teams.connection import HubConnection, epoch_ms
    from worker.teams.pool import ConnectorTimings, TeamsPool
    from worker.teams.protocol import Accepted, classify, completion_result
    from worker.teams.settings import TeamsSettings

    async with SlackSandbox(seed=3) as slack, TeamsSandbox() as teams:

        async def on_request(client: Any, request: Any) -> None:
            payload = slack_answer() if request.type == "slash_commands" else None
            await client.send_socket_mode_response(SocketModeResponse(envelope_id=request.envelope_id, payload=payload))

        bolt = SocketModeClient(app_token=slack.app_token, web_client=AsyncWebClient(base_url=slack.api_url))
        bolt.socket_mode_request_listeners.append(on_request)

        async def deliver(conn: HubConnection, invocation: Any, recv_at: int) -> None:
            decided = classify(invocation.arguments, conn.connection_id)
            if not isinstance(decided, Accepted) or invocation.invocation_id is None:
                return
            body = teams_answer(decided.envelope)
            result = completion_result(
                decided.delivery.envelope_id,
                decided.delivery.bot_key,
                200,
                recv_at,
                epoch_ms(),
                body=body,
                invoke=decided.delivery.is_invoke,
            )
            conn.send_completion(invocation.invocation_id, result)

        settings = TeamsSettings.model_validate(
            {"TEAMS_APP_ID": teams.app_id, "TEAMS_BASE_URL": teams.base_url, "TEAMS_STATIC_TOKEN": teams.bot_token}
        )
        stopping = asyncio.Event()
        async with httpx.AsyncClient() as http:
            pool = TeamsPool(
                settings,
                Metrics(),
                StaticTokenProvider(teams.bot_token),
                http,
                deliver,
                timings=ConnectorTimings(),
                credential_hint="",
            )
            pool_task = asyncio.get_running_loop().create_task(pool.run(stopping))
            await bolt.connect()  # type: ignore[no-untyped-call]
            try:
                await wait_online(slack, teams)
                await slack_round(slack, warmup)
                await teams_round(teams, warmup)
                slack_samples = await slack_round(slack, count)
                teams_samples = await teams_round(teams, count)
            finally:
                await bolt.close()  # type: ignore[no-untyped-call]
                stopping.set()
                await asyncio.wait_for(pool_task, 20)
    return slack_samples, teams_samples


# --- the table ------------------------------------------------------------------------------------------------


def _row(
    table: Table, path: str, platform: str, samples: Samples, budget_ms: float, target: Target | None = None
) -> dict[str, Any]:
    values, sent = samples
    p50 = percentile(values, 50) if values else None
    p99 = percentile(values, 99) if values else None
    left = None if p99 is None else 100.0 * (budget_ms - p99) / budget_ms
    table.add(
        path,
        platform,
        Figure(p50, "ms"),
        Figure(p99, "ms", target),
        f"{len(values):,}/{sent:,}",
        Figure(None if left is None else round(left, 1), f"% of {budget_ms / 1000:g} s"),
    )
    return {"p50": p50, "p99": p99, "mean": statistics.fmean(values) if values else None}


LOCAL = "local stack: local queue + functions host"
SERVICE_BUS = f"Service Bus backend, {RTT * 1000:g} ms per operation (fake namespace)"
IN_PROCESS = "in-process handler (Bolt / teams.py: no queue)"


async def run(quick: bool) -> list[Table]:
    for name in ("worker", "devstack", "functions", "handlers", "localqueue", "slack_sdk", "aiohttp"):
        logging.getLogger(name).setLevel(logging.ERROR)
    count = 50 if quick else 500
    warmup = 10 if quick else 25
    table = Table(
        f"Synchronous answers: request/reply round trip at {RATE:g} interactions/s",
        ["path", "platform", "p50", "p99", "answered", "budget left at p99"],
    )
    local = await local_stack(count, warmup)
    bus = await service_bus(count, warmup)
    inproc = await in_process(count, warmup)
    target = Target("<=", TARGET_P99_MS)
    _row(table, LOCAL, "slack", local[0], SLACK_BUDGET_MS, target)
    _row(table, LOCAL, "teams", local[1], TEAMS_BUDGET_MS, target)
    _row(table, SERVICE_BUS, "slack", bus[0], SLACK_BUDGET_MS)
    _row(table, SERVICE_BUS, "teams", bus[1], TEAMS_BUDGET_MS)
    _row(table, IN_PROCESS, "slack", inproc[0], SLACK_BUDGET_MS)
    _row(table, IN_PROCESS, "teams", inproc[1], TEAMS_BUDGET_MS)
    table.note(
        f"{count:,} interactions per row (Slack /ticket-count, Teams composeExtension/query), after {warmup} to "
        "warm up; timed by the sandbox from its send to the ack/completion carrying the answer (the worker's "
        "round trip plus two loopback socket hops)"
    )
    table.note(
        "local stack: the real function_app (handlers/tickets.py) in the local functions host, the answer sent by "
        "its outbox to the reply queue in the same SQLite file, received by the worker's reply inbox (it polls "
        "its session every 5 ms while answers are awaited)"
    )
    table.note(
        f"Service Bus: four operations of {RTT * 1000:g} ms each (publish, delivery to the function, the answer's "
        "send, its delivery to the worker's session); the function answers at once"
    )
    table.note(
        "budget left at p99: what remains of Slack's 3 s / Teams' 5 s for the handler itself (the worker also keeps "
        "its margin, SLACK_ANSWER_MARGIN_MS / TEAMS_ANSWER_MARGIN_MS, 300 ms by default)"
    )
    return [table]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.replies")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(render(asyncio.run(run(args.quick))))


if __name__ == "__main__":
    main()
