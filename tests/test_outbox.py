"""The outbox seam: the Service Bus outbox's message mapping (the SDK's real ServiceBusMessage) and sender
handling behind a fake sender, the process's outbox, and the lazy import that keeps cold start flat."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from azure.servicebus import ServiceBusMessage
from azure.servicebus.exceptions import MessagingEntityNotFoundError, ServiceBusConnectionError

from functions import outbox as function_outbox
from functions.outbox import ServiceBusOutbox, to_servicebus_message
from functions.settings import FunctionSettings
from shared.errors import ConfigurationError, PermanentPublishError, TransientPublishError
from shared.queue_message import QueueMessage

ROOT = Path(__file__).resolve().parent.parent
WHEN = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def reply(message_id: str = "Ev1~reply", queue: str = "relaybus-replies") -> QueueMessage:
    return QueueMessage(
        queue=queue,
        message_id=message_id,
        body=b'{"correlation_id":"Ev1"}',
        session_id="worker-1",
        application_properties={"kind": "reply"},
        correlation_id="Ev1",
        time_to_live=30.0,
    )


def test_a_queue_message_maps_to_a_service_bus_message_with_every_property() -> None:
    retry = QueueMessage(
        queue="slack-events",
        message_id="Ev1~2",
        body=b"{}",
        session_id="T1:C1",
        application_properties={"relaybus_attempt": "2"},
        reply_to="relaybus-replies",
        reply_to_session_id="worker-1",
        scheduled_enqueue_time=WHEN,
    )
    sb = to_servicebus_message(retry)
    assert isinstance(sb, ServiceBusMessage)
    assert (sb.message_id, sb.session_id, sb.reply_to, sb.reply_to_session_id) == (
        "Ev1~2",
        "T1:C1",
        "relaybus-replies",
        "worker-1",
    )
    assert sb.scheduled_enqueue_time_utc == WHEN
    assert sb.application_properties == {"relaybus_attempt": "2"}
    assert sb.content_type == "application/json" and b"".join(sb.body) == b"{}"
    answer = to_servicebus_message(reply())
    assert (answer.correlation_id, answer.session_id, answer.time_to_live) == (
        "Ev1",
        "worker-1",
        timedelta(seconds=30),
    )
    assert answer.scheduled_enqueue_time_utc is None


class FakeSender:
    def __init__(self, box: FakeNamespace, queue: str) -> None:
        self.box = box
        self.queue = queue
        self.closed = False
        self.in_flight = 0

    async def send_messages(self, message: ServiceBusMessage, *, timeout: float | None = None) -> None:
        self.in_flight += 1
        self.box.peak = max(self.box.peak, self.in_flight)
        try:
            await asyncio.sleep(0.005)
            if self.box.failures:
                raise self.box.failures.pop(0)
            self.box.sent.append((self.queue, message))
        finally:
            self.in_flight -= 1

    async def close(self) -> None:
        self.closed = True


class FakeNamespace:
    def __init__(self) -> None:
        self.senders: list[FakeSender] = []
        self.sent: list[tuple[str, ServiceBusMessage]] = []
        self.failures: list[Exception] = []
        self.peak = 0

    def sender(self, queue: str) -> FakeSender:
        sender = FakeSender(self, queue)
        self.senders.append(sender)
        return sender


async def test_one_sender_per_queue_one_send_at_a_time_each() -> None:
    ns = FakeNamespace()
    box = ServiceBusOutbox(ns.sender)
    await asyncio.gather(*(box.send(reply(f"m{i}")) for i in range(5)), box.send(reply("x", queue="slack-events")))
    assert sorted(s.queue for s in ns.senders) == ["relaybus-replies", "slack-events"]
    assert ns.peak == 1  # senders are not coroutine-safe
    assert sorted(m.message_id for _, m in ns.sent) == ["m0", "m1", "m2", "m3", "m4", "x"]
    assert box.sent == 6
    await box.close()
    assert all(s.closed for s in ns.senders)
    with pytest.raises(TransientPublishError, match="closed"):
        await box.send(reply())


async def test_sdk_errors_are_translated_and_a_failed_link_is_replaced() -> None:
    ns = FakeNamespace()
    box = ServiceBusOutbox(ns.sender)
    ns.failures = [ServiceBusConnectionError(message="link detached"), MessagingEntityNotFoundError(message="no")]
    with pytest.raises(TransientPublishError, match=r"queue=relaybus-replies message_id=Ev1~reply.*link detached"):
        await box.send(reply())
    assert ns.senders[0].closed  # a fresh sender next time
    with pytest.raises(PermanentPublishError, match="MessagingEntityNotFoundError"):
        await box.send(reply())
    await box.send(reply())
    assert len(ns.senders) == 2 and len(ns.sent) == 1
    await box.close()


async def test_the_outbox_connects_as_the_trigger_does() -> None:
    with pytest.raises(ConfigurationError) as missing:
        ServiceBusOutbox.from_settings(FunctionSettings.from_env({}))
    assert missing.value.setting == "ServiceBusConnection"
    emulator = (
        "Endpoint=sb://localhost;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE;"
        "UseDevelopmentEmulator=true;"
    )
    box = ServiceBusOutbox.from_settings(FunctionSettings.from_env({"ServiceBusConnection": emulator}))
    await box.close()  # nothing was sent, nothing connected
    identity = FunctionSettings.from_env(
        {
            "ServiceBusConnection__fullyQualifiedNamespace": "relaybus.servicebus.windows.net",
            "ServiceBusConnection__clientId": "00000000-0000-0000-0000-000000000001",
        }
    )
    box = ServiceBusOutbox.from_settings(identity)
    await box.close()


async def test_the_installed_outbox_is_the_processs_outbox() -> None:
    ns = FakeNamespace()
    mine = ServiceBusOutbox(ns.sender)
    function_outbox.install(mine)
    try:
        assert function_outbox.outbox(FunctionSettings.from_env({})) is mine
    finally:
        function_outbox.install(None)
    with pytest.raises(ConfigurationError):
        function_outbox.outbox(FunctionSettings.from_env({}))


def test_importing_the_function_app_does_not_import_azure_servicebus(tmp_path: Path) -> None:
    # cold start: azure-servicebus is imported only when something is sent
    code = (
        "import sys, function_app, functions.outbox, functions.triggers, functions.retries, functions.responses\n"
        "loaded = sorted(m for m in sys.modules if m == 'azure.servicebus' or m.startswith('azure.servicebus.'))\n"
        "print(loaded)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "TEAMS_", "RELAYBUS_", "ServiceBus"))}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_function_app_requirements_pin_azure_servicebus() -> None:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        name, _, version = line.split("#")[0].strip().partition("==")
        if name:
            pins[name.lower()] = version
    assert pins.get("azure-servicebus"), "the outbox sends with azure-servicebus: the function app must ship it"
