"""The sans-I/O pieces: SignalR JSON framing and messages, Teams deliveries, negotiate helpers (no sockets)."""

from __future__ import annotations

import json

import pytest

from shared.errors import InvalidEnvelopeError
from shared.redact import redact_url
from worker.teams import signalr
from worker.teams.negotiate import connect_url, parse_retry_after
from worker.teams.protocol import completion_result, is_delivery_target, parse_delivery
from worker.teams.settings import TeamsSettings


def test_partial_frames_are_kept_until_complete() -> None:
    buffer = signalr.FrameBuffer()
    assert buffer.feed('{"type":6}\x1e{"ty') == ['{"type":6}']
    assert buffer.pending == 4
    assert buffer.feed('pe":6}') == []
    assert buffer.feed("\x1e\x1e") == ['{"type":6}']
    with pytest.raises(signalr.SignalRProtocolError):
        signalr.FrameBuffer(max_chars=8).feed("x" * 9)


def test_handshake_then_messages_in_one_websocket_message() -> None:
    protocol = signalr.ClientProtocol()
    assert json.loads(protocol.initiate().rstrip("\x1e")) == {"protocol": "json", "version": 1}
    events = protocol.receive(
        '{}\x1e{"type":1,"target":"SocketReady","arguments":[{"connectionId":"c"}]}\x1e{"type":6}'
    )
    assert protocol.handshake_done
    assert events == [signalr.Invocation("SocketReady", [{"connectionId": "c"}])]
    assert protocol.receive("\x1e") == [signalr.Ping()]
    with pytest.raises(signalr.HandshakeError):
        signalr.ClientProtocol().receive('{"error":"nope"}\x1e')


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        ('{"type":1,"target":"Activity","invocationId":"7","arguments":[1]}', signalr.Invocation("Activity", [1], "7")),
        ('{"type":2,"invocationId":"1","item":3}', signalr.StreamItem("1", 3)),
        ('{"type":3,"invocationId":"1","result":{"a":1}}', signalr.Completion("1", {"a": 1})),
        ('{"type":3,"invocationId":"1","error":"bad"}', signalr.Completion("1", None, "bad")),
        ('{"type":4,"invocationId":"1","target":"t","arguments":[]}', signalr.StreamInvocation("1", "t", [])),
        ('{"type":5,"invocationId":"1"}', signalr.CancelInvocation("1")),
        ('{"type":6}', signalr.Ping()),
        ('{"type":7,"error":"bye","allowReconnect":true}', signalr.Close("bye", True)),
        ('{"type":7}', signalr.Close(None, False)),
        ('{"type":8,"sequenceId":4}', signalr.Ack(4)),
        ('{"type":9,"sequenceId":5}', signalr.Sequence(5)),
        ("nope", signalr.MalformedFrame("not_json")),
        ("[1]", signalr.MalformedFrame("not_object", "list")),
        ('{"type":"1"}', signalr.MalformedFrame("bad_type", "'1'")),
        ('{"type":42}', signalr.MalformedFrame("bad_type", "42")),
        ('{"type":1,"arguments":[]}', signalr.MalformedFrame("missing_field")),
    ],
)
def test_every_message_type(frame: str, expected: signalr.Event) -> None:
    parsed = signalr.parse_message(frame)
    if isinstance(expected, signalr.MalformedFrame):
        assert isinstance(parsed, signalr.MalformedFrame) and parsed.reason == expected.reason
    else:
        assert parsed == expected


def test_encoders() -> None:
    assert signalr.ping() == '{"type":6}\x1e'
    assert json.loads(signalr.completion("9", {"status": 200})[:-1]) == {
        "type": 3,
        "invocationId": "9",
        "result": {"status": 200},
    }
    assert json.loads(signalr.completion("9", error="x")[:-1]) == {"type": 3, "invocationId": "9", "error": "x"}
    assert json.loads(signalr.close("e", allow_reconnect=True)[:-1]) == {
        "type": 7,
        "error": "e",
        "allowReconnect": True,
    }


