"""Tests of the Service Bus backend: batching, message properties, error translation, close.

Only the network edge is fake (`FakeNamespace` senders); messages and batches are azure-servicebus's
own `ServiceBusMessage` and `ServiceBusMessageBatch`, so batch sizes are the SDK's real encoded sizes.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from azure.servicebus.aio import ServiceBusClient
from azure.servicebus.exceptions import (
    MessagingEntityNotFoundError,
    OperationTimeoutError,
    ServiceBusAuthorizationError,
    ServiceBusConnectionError,
    ServiceBusServerBusyError,
)
from pydantic import SecretStr

from shared.envelope import Envelope, Kind, Platform
from shared.errors import PermanentPublishError, TransientPublishError
from worker.publish import EnvelopePublisher, QueueMessage
from worker.publish.servicebus import (
    CONTENT_TYPE,
    RetryPolicy,
    ServiceBusBackend,
    ServiceBusBackendOptions,
)
from worker.publish.servicebus_fake import FakeNamespace
from worker.settings import ServiceBusSettings

FAST_RETRY = RetryPolicy(attempts=3, total_seconds=2.0, attempt_timeout=1.0, base_delay=0.001, max_delay=0.005)


def options(**overrides: object) -> ServiceBusBackendOptions:
    base: dict[str, object] = {"linger_ms": 2.0, "retry": FAST_RETRY, "close_timeout": 2.0}
    base.update(overrides)
    return ServiceBusBackendOptions(**base)  # type: ignore[arg-type]


def message(n: int, size: int = 100, queue: str = "q", session: str | None = None) -> QueueMessage:
    return QueueMessage(
        queue=queue,
        message_id=f"m{n}",
        body=b"x" * size,
        session_id=session,
        application_properties={"platform": "slack", "n": str(n)},
    )


def slack_envelope(n: int) -> Envelope:
    return Envelope(
        dedupe_key=f"Ev{n:08d}",
        platform=Platform.SLACK,
        kind=Kind.EVENTS_API,
        event_type="app_mention",
        envelope_id=f"env-{n}",
        event_id=f"Ev{n:08d}",
        tenant="T0001",
        conversation_key=f"T0001:C{n % 3}",
        received_at=datetime(2025, 1, 1, tzinfo=UTC),
        payload={"event": {"type": "app_mention", "text": "hi", "channel": f"C{n % 3}"}},
    )


async def test_concurrent_sends_share_few_batches() -> None:
    fake = FakeNamespace(latency=0.005)
    backend = ServiceBusBackend(fake.sender_factory, options())
    await asyncio.gather(*(backend.send(message(n)) for n in range(200)))
    await backend.close()
    assert len(fake.messages()) == 200
    assert len(fake.sent) <= 4, f"{len(fake.sent)} batches for 200 small messages"
    assert backend.batches_sent == len(fake.sent)
    assert fake.max_concurrent_sends == 1  # a sender is never used by two coroutines at once
    assert len(fake.senders) == 1  # one sender per queue, reused


async def test_one_sender_per_queue() -> None:
    fake = FakeNamespace()
    backend = ServiceBusBackend(fake.sender_factory, options())
    await asyncio.gather(*(backend.send(message(n, queue=f"q{n % 3}")) for n in range(30)))
    await backend.close()
    assert sorted(s.queue for s in fake.senders) == ["q0", "q1", "q2"]
    assert all(s.closed for s in fake.senders)
    assert {m.message_id for m in fake.messages("q1")} == {f"m{n}" for n in range(1, 30, 3)}


async def test_message_properties_on_the_real_servicebus_message() -> None:
    fake = FakeNamespace()
    publisher = EnvelopePublisher(ServiceBusBackend(fake.sender_factory, options()))
    envelope = slack_envelope(7)
    route = await publisher.publish(envelope)
    await publisher.close()
    (sent,) = fake.messages()
    assert sent.message_id == envelope.message_id == "Ev00000007"
    assert sent.session_id == "T0001:C1"  # slack_events is a session queue
    assert sent.content_type == CONTENT_TYPE == "application/json"
    assert sent.application_properties == {
        "schema_version": "1",
        "platform": "slack",
        "kind": "events_api",
        "tenant": "T0001",
        "event_type": "app_mention",
    }
    assert b"".join(sent.body) == envelope.to_body()
    assert fake.sent[0].queue == publisher.queue_name(route) == "slack-events"
    assert Envelope.from_body(b"".join(sent.body)) == envelope


async def test_what_goes_on_the_wire() -> None:
    """Decode the batch's AMQP payload, as the broker would, to check the encoded properties."""
    from azure.servicebus._pyamqp._decode import decode_payload

    fake = FakeNamespace()
    backend = ServiceBusBackend(fake.sender_factory, options())
    await asyncio.gather(backend.send(message(1, session="s1")), backend.send(message(2)))
    await backend.close()
    (sent,) = fake.sent
    encoded = sent.batch._message[5]
    decoded = [decode_payload(memoryview(bytes(data))) for data in encoded]
    assert [d.properties.message_id for d in decoded] == [b"m1", b"m2"]
    assert [d.properties.group_id for d in decoded] == [b"s1", None]
    assert {d.properties.content_type for d in decoded} == {b"application/json"}
    assert decoded[0].application_properties == {b"platform": b"slack", b"n": b"1"}
    assert decoded[1].data == [b"x" * 100]


