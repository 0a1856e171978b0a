"""The local functions host: runs a FunctionApp's Service Bus functions against the local queue."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.functions.servicebus import ServiceBusMessage

from devstack.funchost import (
    FunctionRun,
    HostOptions,
    LocalFunctionsHost,
    Settlement,
    discover,
    parse_timespan,
)
from localqueue import LocalQueueBackend, LocalQueueStore, QueueConfig
from shared.errors import ConfigurationError, DeadLetterError
from shared.routes import ROUTES
from tests.conftest_local import ORDERED, PLAIN, message, test_queues
from tests.factories import slack_event

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {"PLAIN_QUEUE": PLAIN, "ORDERED_QUEUE": ORDERED}

Handler = Callable[[func.ServiceBusMessage], Any]


def build_app(plain: Handler | None = None, ordered: Handler | None = None) -> func.FunctionApp:
    """A FunctionApp registered the way function_app.py does it (decorators, %SETTING% queue names)."""
    app = func.FunctionApp()
    if plain is not None:
        app.function_name(name="plain_fn")(
            app.service_bus_queue_trigger(
                arg_name="msg", queue_name="%PLAIN_QUEUE%", connection="ServiceBusConnection"
            )(plain)
        )
    if ordered is not None:
        app.function_name(name="ordered_fn")(
            app.service_bus_queue_trigger(
                arg_name="msg",
                queue_name="%ORDERED_QUEUE%",
                connection="ServiceBusConnection",
                is_sessions_enabled=True,
            )(ordered)
        )
    return app


class Harness:
    """Runs a host until a condition on the recorded outcomes holds (or a timeout)."""

    def __init__(
        self,
        tmp_path: Path,
        app: func.FunctionApp,
        options: HostOptions | None = None,
        queues: dict[str, QueueConfig] | None = None,
    ) -> None:
        self.backend = LocalQueueBackend(tmp_path / "q.db", queues=queues or test_queues())
        self.outcomes: list[FunctionRun] = []
        self.host = LocalFunctionsHost(
            app,
            self.backend,
            None,
            SETTINGS,
            options=options or HostOptions(max_concurrent_calls=4, max_concurrent_sessions=2),
            on_outcome=self.outcomes.append,
            poll_interval=0.02,
        )

    async def run_until(self, done: Callable[[list[FunctionRun]], bool], timeout: float = 10.0) -> None:
        stopping = asyncio.Event()

        async def watch() -> None:
            deadline = time.monotonic() + timeout
            while not done(self.outcomes) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            stopping.set()

        async with asyncio.TaskGroup() as group:
            group.create_task(self.host.run(stopping))
            group.create_task(watch())
        assert done(self.outcomes), f"timed out; outcomes: {self.outcomes}"

    async def close(self) -> None:
        await self.backend.close()


def count(outcome: Settlement, n: int) -> Callable[[list[FunctionRun]], bool]:
    return lambda outcomes: sum(1 for o in outcomes if o.outcome is outcome) >= n


async def test_success_completes_and_the_function_gets_a_real_service_bus_message(tmp_path: Path) -> None:
    seen: list[ServiceBusMessage] = []

    async def plain(msg: func.ServiceBusMessage) -> None:
        seen.append(msg)

    h = Harness(tmp_path, build_app(plain=plain))
    for i in range(3):
        await h.backend.send(message(f"m{i}", properties={"platform": "slack"}))
    await h.run_until(count(Settlement.COMPLETED, 3))
    assert sorted(m.message_id for m in seen) == ["m0", "m1", "m2"]
    first = next(m for m in seen if m.message_id == "m0")
    assert isinstance(first, ServiceBusMessage)
    assert json.loads(first.get_body()) == {"id": "m0"}
    assert first.delivery_count == 1
    assert first.application_properties == {"platform": "slack"}
    assert first.user_properties == {"platform": "slack"}
    assert first.lock_token and first.sequence_number and first.enqueued_time_utc is not None
    assert first.metadata["DeliveryCount"] == 1
    assert h.host.stats.completed == 3 and h.host.stats.functions["plain_fn"].invocations == 3
    assert await h.backend.peek() == []
    await h.close()


async def test_exception_abandons_then_dead_letters_after_max_deliveries(tmp_path: Path) -> None:
    deliveries: list[int] = []

    def plain(msg: func.ServiceBusMessage) -> None:  # a sync function: runs in a thread
        deliveries.append(msg.delivery_count or 0)
        raise RuntimeError("boom")

    h = Harness(tmp_path, build_app(plain=plain))
    await h.backend.send(message("poison"))
    await h.run_until(count(Settlement.DEAD_LETTERED, 1))
    assert deliveries == [1, 2, 3]  # max_delivery_count = 3
    assert [o.outcome for o in h.outcomes] == [Settlement.ABANDONED, Settlement.ABANDONED, Settlement.DEAD_LETTERED]
    assert h.outcomes[0].error == "RuntimeError: boom"
    assert (h.host.stats.abandoned, h.host.stats.dead_lettered) == (2, 1)
    [dead] = await h.backend.dead_letters(PLAIN)
    assert dead.dead_letter_reason == "MaxDeliveryCountExceeded"
    await h.close()


async def test_dead_letter_error_dead_letters_at_once_with_its_reason(tmp_path: Path) -> None:
    async def plain(msg: func.ServiceBusMessage) -> None:
        raise DeadLetterError("InvalidBody", "payload: field required")

    h = Harness(tmp_path, build_app(plain=plain))
    await h.backend.send(message("bad"))
    await h.run_until(count(Settlement.DEAD_LETTERED, 1))
    assert len(h.outcomes) == 1
    assert h.outcomes[0].dead_letter_reason == "InvalidBody"
    [dead] = await h.backend.dead_letters(PLAIN)
    assert (dead.dead_letter_reason, dead.dead_letter_description) == ("InvalidBody", "payload: field required")
    assert dead.delivery_count == 1
    await h.close()


async def test_max_concurrent_calls_bounds_invocations_in_flight(tmp_path: Path) -> None:
    active = 0
    peak = 0

    async def plain(msg: func.ServiceBusMessage) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.03)
        active -= 1

    h = Harness(tmp_path, build_app(plain=plain), HostOptions(max_concurrent_calls=3))
    for i in range(15):
        await h.backend.send(message(f"m{i}"))
    await h.run_until(count(Settlement.COMPLETED, 15))
    assert peak == 3
    assert h.host.stats.functions["plain_fn"].max_in_flight == 3
    await h.close()


async def test_sessions_are_processed_in_order_one_message_at_a_time(tmp_path: Path) -> None:
    order: dict[str, list[str]] = defaultdict(list)
    busy: set[str] = set()
    overlaps: list[str] = []
    active_sessions_peak = 0

    async def ordered(msg: func.ServiceBusMessage) -> None:
        nonlocal active_sessions_peak
        session = msg.session_id or ""
        if session in busy:
            overlaps.append(session)
        busy.add(session)
        active_sessions_peak = max(active_sessions_peak, len(busy))
        await asyncio.sleep(0.005 * (1 + hash(msg.message_id) % 3))
        if msg.message_id.endswith("-2") and (msg.delivery_count or 0) == 1:
            busy.discard(session)
            raise RuntimeError("retry me")  # an abandon must not let later messages overtake it
        order[session].append(msg.message_id)
        busy.discard(session)

    h = Harness(tmp_path, build_app(ordered=ordered), HostOptions(max_concurrent_sessions=2, session_idle_timeout=0.1))
    for i in range(5):
        for s in ("a", "b", "c"):
            await h.backend.send(message(f"{s}-{i}", ORDERED, session_id=s))
    await h.run_until(count(Settlement.COMPLETED, 15))
    assert overlaps == []
    for s in ("a", "b", "c"):
        assert order[s] == [f"{s}-{i}" for i in range(5)]
    assert active_sessions_peak <= 2
    assert h.host.stats.functions["ordered_fn"].max_sessions_active == 2
    assert h.host.stats.abandoned == 3
    await h.close()


async def test_long_invocations_keep_their_lock_by_renewal(tmp_path: Path) -> None:
    calls = 0

    async def plain(msg: func.ServiceBusMessage) -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.8)  # twice the lock duration

    queues = test_queues(lock_duration=0.4)
    h = Harness(tmp_path, build_app(plain=plain), HostOptions(max_auto_lock_renewal_duration=5.0), queues)
    await h.backend.send(message("slow"))
    await h.run_until(count(Settlement.COMPLETED, 1))
    assert calls == 1
    assert [o.outcome for o in h.outcomes] == [Settlement.COMPLETED]
    await h.close()


async def test_renewal_stops_after_max_auto_lock_renewal_duration(tmp_path: Path) -> None:
    deliveries: list[int] = []

    async def plain(msg: func.ServiceBusMessage) -> None:
        deliveries.append(msg.delivery_count or 0)
        if len(deliveries) == 1:
            await asyncio.sleep(0.6)  # the lock (0.3 s) is not renewed past 0.1 s: it is lost

    queues = test_queues(lock_duration=0.3)
    h = Harness(tmp_path, build_app(plain=plain), HostOptions(max_auto_lock_renewal_duration=0.1), queues)
    await h.backend.send(message("slow"))
    await h.run_until(
        lambda outcomes: (
            any(o.outcome is Settlement.LOCK_LOST for o in outcomes) and count(Settlement.COMPLETED, 1)(outcomes)
        )
    )
    assert deliveries == [1, 2]  # redelivered while the first invocation was still running
    await h.close()


async def test_stopping_finishes_invocations_in_flight(tmp_path: Path) -> None:
    started = asyncio.Event()

    async def plain(msg: func.ServiceBusMessage) -> None:
        started.set()
        await asyncio.sleep(0.2)

    h = Harness(tmp_path, build_app(plain=plain))
    await h.backend.send(message("m1"))
    stopping = asyncio.Event()
    run = asyncio.create_task(h.host.run(stopping))
    await asyncio.wait_for(started.wait(), 5)
    stopping.set()
    await asyncio.wait_for(run, 5)
    assert [o.outcome for o in h.outcomes] == [Settlement.COMPLETED]
    assert await h.backend.peek() == []
    await h.close()


async def test_auto_complete_off_leaves_the_message_to_its_lock(tmp_path: Path) -> None:
    calls: list[int] = []

    def plain(msg: func.ServiceBusMessage) -> None:
        calls.append(threading.get_ident())

    h = Harness(tmp_path, build_app(plain=plain), HostOptions(auto_complete_messages=False))
    await h.backend.send(message("m1"))
    await h.run_until(count(Settlement.LEFT_LOCKED, 1))
    assert len(calls) == 1 and calls[0] != threading.get_ident()  # sync functions run off the loop
    [stats] = [s for s in await h.backend.stats() if s.queue == PLAIN]
    assert stats.locked == 1
    await h.close()


async def test_host_from_a_path_with_route_defaults(tmp_path: Path) -> None:
    """`%SLACK_EVENTS_QUEUE%` falls back to the route table's queue; output bindings get a local Out."""
    got: list[str] = []
    app = func.FunctionApp()

    @app.function_name(name="events")
    @app.service_bus_queue_trigger(
        arg_name="msg", queue_name="%SLACK_EVENTS_QUEUE%", connection="ServiceBusConnection", is_sessions_enabled=True
    )
    async def events(msg: func.ServiceBusMessage) -> None:
        got.append(msg.message_id)

    path = tmp_path / "routes.db"
    with LocalQueueStore(path, {"slack-events": QueueConfig("slack-events", sessions=True)}) as store:
        store.send(message("Ev1", "slack-events", session_id="T1:C1"))
    outcomes: list[FunctionRun] = []
    host = LocalFunctionsHost(app, path, ROOT / "host.json", {}, on_outcome=outcomes.append, poll_interval=0.02)
    assert [(f.name, f.queue, f.sessions) for f in host.functions] == [("events", "slack-events", True)]
    stopping = asyncio.Event()

    async def stop_when_done() -> None:
        while not outcomes:
            await asyncio.sleep(0.01)
        stopping.set()

    await asyncio.wait_for(asyncio.gather(host.run(stopping), stop_when_done()), 10)
    assert got == ["Ev1"] and outcomes[0].outcome is Settlement.COMPLETED


