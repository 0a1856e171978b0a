"""The envelope contract: JSON round trip, strictness, MessageId limits, application properties."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from shared.envelope import MAX_MESSAGE_ID_LENGTH, Envelope, message_id_for
from shared.errors import InvalidEnvelopeError
from tests.factories import slack_event, teams_message


def test_round_trip_keeps_the_platform_payload_unchanged() -> None:
    env = slack_event("Ev42", text="héllo <@U1>")
    back = Envelope.from_body(env.to_body())
    assert back == env
    assert back.payload["event"]["text"] == "héllo <@U1>"


def test_model_is_frozen_and_forbids_unknown_fields() -> None:
    env = slack_event()
    with pytest.raises(ValidationError):
        env.dedupe_key = "other"  # type: ignore[misc]
    body = json.loads(env.to_body())
    body["surprise"] = 1
    with pytest.raises(InvalidEnvelopeError) as err:
        Envelope.from_body(json.dumps(body))
    assert err.value.reason == "InvalidBody"
    assert "surprise" in err.value.detail


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"not json", "json"),
        (b"{}", "dedupe_key"),
        (json.dumps({"schema_version": 2}).encode(), "schema_version"),
    ],
)
def test_invalid_bodies_raise_one_typed_error_with_a_readable_detail(body: bytes, needle: str) -> None:
    with pytest.raises(InvalidEnvelopeError) as err:
        Envelope.from_body(body)
    assert needle.lower() in err.value.detail.lower()


def test_unknown_platform_or_kind_is_invalid() -> None:
    body = json.loads(slack_event().to_body())
    body["platform"] = "irc"
    with pytest.raises(InvalidEnvelopeError, match="platform"):
        Envelope.from_body(json.dumps(body))


def test_message_id_is_the_dedupe_key_or_its_hash_when_too_long() -> None:
    assert message_id_for("Ev1") == "Ev1"
    exact = "x" * MAX_MESSAGE_ID_LENGTH
    assert message_id_for(exact) == exact
    long = "y" * 500
    hashed = message_id_for(long)
    assert len(hashed) <= MAX_MESSAGE_ID_LENGTH
    assert hashed == message_id_for(long)
    assert hashed != message_id_for(long + "z")


def test_application_properties_carry_routing_fields() -> None:
    assert slack_event(team="T9").application_properties() == {
        "schema_version": "1",
        "platform": "slack",
        "kind": "events_api",
        "tenant": "T9",
        "event_type": "app_mention",
    }
    props = teams_message().application_properties()
    assert props["platform"] == "teams"
    assert props["kind"] == "activity"
