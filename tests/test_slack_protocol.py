"""The pure Slack Socket Mode protocol: frames in, typed results and ack frames out (no sockets)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.envelope import Envelope, Kind, Platform
from worker.slack.protocol import (
    MAX_ACK_BYTES,
    Disconnect,
    EnvelopeFrame,
    Hello,
    Invalid,
    build_ack,
    parse_frame,
)


def frame(**fields: Any) -> str:
    return json.dumps(fields)


def events_api(**extra: Any) -> dict[str, Any]:
    return {
        "envelope_id": "env-1",
        "type": "events_api",
        "accepts_response_payload": False,
        "retry_attempt": 0,
        "retry_reason": "",
        "payload": {
            "team_id": "T1",
            "api_app_id": "A1",
            "type": "event_callback",
            "event_id": "Ev1",
            "event": {"type": "app_mention", "channel": "C1", "user": "U1", "text": "hi", "ts": "1.2"},
        },
        **extra,
    }


def test_hello() -> None:
    parsed = parse_frame(
        frame(
            type="hello",
            num_connections=2,
            connection_info={"app_id": "A1"},
            debug_info={"host": "applink-1", "approximate_connection_time": 18060},
        )
    )
    assert parsed == Hello(num_connections=2, app_id="A1", host="applink-1", approximate_connection_time=18060)


def test_hello_tolerates_missing_fields() -> None:
    assert parse_frame(frame(type="hello")) == Hello(None, None, None, None)


@pytest.mark.parametrize("reason", ["warning", "refresh_requested", "too_many_websockets", "link_disabled"])
def test_disconnect(reason: str) -> None:
    parsed = parse_frame(frame(type="disconnect", reason=reason, debug_info={"host": "h"}))
    assert parsed == Disconnect(reason, "h")


def test_disconnect_without_reason() -> None:
    assert parse_frame(frame(type="disconnect")) == Disconnect("unknown")


def test_events_api_envelope() -> None:
    parsed = parse_frame(json.dumps(events_api()), connection_id="0.1")
    assert isinstance(parsed, EnvelopeFrame)
    assert parsed.keys == ("Ev1", "env-1")
    assert parsed.envelope_id == "env-1"
    env = parsed.envelope
    assert env.platform is Platform.SLACK and env.kind is Kind.EVENTS_API
    assert env.dedupe_key == "Ev1" and env.event_id == "Ev1" and env.envelope_id == "env-1"
    assert env.event_type == "app_mention"
    assert env.tenant == "T1" and env.conversation_key == "C1"
    assert env.connection_id == "0.1"
    assert env.retry.attempt == 0 and env.retry.reason is None
    assert Envelope.from_body(env.to_body()) == env  # fits the queue contract


def test_events_api_retry_info() -> None:
    parsed = parse_frame(json.dumps(events_api(retry_attempt=2, retry_reason="timeout", envelope_id="env-2")))
    assert isinstance(parsed, EnvelopeFrame)
    assert parsed.envelope.retry.attempt == 2 and parsed.envelope.retry.reason == "timeout"
    assert parsed.keys == ("Ev1", "env-2")  # same event_id: the retry dedupes against the first copy


def test_events_without_channel_are_ordered_per_team() -> None:
    body = events_api()
    body["payload"]["event"] = {"type": "team_join", "user": {"id": "U1"}}
    body["payload"].pop("team_id")
    body["payload"]["authorizations"] = [{"team_id": "T9"}]
    parsed = parse_frame(json.dumps(body))
    assert isinstance(parsed, EnvelopeFrame)
    assert parsed.envelope.tenant == "T9" and parsed.envelope.conversation_key == "T9"


def test_reaction_events_use_the_item_channel() -> None:
    body = events_api()
    body["payload"]["event"] = {"type": "reaction_added", "item": {"type": "message", "channel": "C7", "ts": "1"}}
    parsed = parse_frame(json.dumps(body))
    assert isinstance(parsed, EnvelopeFrame)
    assert parsed.envelope.conversation_key == "C7"


def test_interactive_envelope() -> None:
    payload = {
        "type": "block_actions",
        "team": {"id": "T1"},
        "channel": {"id": "C2"},
        "user": {"id": "U1", "team_id": "T1"},
        "actions": [{"action_id": "ack_button"}],
    }
    parsed = parse_frame(
        frame(envelope_id="env-3", type="interactive", payload=payload, accepts_response_payload=False)
    )
    assert isinstance(parsed, EnvelopeFrame)
    assert parsed.keys == ("env-3",)
    env = parsed.envelope
    assert env.kind is Kind.INTERACTIVE and env.event_type == "block_actions"
    assert env.dedupe_key == "env-3" and env.event_id is None
    assert env.tenant == "T1" and env.conversation_key == "C2"


def test_view_submission_has_no_channel() -> None:
    payload = {"type": "view_submission", "team": {"id": "T1"}, "user": {"id": "U1"}, "view": {"callback_id": "x"}}
    parsed = parse_frame(frame(envelope_id="env-4", type="interactive", payload=payload, accepts_response_payload=True))
    assert isinstance(parsed, EnvelopeFrame)
    assert parsed.accepts_response_payload is True
    assert parsed.envelope.conversation_key == "T1"


def test_slash_command_envelope() -> None:
    payload = {"command": "/ticket", "text": "help", "team_id": "T1", "channel_id": "C3", "response_url": "https://x"}
    parsed = parse_frame(frame(envelope_id="env-5", type="slash_commands", payload=payload))
    assert isinstance(parsed, EnvelopeFrame)
    env = parsed.envelope
    assert env.kind is Kind.SLASH_COMMANDS and env.event_type == "/ticket"
    assert env.tenant == "T1" and env.conversation_key == "C3" and env.dedupe_key == "env-5"


def test_events_api_without_event_id_dedupes_on_envelope_id() -> None:
    body = events_api()
    del body["payload"]["event_id"]
    parsed = parse_frame(json.dumps(body))
    assert isinstance(parsed, EnvelopeFrame)
    assert parsed.keys == ("env-1",) and parsed.envelope.dedupe_key == "env-1"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ("not json", "not_json"),
        (b"\xff\xfe", "not_json"),
        ("[1]", "not_object"),
        ('"x"', "not_object"),
        (frame(type="mystery"), "unknown_type"),
        (frame(type="mystery", envelope_id="e"), "unknown_type"),
        (frame(type="events_api", payload={}), "missing_envelope_id"),
        (frame(type="events_api", envelope_id="", payload={}), "missing_envelope_id"),
        (frame(type="events_api", envelope_id=5, payload={}), "missing_envelope_id"),
        (frame(type="events_api", envelope_id="e", payload="x"), "bad_payload"),
        (frame(type="events_api", envelope_id="e" * 300, payload={}), "bad_envelope_id"),
        (frame(type="interactive", envelope_id="e", payload={"type": 5, "x": "y" * 5000}), "oversized"),
    ],
)
def test_invalid_frames(data: str | bytes, reason: str) -> None:
    parsed = parse_frame(data, max_frame_bytes=4096)
    assert isinstance(parsed, Invalid)
    assert parsed.reason == reason
    assert parsed.detail


def test_ack_without_payload() -> None:
    ack = build_ack("env-1")
    assert json.loads(ack.text) == {"envelope_id": "env-1"}
    assert not ack.payload_dropped


def test_ack_with_payload() -> None:
    ack = build_ack("env-1", {"text": "done"})
    assert json.loads(ack.text) == {"envelope_id": "env-1", "payload": {"text": "done"}}


def test_ack_payload_that_would_reach_20_kb_is_dropped() -> None:
    ack = build_ack("env-1", {"text": "x" * MAX_ACK_BYTES})
    assert ack.payload_dropped
    assert json.loads(ack.text) == {"envelope_id": "env-1"}
    # the boundary: a frame of exactly the limit is too big, one byte less is fine
    overhead = len(build_ack("env-1", {"text": ""}).text.encode())
    assert build_ack("env-1", {"text": "x" * (MAX_ACK_BYTES - overhead - 1)}).payload_dropped is False
    assert build_ack("env-1", {"text": "x" * (MAX_ACK_BYTES - overhead)}).payload_dropped is True