async def test_the_real_function_app(tmp_path: Path) -> None:
    """function_app.app's own registrations: no handler → completed; bad body → dead-lettered at once."""
    import function_app

    backend = LocalQueueBackend(tmp_path / "real.db")
    outcomes: list[FunctionRun] = []
    host = LocalFunctionsHost(
        function_app.app, backend, ROOT / "host.json", {}, on_outcome=outcomes.append, poll_interval=0.02
    )
    assert {f.name for f in host.functions} == {route.name for route in ROUTES}
    unhandled = slack_event("EvNoHandler", event_type="relaybus_test_nothing_handles_this")
    await backend.send(message(unhandled.message_id, "slack-events", "T01:C01", unhandled.to_body()))
    await backend.send(message("garbage", "slack-interactive", body=b"not json"))
    stopping = asyncio.Event()

    async def stop_when_done() -> None:
        while len(outcomes) < 2:
            await asyncio.sleep(0.01)
        stopping.set()

    await asyncio.wait_for(asyncio.gather(host.run(stopping), stop_when_done()), 10)
    by_id = {o.message_id: o for o in outcomes}
    assert by_id["EvNoHandler"].outcome is Settlement.COMPLETED
    assert by_id["garbage"].outcome is Settlement.DEAD_LETTERED
    assert by_id["garbage"].dead_letter_reason == "InvalidBody"
    await backend.close()


