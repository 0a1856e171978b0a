"""The Service Bus backend's encode-once path puts exactly the bytes into the SDK's batch that
`ServiceBusMessageBatch.add_message` would: same encoded messages, same batch envelope, same size accounting,
same point at which a batch is full. If an azure-servicebus upgrade changes its encoding, this fails."""

from __future__ import annotations

import string

import pytest
from azure.servicebus import ServiceBusMessageBatch
from azure.servicebus._pyamqp._encode import encode_payload
from azure.servicebus._pyamqp.message import BatchMessage
from azure.servicebus.exceptions import MessageSizeExceededError
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.queue_message import QueueMessage
from worker.publish.servicebus import (
    add_encoded,
    amqp_message,
    batch_takes_encoded,
    encode_queue_message,
    encodes_once,
    to_servicebus_message,
)

ids = st.text(alphabet=string.ascii_letters + string.digits + ":-_.~", min_size=1, max_size=128)
maybe = st.none() | ids
props = st.dictionaries(st.text(min_size=1, max_size=20), st.text(max_size=40), max_size=6)
bodies = st.binary(max_size=3000) | st.text(max_size=800).map(str.encode)


def message(**fields: object) -> QueueMessage:
    base: dict[str, object] = {
        "queue": "slack-events",
        "message_id": "Ev0123",
        "body": b'{"a":1}',
        "session_id": "C0123",
        "application_properties": {"platform": "slack", "kind": "events_api"},
    }
    base.update(fields)
    return QueueMessage(**base)  # type: ignore[arg-type]


def wire(batch: ServiceBusMessageBatch) -> bytes:
    """The batch as the sender puts it on the link."""
    out = bytearray()
    encode_payload(out, BatchMessage(*batch._message))
    return bytes(out)


def both(messages: list[QueueMessage], max_size: int = 256 * 1024) -> tuple[ServiceBusMessageBatch, ...]:
    sdk, ours = ServiceBusMessageBatch(max_size_in_bytes=max_size), ServiceBusMessageBatch(max_size_in_bytes=max_size)
    for m in messages:
        sdk.add_message(to_servicebus_message(m))
        add_encoded(ours, m)
    return sdk, ours


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.builds(
            message,
            message_id=ids,
            session_id=maybe,
            body=bodies,
            application_properties=props,
            correlation_id=maybe,
            reply_to=maybe,
            reply_to_session_id=maybe,
        ),
        min_size=1,
        max_size=5,
    )
)
def test_encoded_once_is_byte_for_byte_what_add_message_builds(messages: list[QueueMessage]) -> None:
    sdk, ours = both(messages)
    assert wire(ours) == wire(sdk)
    assert ours.size_in_bytes == sdk.size_in_bytes and len(ours) == len(sdk)


def test_a_batch_is_full_at_the_same_message_both_ways() -> None:
    msgs = [message(message_id=f"m{i}", body=b"x" * 900) for i in range(40)]
    sdk, ours = ServiceBusMessageBatch(max_size_in_bytes=8192), ServiceBusMessageBatch(max_size_in_bytes=8192)
    taken = []
    for batch, add in ((sdk, lambda b, m: b.add_message(to_servicebus_message(m))), (ours, add_encoded)):
        n = 0
        with pytest.raises(MessageSizeExceededError):
            for m in msgs:
                add(batch, m)
                n += 1
        taken.append(n)
    assert taken[0] == taken[1] and 0 < taken[0] < len(msgs)
    assert wire(ours) == wire(sdk)


def test_messages_the_sdk_must_build_take_the_sdk_path() -> None:
    from datetime import UTC, datetime

    assert encodes_once(message())
    assert not encodes_once(message(time_to_live=30.0))
    assert not encodes_once(message(scheduled_enqueue_time=datetime(2030, 1, 1, tzinfo=UTC)))
    assert batch_takes_encoded(ServiceBusMessageBatch(max_size_in_bytes=1024))


@settings(max_examples=300, deadline=None)
@given(
    st.builds(
        message,
        message_id=ids,
        session_id=maybe,
        body=bodies,
        application_properties=props,
        correlation_id=maybe,
        reply_to=maybe,
        reply_to_session_id=maybe,
    )
)
def test_the_direct_encoder_writes_the_sdks_bytes(m: QueueMessage) -> None:
    sdk = bytearray()
    encode_payload(sdk, amqp_message(m))
    assert bytes(encode_queue_message(m)) == bytes(sdk)


def test_the_direct_encoder_takes_the_long_forms_past_255_bytes() -> None:
    big = message(body=b"x" * 70_000, application_properties={f"k{i}": "v" * 300 for i in range(40)})
    sdk = bytearray()
    encode_payload(sdk, amqp_message(big))
    assert bytes(encode_queue_message(big)) == bytes(sdk)