def activity(**extra: object) -> dict[str, object]:
    return {
        "type": "message",
        "id": "act-1",
        "conversation": {"id": "a:conv", "tenantId": "tenant-from-conversation"},
        **extra,
    }


def test_deliveries_accept_camel_and_pascal_case() -> None:
    camel = parse_delivery([{"envelopeId": "e1", "protocolVersion": 1, "cv": "cv1", "payload": activity()}])
    pascal = parse_delivery([{"EnvelopeId": "e1", "ProtocolVersion": 1, "Cv": "cv1", "Activity": activity()}])
    assert camel == pascal
    assert camel.dedupe_keys() == ("a:conv/act-1", "e1")  # stable id first, as on every platform
    assert is_delivery_target("ACTIVITY") and is_delivery_target("activity") and not is_delivery_target("other")


def test_envelope_fields() -> None:
    invoke = activity(type="invoke", name="adaptiveCard/action", channelData={"tenant": {"id": "t-channel"}})
    envelope = parse_delivery([{"envelopeId": "e2", "type": "invoke", "payload": invoke}]).to_envelope("conn-1")
    assert (envelope.kind, envelope.event_type, envelope.tenant) == ("invoke", "adaptiveCard/action", "t-channel")
    assert (envelope.envelope_id, envelope.activity_id, envelope.conversation_key) == ("e2", "act-1", "a:conv")
    assert envelope.dedupe_key == "a:conv/act-1" and envelope.connection_id == "conn-1" and envelope.payload == invoke
    plain = parse_delivery([{"envelopeId": "e3", "payload": activity()}]).to_envelope()
    assert plain.kind == "activity" and plain.tenant == "tenant-from-conversation"


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [([], "no_envelope"), ([{"payload": {}}], "no_envelope_id"), ([{"envelopeId": "e"}], "no_activity")],
)
def test_bad_deliveries(arguments: list[object], reason: str) -> None:
    with pytest.raises(InvalidEnvelopeError) as raised:
        parse_delivery(arguments)
    assert raised.value.reason == reason


def test_completion_result_shape() -> None:
    assert completion_result("e", "28:bot", 200, 1, 2) == {
        "protocolVersion": 1,
        "envelopeId": "e",
        "botKey": "28:bot",
        "status": 200,
        "recvAt": 1,
        "ts": 2,
    }
    assert completion_result("e", None, 200, 1, 2, invoke=True)["body"] is None


def test_connect_urls_for_both_contracts() -> None:
    shipped = TeamsSettings.model_validate({"TEAMS_APP_ID": "a", "TEAMS_RING": "canary"})
    assert connect_url(shipped, "emea") == "https://canary.botapi.skype.com/emea/v3/websockets/connect"
    pilot = TeamsSettings.model_validate({"TEAMS_APP_ID": "a", "TEAMS_RING": "pilot"})
    assert connect_url(pilot, "amer").startswith("https://pilot1.botapi.skype.com/amer/")
    draft = {"TEAMS_APP_ID": "a", "TEAMS_CONTRACT": "draft", "TEAMS_BASE_URL": "https://x.example"}
    assert connect_url(TeamsSettings.model_validate(draft), "slot1") == "https://x.example/v3/websockets/connect"
    cloud = TeamsSettings.model_validate(
        {**draft, "TEAMS_CLOUD": "public", "TEAMS_TENANT_ID": "t", "TEAMS_DRAFT_TENANT_PATH": "true"}
    )
    assert connect_url(cloud, "slot1") == "https://x.example/public/t/v3/websockets/connect"
    assert TeamsSettings.model_validate({**draft, "TEAMS_CONNECTIONS": "3"}).slot_names == ("slot1", "slot2", "slot3")


def test_static_token_is_refused_for_real_services() -> None:
    with pytest.raises(ValueError, match="sandbox only"):
        TeamsSettings.model_validate({"TEAMS_APP_ID": "a", "TEAMS_STATIC_TOKEN": "t"})


def test_retry_after_and_redaction() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    assert parse_retry_after("inf") is None and parse_retry_after("nan") is None and parse_retry_after("1e999") is None
    assert redact_url("wss://h/client/?hub=x&access_token=secret") == "wss://h/client/"