# -- configuration --------------------------------------------------------------------------------------


def test_host_json_service_bus_options(tmp_path: Path) -> None:
    options = HostOptions.from_host_json(ROOT / "host.json")
    assert options.auto_complete_messages is True
    assert options.max_auto_lock_renewal_duration == 300.0
    legacy = tmp_path / "host.json"
    legacy.write_text(
        json.dumps(
            {
                "extensions": {
                    "serviceBus": {
                        "messageHandlerOptions": {"maxConcurrentCalls": 7, "autoComplete": False},
                        "sessionHandlerOptions": {"maxConcurrentSessions": 3},
                    }
                }
            }
        )
    )
    old = HostOptions.from_host_json(legacy)
    assert (old.max_concurrent_calls, old.max_concurrent_sessions, old.auto_complete_messages) == (7, 3, False)
    legacy.write_text(json.dumps({"extensions": {"serviceBus": {"maxConcurrentCalls": 0}}}))
    with pytest.raises(ConfigurationError, match="positive integer"):
        HostOptions.from_host_json(legacy)
    assert HostOptions.from_host_json(tmp_path / "missing.json") == HostOptions()


def test_parse_timespan() -> None:
    assert parse_timespan("00:05:00") == 300
    assert parse_timespan("1.02:00:01.5") == 86400 + 7200 + 1.5
    with pytest.raises(ValueError):
        parse_timespan("5 minutes")


