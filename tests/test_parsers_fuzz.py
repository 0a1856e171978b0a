"""Fuzzing the parsers the worker runs on every frame: whatever arrives, they answer, never raise.

Slack frames (`worker.slack.protocol.parse_frame`), SignalR frames (`worker.teams.signalr`), Teams deliveries
(`worker.teams.protocol.classify`) and queue bodies (`shared.envelope.Envelope.from_body`).
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.envelope import Envelope
from shared.errors import InvalidEnvelopeError
from worker.slack.protocol import Disconnect, EnvelopeFrame, Hello, Invalid, build_ack, parse_frame
from worker.teams import signalr
from worker.teams.protocol import Accepted, Refused, classify

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)

slack_like = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["events_api", "interactive", "slash_commands", "hello", "disconnect", "x"])
        | st.text(max_size=5),
        "envelope_id": st.text(max_size=300) | st.integers() | st.none(),
    },
    optional={
        "payload": json_values,
        "accepts_response_payload": json_values,
        "retry_attempt": json_values,
        "retry_reason": json_values,
        "num_connections": json_values,
        "connection_info": json_values,
        "debug_info": json_values,
        "reason": json_values,
    },
)


@FUZZ
@given(st.binary(max_size=300) | st.text(max_size=300))
def test_slack_parse_frame_never_raises_on_bytes_or_text(data: bytes | str) -> None:
    frame = parse_frame(data, max_frame_bytes=1024)
    assert isinstance(frame, Hello | Disconnect | EnvelopeFrame | Invalid)


@FUZZ
@given(slack_like)
def test_slack_parse_frame_never_raises_on_envelope_shapes(obj: dict[str, Any]) -> None:
    frame = parse_frame(json.dumps(obj), max_frame_bytes=1 << 20)
    if isinstance(frame, EnvelopeFrame):
        # what it accepts is a contract envelope: it serialises, parses back, and can be acked within 20 KB
        body = frame.envelope.to_body()
        assert Envelope.from_body(body).dedupe_key == frame.envelope.dedupe_key
        assert frame.keys[0] == frame.envelope.dedupe_key
        assert len(build_ack(frame.envelope_id).text.encode()) < 20 * 1024


@FUZZ
@given(st.lists(st.binary(max_size=60) | st.text(max_size=60), max_size=6))
def test_signalr_receive_never_raises(messages: list[bytes | str]) -> None:
    protocol = signalr.ClientProtocol(max_buffered_chars=10_000)
    protocol.handshake_done = True
    for message in messages:
        for event in protocol.receive(message):
            assert event is not None


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(
            ["type", "invocationId", "target", "arguments", "sequenceId", "error", "result", "item", "allowReconnect"]
        ),
        json_values,
        max_size=6,
    )
)
def test_signalr_parse_message_never_raises(message: dict[str, Any]) -> None:
    event = signalr.parse_message(json.dumps(message))
    assert event is not None


delivery_like = st.fixed_dictionaries(
    {},
    optional={
        "envelopeId": st.text(max_size=40) | json_values,
        "EnvelopeId": st.text(max_size=40),
        "protocolVersion": json_values | st.text(alphabet="0123456789", max_size=12),
        "type": st.sampled_from(["activity", "invoke"]) | json_values,
        "botKey": json_values,
        "cv": json_values,
        "deadlineMs": json_values,
        "ackRequired": json_values,
        "payload": st.dictionaries(
            st.sampled_from(["type", "id", "conversation", "channelData", "name", "text", "from", "serviceUrl"]),
            json_values,
            max_size=6,
        )
        | json_values,
    },
)


@FUZZ
@given(st.lists(delivery_like | json_values, max_size=2))
def test_teams_classify_never_raises(arguments: list[Any]) -> None:
    decided = classify(arguments, "conn-1")
    assert isinstance(decided, Accepted | Refused)
    if isinstance(decided, Accepted):
        envelope = decided.envelope
        assert Envelope.from_body(envelope.to_body()).dedupe_key == envelope.dedupe_key
    else:
        assert decided.status == 400 and decided.reason


@FUZZ
@given(st.binary(max_size=400) | st.text(max_size=400).map(str.encode))
def test_queue_bodies_either_parse_or_are_invalid_envelopes(body: bytes) -> None:
    try:
        Envelope.from_body(body)
    except InvalidEnvelopeError as exc:
        assert exc.reason == "InvalidBody"


def test_a_deeply_nested_queue_body_is_an_invalid_envelope() -> None:
    body = b'{"payload":' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    try:
        Envelope.from_body(body)
    except InvalidEnvelopeError as exc:
        assert exc.reason == "InvalidBody"
    else:  # pragma: no cover - the body is not an envelope
        raise AssertionError("parsed")
