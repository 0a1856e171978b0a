"""Conversation references (functions.state.references) and proactive messages (functions.state.proactive),
through the sandbox Teams' Bot Connector and the sandbox Slack's Web API, with the embedded state store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, Literal

import pytest

from devstack.sandbox.slack import SlackSandbox
from devstack.sandbox.teams import TeamsSandbox
from functions.settings import DEFAULT_BOT_CONNECTOR_HOSTS, FunctionSettings
from functions.slack_api import SlackWebClient
from functions.state import TTL, Entry, StateError, StateStore
from functions.state.local import LocalStateStore
from functions.state.proactive import allowed, create_conversation, personal_conversation, post, send_to
from functions.state.references import (
    ConversationReference,
    ReferenceNotAllowed,
    check_reference,
    conversation_reference,
    forget,
    personal_reference,
    reference_for,
    remember,
    remember_reference,
    user_reference,
)
from functions.teams_api import BotConnectorClient, BotConnectorError
from shared.envelope import Envelope, Kind, Platform, utcnow
from shared.errors import UnsafeReplyTarget
from shared.teams_auth import StaticTokenProvider
from tests.factories import slack_event, teams_message

LOOPBACK = ("127.0.0.1",)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[LocalStateStore]:
    made = LocalStateStore(tmp_path / "state.db")
    yield made
    await made.aclose()


class CountingStore:
    """A real store that counts the writes it passes on (to see what `remember` skips)."""

    def __init__(self, inner: StateStore) -> None:
        self.inner = inner
        self.puts: list[tuple[str, str]] = []

    async def get(self, partition: str, key: str) -> Entry | None:
        return await self.inner.get(partition, key)

    async def put(
        self,
        partition: str,
        key: str,
        value: Mapping[str, Any],
        *,
        etag: str | Literal["*"] | None = None,
        if_not_exists: bool = False,
        ttl: TTL | None = None,
    ) -> str:
        self.puts.append((partition, key))
        return await self.inner.put(partition, key, value, etag=etag, if_not_exists=if_not_exists, ttl=ttl)

    async def delete(self, partition: str, key: str, *, etag: str | None = None) -> None:
        await self.inner.delete(partition, key, etag=etag)

    async def purge_expired(self) -> int:
        return await self.inner.purge_expired()

    async def aclose(self) -> None:
        await self.inner.aclose()


def teams_envelope(activity: dict[str, Any], kind: Kind = Kind.ACTIVITY) -> Envelope:
    return Envelope(
        dedupe_key=f"{activity.get('id', 'x')}",
        platform=Platform.TEAMS,
        kind=kind,
        event_type=str(activity.get("type")),
        tenant="sandbox-tenant",
        received_at=utcnow(),
        payload=activity,
    )


def slack_envelope(kind: Kind, payload: dict[str, Any]) -> Envelope:
    return Envelope(
        dedupe_key="d1", platform=Platform.SLACK, kind=kind, tenant="T01", received_at=utcnow(), payload=payload
    )


def connector(sandbox: TeamsSandbox, hosts: tuple[str, ...] = LOOPBACK) -> BotConnectorClient:
    return BotConnectorClient(StaticTokenProvider(sandbox.bot_token), allowed_hosts=hosts)


# --- references from envelopes (pure) ---------------------------------------------------------------------


def test_a_teams_channel_activity_gives_every_part_of_the_reference() -> None:
    activity = {
        "type": "message",
        "id": "1",
        "serviceUrl": "https://smba.trafficmanager.net/emea/",
        "channelId": "msteams",
        "from": {"id": "29:u", "name": "Ada", "aadObjectId": "aad-1"},
        "recipient": {"id": "28:app", "name": "bot"},
        "conversation": {"id": "19:c@thread.tacv2;messageid=9", "conversationType": "channel", "tenantId": "t1"},
        "channelData": {"team": {"id": "19:team@thread.tacv2"}, "channel": {"id": "19:c@thread.tacv2"}},
    }
    ref = reference_for(teams_envelope(activity))
    assert ref == ConversationReference(
        Platform.TEAMS,
        "19:c@thread.tacv2;messageid=9",
        service_url="https://smba.trafficmanager.net/emea/",
        tenant_id="t1",
        team_id="19:team@thread.tacv2",
        channel_id="19:c@thread.tacv2",
        conversation_type="channel",
        user_id="29:u",
        user_name="Ada",
        aad_object_id="aad-1",
        bot_id="28:app",
    )
    assert not ref.personal
    assert ConversationReference.from_value(ref.to_value()) == ref


def test_slack_references_from_events_interactions_and_commands() -> None:
    event = reference_for(slack_event(channel="C9", team="T7"))
    assert event is not None and (event.platform, event.conversation_id, event.tenant_id, event.user_id) == (
        Platform.SLACK,
        "C9",
        "T7",
        "U01",
    )
    dm = slack_envelope(
        Kind.EVENTS_API,
        {
            "event": {"type": "message", "channel": "D1", "channel_type": "im", "user": "U2"},
            "authorizations": [{"user_id": "UBOT", "is_bot": True}],
        },
    )
    ref = reference_for(dm)
    assert ref is not None and ref.personal and ref.bot_id == "UBOT" and ref.user_id == "U2"
    reaction = reference_for(
        slack_envelope(Kind.EVENTS_API, {"event": {"type": "reaction_added", "item": {"channel": "C3"}, "user": "U"}})
    )
    assert reaction is not None and reaction.conversation_id == "C3"
    action = reference_for(
        slack_envelope(
            Kind.INTERACTIVE,
            {"type": "block_actions", "user": {"id": "U4", "username": "bo"}, "container": {"channel_id": "C4"}},
        )
    )
    assert action is not None and (action.conversation_id, action.user_id, action.user_name) == ("C4", "U4", "bo")
    command = reference_for(
        slack_envelope(Kind.SLASH_COMMANDS, {"channel_id": "D5", "user_id": "U5", "channel_name": "directmessage"})
    )
    assert command is not None and command.personal and command.conversation_type == "im"


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"conversation": "not a dict"},
        {"conversation": {"id": ""}},
        {"conversation": {"id": 5}, "from": []},
        {"event": {"type": "team_join", "user": {"id": "U1"}}},
    ],
)
def test_no_conversation_gives_no_reference_and_never_raises(payload: dict[str, Any]) -> None:
    assert reference_for(teams_envelope(payload)) is None
    assert reference_for(slack_envelope(Kind.EVENTS_API, payload)) is None


def test_a_stored_reference_that_is_not_one_is_a_state_error() -> None:
    with pytest.raises(StateError):
        ConversationReference.from_value({"platform": "irc", "conversation_id": "x"})
    with pytest.raises(StateError):
        ConversationReference.from_value({"platform": "teams"})
    newer = ConversationReference.from_value(
        {"platform": "teams", "conversation_id": "a:1", "added_later": 1, "user_id": 7}
    )
    assert newer == ConversationReference(Platform.TEAMS, "a:1")  # unknown fields ignored, wrong types dropped


# --- remembering ---------------------------------------------------------------------------------------------


async def test_remember_stores_by_conversation_user_and_personal(store: LocalStateStore) -> None:
    async with TeamsSandbox() as sandbox:
        activity = sandbox.new_activity("hi", conversation_id="a:personal-1")
        ref = await remember(store, teams_envelope(activity), allowed_hosts=LOOPBACK)
    assert ref is not None and ref.personal and ref.service_url == sandbox.service_url
    assert await conversation_reference(store, Platform.TEAMS, "a:personal-1") == ref
    assert await user_reference(store, Platform.TEAMS, "29:sandbox-user") == ref
    assert await personal_reference(store, Platform.TEAMS, "29:sandbox-user") == ref
    # the same user in a channel: the user's last reference moves, the 1:1 stays
    channel = dict(activity, conversation={"id": "19:chan@thread.tacv2", "conversationType": "channel"})
    moved = await remember(store, teams_envelope(channel), allowed_hosts=LOOPBACK)
    assert moved is not None and moved.tenant_id == "sandbox-tenant"  # from channelData.tenant
    assert await user_reference(store, Platform.TEAMS, "29:sandbox-user") == moved
    assert await personal_reference(store, Platform.TEAMS, "29:sandbox-user") == ref
    await forget(store, moved)
    assert await conversation_reference(store, Platform.TEAMS, "19:chan@thread.tacv2") is None
    assert await user_reference(store, Platform.TEAMS, "29:sandbox-user") is None
    assert await personal_reference(store, Platform.TEAMS, "29:sandbox-user") == ref  # pointed elsewhere: kept


async def test_remember_skips_a_write_it_already_made(store: LocalStateStore) -> None:
    counting = CountingStore(store)
    first = await remember(counting, slack_event("Ev1", channel="C1"))
    assert first is not None and len(counting.puts) == 2  # by conversation and by user
    await remember(counting, slack_event("Ev2", channel="C1"))
    assert len(counting.puts) == 2  # the same reference: no write
    await remember(counting, slack_event("Ev3", channel="C2"))
    assert len(counting.puts) == 4
    assert await remember(counting, slack_envelope(Kind.EVENTS_API, {"event": {"type": "team_join"}})) is None


@pytest.mark.parametrize(
    "service_url",
    [
        "https://evil.example/",
        "http://smba.trafficmanager.net/teams/",
        "https://smba.trafficmanager.net:8443/teams/",
        "https://user@smba.trafficmanager.net/teams/",
        "https://smba.trafficmanager.net\\@evil.example/",
        None,
    ],
)
async def test_a_reference_off_the_allowlist_is_refused_and_not_stored(
    store: LocalStateStore, service_url: str | None
) -> None:
    activity = teams_message(conversation="c-forged").payload
    activity = (
        {**activity, "serviceUrl": service_url}
        if service_url is not None
        else {k: v for k, v in activity.items() if k != "serviceUrl"}
    )
    with pytest.raises(ReferenceNotAllowed) as refused:
        await remember(store, teams_envelope(activity))
    assert isinstance(refused.value, UnsafeReplyTarget) and refused.value.reason == "ServiceUrlNotAllowed"
    assert await conversation_reference(store, Platform.TEAMS, "c-forged") is None
    assert await user_reference(store, Platform.TEAMS, "user1") is None


async def test_the_default_allowlist_takes_real_teams_service_urls(store: LocalStateStore) -> None:
    ref = await remember(store, teams_message(conversation="c-real"))
    assert ref is not None and ref.service_url == "https://smba.trafficmanager.net/teams/"
    assert allowed(ref, DEFAULT_BOT_CONNECTOR_HOSTS) and not allowed(ref, LOOPBACK)
    no_slash = ConversationReference(Platform.TEAMS, "c", service_url="https://smba.trafficmanager.net/amer")
    assert check_reference(no_slash, DEFAULT_BOT_CONNECTOR_HOSTS).service_url == "https://smba.trafficmanager.net/amer/"


# --- proactive Teams -------------------------------------------------------------------------------------------


async def test_send_to_a_remembered_conversation_through_the_bot_connector(store: LocalStateStore) -> None:
    async with TeamsSandbox() as sandbox:
        await remember(store, teams_envelope(sandbox.new_activity("hi", "a:conv-7")), allowed_hosts=LOOPBACK)
        ref = await conversation_reference(store, Platform.TEAMS, "a:conv-7")
        assert ref is not None
        client = connector(sandbox)
        try:
            answer = await send_to(client, ref, "the build is green")
            await send_to(client, ref, {"type": "message", "attachments": [{"contentType": "x", "content": {}}]})
        finally:
            await client.aclose()
        first, second = sandbox.replies
    assert answer["id"].startswith("reply-")
    assert (first.method, first.conversation_id, first.activity_id) == ("POST", "a:conv-7", None)
    assert first.body is not None and first.body["text"] == "the build is green"
    assert first.body["from"] == {"id": sandbox.bot_key}
    assert first.body["conversation"] == {"id": "a:conv-7", "tenantId": "sandbox-tenant"}
    assert second.body is not None and second.body["type"] == "message" and "attachments" in second.body


async def test_a_stored_reference_off_the_clients_allowlist_is_refused_when_used(store: LocalStateStore) -> None:
    async with TeamsSandbox() as sandbox:
        wide = ("127.0.0.1", "smba.trafficmanager.net")
        ref = await remember(store, teams_envelope(sandbox.new_activity("hi", "a:conv-8")), allowed_hosts=wide)
        assert ref is not None
        client = connector(sandbox, hosts=("smba.trafficmanager.net",))  # the allowlist narrowed since
        try:
            with pytest.raises(ReferenceNotAllowed):
                await send_to(client, ref, "nope")
            with pytest.raises(ReferenceNotAllowed):
                await create_conversation(client, sandbox.service_url, "t", "29:u", sandbox.bot_key)
        finally:
            await client.aclose()
        assert sandbox.replies == [] and sandbox.created_conversations == []


async def test_create_a_one_to_one_conversation_then_write_in_it(store: LocalStateStore) -> None:
    async with TeamsSandbox() as sandbox:
        client = connector(sandbox)
        try:
            ref = await create_conversation(
                client, sandbox.service_url, sandbox.tenant_id, "29:new-user", sandbox.bot_key, activity="welcome"
            )
            await send_to(client, ref, "and a second message")
        finally:
            await client.aclose()
        (created,) = sandbox.created_conversations
        (reply,) = sandbox.replies
    assert created["members"] == [{"id": "29:new-user"}]
    assert created["bot"] == {"id": sandbox.bot_key}
    assert created["channelData"] == {"tenant": {"id": sandbox.tenant_id}} and created["isGroup"] is False
    assert created["activity"] == {"type": "message", "text": "welcome"}
    assert ref.personal and ref.user_id == "29:new-user" and ref.tenant_id == sandbox.tenant_id
    assert reply.conversation_id == ref.conversation_id and reply.body is not None
    assert reply.body["text"] == "and a second message"


async def test_personal_conversation_is_created_once_and_remembered(store: LocalStateStore) -> None:
    async with TeamsSandbox() as sandbox:
        channel = sandbox.new_activity("hi", "19:chan@thread.tacv2")
        channel["conversation"]["conversationType"] = "channel"
        seen = await remember(store, teams_envelope(channel), allowed_hosts=LOOPBACK)
        assert seen is not None and await personal_reference(store, Platform.TEAMS, "29:sandbox-user") is None
        client = connector(sandbox)
        try:
            first = await personal_conversation(store, client, seen)
            again = await personal_conversation(store, client, seen)
            await send_to(client, again, "hello in private")
        finally:
            await client.aclose()
        assert len(sandbox.created_conversations) == 1
        (reply,) = sandbox.replies
    assert first == again and first.personal and first.user_name == "Sandbox User"
    assert await personal_reference(store, Platform.TEAMS, "29:sandbox-user") == first
    assert reply.conversation_id == first.conversation_id


async def test_bot_connector_errors_on_create_are_typed() -> None:
    async with TeamsSandbox() as sandbox:
        client = BotConnectorClient(StaticTokenProvider("wrong-token"), allowed_hosts=LOOPBACK)
        try:
            with pytest.raises(BotConnectorError) as failed:
                await create_conversation(client, sandbox.service_url, "t", "29:u", "28:b")
        finally:
            await client.aclose()
        assert failed.value.status == 401 and sandbox.created_conversations == []


async def test_send_to_and_post_refuse_the_other_platform() -> None:
    slack_ref = ConversationReference(Platform.SLACK, "C1")
    teams_ref = ConversationReference(Platform.TEAMS, "a:1", service_url="https://smba.trafficmanager.net/teams/")
    teams = BotConnectorClient(StaticTokenProvider("t"), allowed_hosts=LOOPBACK)
    slack = SlackWebClient("xoxb-1")
    try:
        with pytest.raises(ValueError, match="post"):
            await send_to(teams, slack_ref, "x")
        with pytest.raises(ValueError, match="send_to"):
            await post(slack, teams_ref, "x")
    finally:
        await teams.aclose()
        await slack.aclose()


# --- proactive Slack ---------------------------------------------------------------------------------------------


async def test_post_to_a_remembered_slack_channel(store: LocalStateStore) -> None:
    await remember(store, slack_event("Ev9", channel="C42"))
    ref = await conversation_reference(store, Platform.SLACK, "C42")
    assert ref is not None
    async with SlackSandbox() as slack:
        settings = FunctionSettings.from_env({"SLACK_BOT_TOKEN": slack.bot_token, "SLACK_API_URL": slack.api_url})
        client = SlackWebClient.from_settings(settings)
        try:
            posted = await post(client, ref, "the build is green")
            await post(
                client, "U01", "and to you", blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": "hi"}}]
            )
        finally:
            await client.aclose()
        first, second = slack.replies
    assert posted["ok"] is True
    assert first.method == "chat.postMessage" and first.body == {"channel": "C42", "text": "the build is green"}
    assert second.body is not None and second.body["channel"] == "U01" and second.body["blocks"][0]["type"] == "section"


async def test_remember_reference_checks_what_it_stores(store: LocalStateStore) -> None:
    ref = ConversationReference(Platform.DIRECTLINE, "dl-1", service_url="https://evil.example/")
    with pytest.raises(ReferenceNotAllowed):
        await remember_reference(store, ref)
    assert await conversation_reference(store, Platform.DIRECTLINE, "dl-1") is None
