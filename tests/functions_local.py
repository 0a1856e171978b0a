"""Helpers for the function side's answer and retry tests: envelopes that can be answered, and a local stack
(the registered functions of a bot, the local functions host, a real local queue file, an optional fake clock)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import azure.functions as func
from azure.functions.servicebus import ServiceBusMessage

from devstack.funchost import FunctionRun, HostOptions, LocalFunctionsHost, Settlement
from functions import Bot
from functions.retries import RetryTiming
from functions.settings import FunctionSettings
from functions.triggers import register_routes
from localqueue import LocalQueueBackend, LocalQueueStore, StoredMessage, queue_configs
from shared.envelope import Envelope, Kind, Platform, ReplyAddress, utcnow
from shared.queue_message import build_message
from shared.replies import Reply
from shared.routes import REPLIES, ROUTES

WORKER_SESSION = "worker-host-1234-abcd"
_ids = itertools.count(1)


def reply_address(session: str = WORKER_SESSION, seconds: float = 2.5) -> ReplyAddress:
    return ReplyAddress(queue=REPLIES.queue, session_id=session, deadline=utcnow() + timedelta(seconds=seconds))


def slack_envelope(
    kind: Kind,
    payload: dict[str, Any],
    *,
    answerable: bool = True,
    reply_to: ReplyAddress | None = None,
    event_type: str | None = None,
) -> Envelope:
    envelope_id = f"env-{next(_ids)}"
    return Envelope(
        dedupe_key=f"slack:{envelope_id}",
        platform=Platform.SLACK,
        kind=kind,
        event_type=event_type,
        envelope_id=envelope_id,
        tenant="T01",
        conversation_key="T01:C01",
        received_at=utcnow(),
        accepts_response=answerable,
        reply_to=reply_to if reply_to is not None else (reply_address() if answerable else None),
        payload=payload,
    )


def slash_command(command: str, text: str = "", **kwargs: Any) -> Envelope:
    payload = {
        "command": command,
        "text": text,
        "team_id": "T01",
        "channel_id": "C01",
        "user_id": "U01",
        "api_app_id": "A01",
        "response_url": "https://hooks.slack.com/commands/T01/1/x",
        "trigger_id": f"trigger-{next(_ids)}",
    }
    return slack_envelope(Kind.SLASH_COMMANDS, payload, event_type=command, **kwargs)


def view_submission(values: Mapping[str, Mapping[str, Any]], *, metadata: str = "", **kwargs: Any) -> Envelope:
    payload = {
        "type": "view_submission",
        "team": {"id": "T01"},
        "user": {"id": "U01"},
        "api_app_id": "A01",
        "trigger_id": f"trigger-{next(_ids)}",
        "view": {
            "id": "V01",
            "type": "modal",
            "callback_id": "ticket_modal",
            "private_metadata": metadata,
            "state": {"values": {k: dict(v) for k, v in values.items()}},
        },
    }
    return slack_envelope(Kind.INTERACTIVE, payload, event_type="view_submission", **kwargs)


def block_suggestion(action_id: str, value: str, **kwargs: Any) -> Envelope:
    payload = {
        "type": "block_suggestion",
        "action_id": action_id,
        "block_id": "ticket_assignee_block",
        "value": value,
        "team": {"id": "T01"},
        "user": {"id": "U01"},
        "api_app_id": "A01",
        "view": {"id": "V01", "callback_id": "ticket_modal"},
    }
    return slack_envelope(Kind.INTERACTIVE, payload, event_type="block_suggestion", **kwargs)


def block_action(action_id: str) -> Envelope:
    payload = {
        "type": "block_actions",
        "team": {"id": "T01"},
        "user": {"id": "U01"},
        "api_app_id": "A01",
        "actions": [{"action_id": action_id, "block_id": "b1", "type": "button", "value": "v"}],
        "container": {"type": "message", "channel_id": "C01", "message_ts": "1.0"},
    }
    return slack_envelope(Kind.INTERACTIVE, payload, answerable=False, event_type="block_actions")


def teams_invoke(
    name: str, value: dict[str, Any], *, reply_to: ReplyAddress | None = None, service_url: str | None = None
) -> Envelope:
    activity_id = f"act-{next(_ids)}"
    activity = {
        "type": "invoke",
        "name": name,
        "id": activity_id,
        "value": value,
        "serviceUrl": service_url or "https://smba.trafficmanager.net/teams/",
        "channelId": "msteams",
        "conversation": {"id": "conv1", "tenantId": "tenant1", "conversationType": "personal"},
        "from": {"id": "user1", "name": "Grace"},
        "recipient": {"id": "bot1", "name": "Bot"},
    }
    return Envelope(
        dedupe_key=f"conv1/{activity_id}",
        platform=Platform.TEAMS,
        kind=Kind.INVOKE,
        event_type=name,
        activity_id=activity_id,
        tenant="tenant1",
        conversation_key="conv1",
        received_at=utcnow(),
        accepts_response=True,
        reply_to=reply_to or reply_address(),
        payload=activity,
    )


class FakeClock:
    """Epoch seconds moved by hand (the queue file's clock and the retries' clock)."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class LocalStack:
    """A bot's registered functions on the local functions host over a real local queue file.

    `run(scenario)` runs the host while `scenario(stack)` drives it (sends, waits for outcomes, moves the
    clock); the host stops when the scenario returns."""

    def __init__(
        self,
        tmp_path: Path,
        bot: Bot,
        env: Mapping[str, str] | None = None,
        *,
        clock: FakeClock | None = None,
        jitter: Callable[[], float] | None = None,
    ) -> None:
        self.path = tmp_path / "queue.db"
        self.env = dict(env or {})
        self.clock = clock
        self.settings = FunctionSettings.from_env(self.env)
        timing = RetryTiming(clock=clock or time.time, jitter=jitter or (lambda: 0.5))
        self.app = func.FunctionApp()
        self.clients = register_routes(self.app, bot, self.settings, timing=timing)
        self.backend = LocalQueueBackend(self.path, queues=queue_configs(ROUTES, self.env), clock=clock or time.time)
        self.outcomes: list[FunctionRun] = []
        self.host = LocalFunctionsHost(
            self.app,
            self.backend,
            None,
            self.env,
            options=HostOptions(max_concurrent_calls=4, max_concurrent_sessions=2),
            on_outcome=self.outcomes.append,
            poll_interval=0.01,
        )

    async def send(self, envelope: Envelope) -> None:
        route = ROUTES.route_for(envelope)
        await self.backend.send(build_message(envelope, route, route.queue_name(self.env)))

    async def run(self, scenario: Callable[[LocalStack], Awaitable[None]], timeout: float = 8.0) -> None:
        stopping = asyncio.Event()

        async def drive() -> None:
            try:
                async with asyncio.timeout(timeout):
                    await scenario(self)
            finally:
                stopping.set()

        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.host.run(stopping))
                group.create_task(drive())
        finally:
            await self.clients.aclose()
            await self.backend.close()

    async def outcome(self, count: int, within: float = 5.0) -> FunctionRun:
        """Wait until `count` invocations finished; the last of them."""
        deadline = time.monotonic() + within
        while len(self.outcomes) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.outcomes)} invocation(s) finished, waited for {count}")
            await asyncio.sleep(0.005)
        return self.outcomes[count - 1]

    def stored(self, queue: str) -> list[StoredMessage]:
        """What the queue file holds for `queue` (read with a connection of its own)."""
        with LocalQueueStore(self.path, create=False, clock=self.clock or time.time) as store:
            return store.messages(queue)

    def dead_letters(self, queue: str) -> list[StoredMessage]:
        with LocalQueueStore(self.path, create=False, clock=self.clock or time.time) as store:
            return store.dead_letters(queue)

    def replies(self, session: str = WORKER_SESSION) -> list[tuple[StoredMessage, Reply]]:
        """The answers waiting on the reply queue for a worker session, parsed."""
        found = [m for m in self.stored(REPLIES.queue) if m.session_id == session]
        return [(m, Reply.from_body(m.body)) for m in found]


def sb_message(
    body: bytes,
    message_id: str,
    *,
    properties: Mapping[str, str] | None = None,
    delivery_count: int = 1,
    session_id: str | None = None,
) -> ServiceBusMessage:
    """What the Service Bus trigger hands a function."""
    return ServiceBusMessage(
        body=body,
        message_id=message_id,
        session_id=session_id,
        delivery_count=delivery_count,
        application_properties=dict(properties or {}),
        user_properties={},
    )


def outcome_is(run: FunctionRun, outcome: Settlement) -> bool:
    return run.outcome is outcome


def body(message: StoredMessage) -> dict[str, Any]:
    data = json.loads(message.body)
    assert isinstance(data, dict)
    return data
