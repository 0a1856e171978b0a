"""Envelope factories for tests."""

from __future__ import annotations

from typing import Any

from shared.envelope import Envelope, Kind, Platform, utcnow


def slack_event(
    event_id: str = "Ev01",
    *,
    event_type: str = "app_mention",
    channel: str = "C01",
    team: str = "T01",
    text: str = "hi",
    envelope_id: str | None = None,
) -> Envelope:
    payload: dict[str, Any] = {
        "type": "event_callback",
        "event_id": event_id,
        "team_id": team,
        "api_app_id": "A01",
        "event": {"type": event_type, "channel": channel, "user": "U01", "text": text, "ts": "1.0"},
    }
    return Envelope(
        dedupe_key=event_id,
        platform=Platform.SLACK,
        kind=Kind.EVENTS_API,
        event_type=event_type,
        envelope_id=envelope_id or f"env-{event_id}",
        event_id=event_id,
        tenant=team,
        conversation_key=f"{team}:{channel}",
        received_at=utcnow(),
        payload=payload,
    )


def teams_message(activity_id: str = "a1", *, conversation: str = "conv1", text: str = "hello") -> Envelope:
    activity = {
        "type": "message",
        "id": activity_id,
        "text": text,
        "serviceUrl": "https://smba.trafficmanager.net/teams/",
        "conversation": {"id": conversation, "tenantId": "tenant1"},
        "from": {"id": "user1"},
        "recipient": {"id": "bot1"},
    }
    return Envelope(
        dedupe_key=f"{conversation}/{activity_id}",
        platform=Platform.TEAMS,
        kind=Kind.ACTIVITY,
        event_type="message",
        activity_id=activity_id,
        tenant="tenant1",
        conversation_key=conversation,
        received_at=utcnow(),
        payload=activity,
    )