async def test_no_session_id_on_plain_queues() -> None:
    fake = FakeNamespace()
    backend = ServiceBusBackend(fake.sender_factory, options())
    await backend.send(message(1))
    await backend.close()
    assert fake.messages()[0].session_id is None


async def test_batch_size_never_exceeded_with_varying_sizes() -> None:
    fake = FakeNamespace()
    limit = 16 * 1024
    backend = ServiceBusBackend(fake.sender_factory, options(max_batch_bytes=limit))
    sizes = [(n * 977) % 6000 + 10 for n in range(120)]
    await asyncio.gather(*(backend.send(message(n, size=size)) for n, size in enumerate(sizes)))
    await backend.close()
    assert len(fake.messages()) == 120
    assert len(fake.sent) > 1
    for sent in fake.sent:
        assert sent.batch.max_size_in_bytes == limit
        assert sent.batch.size_in_bytes <= limit
    assert sum(sum(len(b) for b in m.body) for m in fake.messages()) == sum(sizes)
    # batches are filled, not sent half-empty: all but the last hold more than half the limit
    assert all(s.batch.size_in_bytes > limit // 2 for s in fake.sent[:-1])


async def test_link_limit_lower_than_setting_falls_back_to_the_link() -> None:
    fake = FakeNamespace(link_max_batch_bytes=8 * 1024)
    backend = ServiceBusBackend(fake.sender_factory, options(max_batch_bytes=1024 * 1024))
    await asyncio.gather(*(backend.send(message(n, size=1000)) for n in range(20)))
    await backend.close()
    assert len(fake.messages()) == 20
    assert all(s.batch.max_size_in_bytes == 8 * 1024 for s in fake.sent)


async def test_oversize_message_fails_alone() -> None:
    fake = FakeNamespace()
    backend = ServiceBusBackend(fake.sender_factory, options(max_batch_bytes=4096))
    results = await asyncio.gather(
        backend.send(message(1)),
        backend.send(message(2, size=10_000)),
        backend.send(message(3)),
        return_exceptions=True,
    )
    await backend.close()
    assert results[0] is None and results[2] is None
    error = results[1]
    assert isinstance(error, PermanentPublishError)
    assert "queue=q" in str(error) and "m2" in str(error)
    assert error.__cause__ is not None
    assert {m.message_id for m in fake.messages()} == {"m1", "m3"}


async def test_message_id_too_long_is_permanent() -> None:
    backend = ServiceBusBackend(FakeNamespace().sender_factory, options())
    bad = QueueMessage(queue="q", message_id="x" * 200, body=b"{}")
    with pytest.raises(PermanentPublishError):
        await backend.send(bad)
    await backend.close()


@pytest.mark.parametrize(
    "error",
    [ServiceBusServerBusyError(), ServiceBusConnectionError(), OperationTimeoutError(message="slow")],
    ids=lambda e: type(e).__name__,
)
async def test_transient_errors_are_retried_then_succeed(error: Exception) -> None:
    fake = FakeNamespace()
    fake.send_failures = [error, error]
    backend = ServiceBusBackend(fake.sender_factory, options())
    await asyncio.gather(*(backend.send(message(n)) for n in range(5)))
    await backend.close()
    assert fake.send_calls == 3
    assert len(fake.messages()) == 5


async def test_retries_are_bounded_in_attempts() -> None:
    fake = FakeNamespace()
    fake.send_failures = [ServiceBusServerBusyError() for _ in range(10)]
    backend = ServiceBusBackend(fake.sender_factory, options())
    results = await asyncio.gather(*(backend.send(message(n)) for n in range(4)), return_exceptions=True)
    await backend.close()
    assert fake.send_calls == FAST_RETRY.attempts
    assert all(isinstance(r, TransientPublishError) for r in results)
    error = results[0]
    assert isinstance(error, TransientPublishError)
    assert isinstance(error.__cause__, ServiceBusServerBusyError)
    assert "queue=q" in str(error) and "m0" in str(error)


async def test_retries_are_bounded_in_time() -> None:
    fake = FakeNamespace(latency=0.05)
    fake.send_failures = [ServiceBusConnectionError() for _ in range(100)]
    policy = RetryPolicy(attempts=100, total_seconds=0.2, attempt_timeout=0.1, base_delay=0.01, max_delay=0.02)
    backend = ServiceBusBackend(fake.sender_factory, options(retry=policy))
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TransientPublishError):
        await backend.send(message(1))
    assert loop.time() - started < 0.5
    assert 2 <= fake.send_calls < 10
    await backend.close()