def test_discovery_refuses_what_it_cannot_run_faithfully() -> None:
    async def fn(msg: func.ServiceBusMessage) -> None:
        return None

    queues = test_queues()
    unknown = func.FunctionApp()
    unknown.service_bus_queue_trigger(arg_name="msg", queue_name="elsewhere", connection="C")(fn)
    with pytest.raises(ConfigurationError, match="not a local queue"):
        discover(unknown, {}, queues)

    mismatch = func.FunctionApp()
    mismatch.service_bus_queue_trigger(arg_name="msg", queue_name=ORDERED, connection="C")(fn)
    with pytest.raises(ConfigurationError, match="isSessionsEnabled"):
        discover(mismatch, {}, queues)

    unset = func.FunctionApp()
    unset.service_bus_queue_trigger(arg_name="msg", queue_name="%NOT_SET%", connection="C")(fn)
    with pytest.raises(ConfigurationError, match="NOT_SET"):
        discover(unset, {}, queues)

    mixed = func.FunctionApp()
    mixed.service_bus_queue_trigger(arg_name="msg", queue_name="%Q%", connection="C")(fn)

    @mixed.route(route="health")
    def health(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse("ok")

    assert [f.queue for f in discover(mixed, {"Q": PLAIN}, queues)] == [PLAIN]


async def test_context_argument_and_output_bindings(tmp_path: Path) -> None:
    seen: list[tuple[str, str, int]] = []
    app = func.FunctionApp()

    @app.function_name(name="with_extras")
    @app.service_bus_queue_trigger(arg_name="msg", queue_name="%PLAIN_QUEUE%", connection="ServiceBusConnection")
    @app.generic_output_binding(arg_name="signal", type="signalR", hub_name="hub", connection="SignalR")
    async def with_extras(msg: func.ServiceBusMessage, signal: func.Out[str], context: func.Context) -> None:
        seen.append((context.function_name, context.invocation_id, context.retry_context.retry_count))
        signal.set(json.dumps({"target": "newMessage", "arguments": [msg.message_id]}))

    h = Harness(tmp_path, app)
    await h.backend.send(message("m1"))
    await h.run_until(count(Settlement.COMPLETED, 1))
    [(name, invocation_id, retries)] = seen
    assert (name, retries) == ("with_extras", 0) and invocation_id
    assert json.loads(h.outcomes[0].outputs["signal"]) == {"target": "newMessage", "arguments": ["m1"]}
    await h.close()