@pytest.mark.parametrize(
    "error",
    [MessagingEntityNotFoundError(message="no queue"), ServiceBusAuthorizationError(message="no role")],
    ids=lambda e: type(e).__name__,
)
async def test_permanent_errors_are_not_retried(error: Exception) -> None:
    fake = FakeNamespace()
    fake.send_failures = [error]
    backend = ServiceBusBackend(fake.sender_factory, options())
    with pytest.raises(PermanentPublishError) as caught:
        await backend.send(message(1))
    assert caught.value.__cause__ is error
    assert fake.send_calls == 1
    await backend.send(message(2))  # the lane goes on
    await backend.close()
    assert [m.message_id for m in fake.messages()] == ["m2"]


async def test_link_open_failure_is_translated() -> None:
    fake = FakeNamespace()
    fake.create_failures = [MessagingEntityNotFoundError(message="no such queue")]
    backend = ServiceBusBackend(fake.sender_factory, options(), queues=["q"])
    with pytest.raises(PermanentPublishError, match="queue=q"):
        await backend.open()
    await backend.open()  # second try works
    await backend.close()


async def test_unexpected_error_fails_the_batch_as_transient() -> None:
    fake = FakeNamespace()
    fake.send_failures = [RuntimeError("surprise")]
    backend = ServiceBusBackend(fake.sender_factory, options())
    results = await asyncio.gather(*(backend.send(message(n)) for n in range(3)), return_exceptions=True)
    assert all(isinstance(r, TransientPublishError) for r in results)
    assert fake.send_calls == 1
    await backend.send(message(9))  # a fresh sender takes over
    await backend.close()
    assert len(fake.senders) == 2


async def test_every_future_of_a_failed_batch_fails() -> None:
    fake = FakeNamespace(latency=0.002)
    fake.send_failures = [MessagingEntityNotFoundError(message="gone")]
    backend = ServiceBusBackend(fake.sender_factory, options(linger_ms=20))
    results = await asyncio.gather(*(backend.send(message(n)) for n in range(50)), return_exceptions=True)
    await backend.close()
    assert fake.send_calls == 1
    assert all(isinstance(r, PermanentPublishError) for r in results)
    assert fake.messages() == []


async def test_close_flushes_pending_sends() -> None:
    fake = FakeNamespace(latency=0.01)
    backend = ServiceBusBackend(fake.sender_factory, options(linger_ms=50, max_batch_bytes=4096))
    tasks = [asyncio.create_task(backend.send(message(n, size=500))) for n in range(40)]
    await asyncio.sleep(0)  # the sends are queued, the lane is lingering
    await backend.close()
    assert all(t.done() and t.exception() is None for t in tasks)
    assert len(fake.messages()) == 40
    assert all(s.closed for s in fake.senders)
    with pytest.raises(TransientPublishError, match="closed"):
        await backend.send(message(99))


async def test_close_times_out_a_stuck_send() -> None:
    fake = FakeNamespace(latency=30)
    backend = ServiceBusBackend(fake.sender_factory, options(close_timeout=0.05))
    task = asyncio.create_task(backend.send(message(1)))
    await asyncio.sleep(0.02)
    await backend.close()
    with pytest.raises(TransientPublishError, match="closed"):
        await task


async def test_cancelled_send_does_not_break_the_lane() -> None:
    fake = FakeNamespace(latency=0.01)
    backend = ServiceBusBackend(fake.sender_factory, options(linger_ms=30))
    task = asyncio.create_task(backend.send(message(1)))
    await asyncio.sleep(0)
    task.cancel()
    await backend.send(message(2))
    await backend.close()
    assert [m.message_id for m in fake.messages()] == ["m2"]


async def test_one_session_per_batch_on_partitioned_entities() -> None:
    fake = FakeNamespace()
    backend = ServiceBusBackend(fake.sender_factory, options(one_session_per_batch=True))
    await asyncio.gather(*(backend.send(message(n, session=f"s{n % 2}")) for n in range(10)))
    await backend.close()
    assert len(fake.messages()) == 10
    for sent in fake.sent:
        assert len({m.session_id for m in sent.messages}) == 1


async def test_order_is_kept_per_queue() -> None:
    fake = FakeNamespace(latency=0.002)
    backend = ServiceBusBackend(fake.sender_factory, options(max_batch_bytes=2048))
    await asyncio.gather(*(backend.send(message(n, size=300, session="s")) for n in range(30)))
    await backend.close()
    assert [m.message_id for m in fake.messages()] == [f"m{n}" for n in range(30)]


# --- client construction (no network) ---------------------------------------------------------------

EMULATOR = (
    "Endpoint=sb://localhost;SharedAccessKeyName=RootManageSharedAccessKey;"
    "SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true;"
)


async def test_connection_string_client_is_built() -> None:
    settings = ServiceBusSettings.model_validate(
        {"ServiceBusConnection": EMULATOR, "RELAYBUS_SERVICEBUS_LINGER_MS": "5"}
    )
    backend = ServiceBusBackend.from_settings(settings, queues=["slack-events"])
    assert isinstance(backend.client, ServiceBusClient)
    assert backend.client.fully_qualified_namespace.startswith("localhost")
    assert backend.options.linger_ms == 5
    assert backend.options.max_batch_bytes == 256 * 1024
    assert backend.queues == ("slack-events",)
    await backend.close()


async def test_namespace_and_identity_client_is_built() -> None:
    settings = ServiceBusSettings.model_validate(
        {
            "ServiceBusConnection__fullyQualifiedNamespace": "relaybus-dev.servicebus.windows.net",
            "ServiceBusConnection__clientId": "00000000-0000-0000-0000-000000000001",
        }
    )
    backend = ServiceBusBackend.from_settings(settings)
    assert isinstance(backend.client, ServiceBusClient)
    assert backend.client.fully_qualified_namespace == "relaybus-dev.servicebus.windows.net"
    await backend.close()


async def test_connection_string_wins_over_namespace() -> None:
    settings = ServiceBusSettings(
        connection_string=SecretStr(EMULATOR),
        fully_qualified_namespace="relaybus-dev.servicebus.windows.net",
    )
    backend = ServiceBusBackend.from_settings(settings)
    assert backend.client is not None
    assert backend.client.fully_qualified_namespace.startswith("localhost")
    await backend.close()


async def test_next_batch_fills_while_one_is_in_flight() -> None:
    fake = FakeNamespace(latency=0.05)
    backend = ServiceBusBackend(fake.sender_factory, options(linger_ms=0))
    first = asyncio.create_task(backend.send(message(0)))
    await asyncio.sleep(0.01)  # batch 1 (m0) is in flight
    rest = [asyncio.create_task(backend.send(message(n))) for n in range(1, 30)]
    await asyncio.gather(first, *rest)
    await backend.close()
    assert [len(s.messages) for s in fake.sent] == [1, 29]
    assert fake.max_concurrent_sends == 1
