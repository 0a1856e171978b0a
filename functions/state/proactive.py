"""Proactive messages: writing into a conversation the bot remembered, outside any incoming message.

    ref = await conversation_reference(store, Platform.TEAMS, conversation_id)
    await send_to(teams_client, ref, "the build is green")              # text, or an activity dict
    ref = await create_conversation(teams_client, service_url, tenant_id, "29:…", "28:<app id>")
    ref = await personal_conversation(store, teams_client, user_ref)      # the user's 1:1, created if needed
    await post(slack_client, "C123", "the build is green")                # or post(slack_client, ref, …)

Teams goes through `functions.teams_api.BotConnectorClient` (its token, retries and allowlist); a reference
whose serviceUrl is off the client's allowlist raises `ReferenceNotAllowed` before anything is sent (the
reference may have been stored under an older, wider allowlist). Slack goes through
`functions.slack_api.SlackWebClient` (`chat.postMessage`; a user id as channel writes into the app's DM).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from functions.state import StateStore
from functions.state.references import (
    ConversationReference,
    ReferenceNotAllowed,
    check_reference,
    personal_reference,
    remember_reference,
)
from shared.envelope import Platform

if TYPE_CHECKING:
    from functions.slack_api import SlackWebClient
    from functions.teams_api import BotConnectorClient


async def send_to(
    client: BotConnectorClient, ref: ConversationReference, activity: str | Mapping[str, Any]
) -> dict[str, Any]:
    """Send `activity` (text, or an activity dict) into the reference's conversation; returns the Bot
    Connector's answer (`{"id": …}`)."""
    if ref.platform is Platform.SLACK:
        raise ValueError("send_to writes to Teams; use post() for a Slack reference")
    ref = check_reference(ref, client.allowed_hosts)
    assert ref.service_url is not None  # check_reference refuses a reference without one
    body: dict[str, Any] = {"type": "message", "text": activity} if isinstance(activity, str) else dict(activity)
    body.setdefault("type", "message")
    conversation: dict[str, Any] = {"id": ref.conversation_id}
    if ref.tenant_id:
        conversation["tenantId"] = ref.tenant_id
    body.setdefault("conversation", conversation)
    if ref.bot_id:
        body.setdefault("from", {"id": ref.bot_id})
    return await client.send(ref.service_url, ref.conversation_id, body)


async def create_conversation(
    client: BotConnectorClient,
    service_url: str,
    tenant_id: str,
    user_id: str,
    bot_id: str,
    *,
    activity: str | Mapping[str, Any] | None = None,
    app: str | None = None,
) -> ConversationReference:
    """Create (or find: the Bot Connector returns the existing one) the 1:1 conversation between the bot and
    a user, optionally with a first message; returns its reference. The user must have the bot installed
    (else the Bot Connector answers 403/404, raised as `BotConnectorError`)."""
    probe = ConversationReference(Platform.TEAMS, "new", service_url=service_url, tenant_id=tenant_id)
    probe = check_reference(probe, client.allowed_hosts)
    assert probe.service_url is not None
    parameters: dict[str, Any] = {
        "isGroup": False,
        "bot": {"id": bot_id},
        "members": [{"id": user_id}],
        "tenantId": tenant_id,
        "channelData": {"tenant": {"id": tenant_id}},
    }
    if activity is not None:
        parameters["activity"] = {"type": "message", "text": activity} if isinstance(activity, str) else dict(activity)
    answer = await client.create_conversation(probe.service_url, parameters)
    conversation_id = answer.get("id")
    if not isinstance(conversation_id, str) or not conversation_id:
        from functions.teams_api import BotConnectorError

        raise BotConnectorError("POST v3/conversations answered without a conversation id")
    returned = answer.get("serviceUrl")
    ref = ConversationReference(
        Platform.TEAMS,
        conversation_id,
        service_url=returned if isinstance(returned, str) and returned else probe.service_url,
        tenant_id=tenant_id,
        conversation_type="personal",
        user_id=user_id,
        bot_id=bot_id,
        app=app,
    )
    return check_reference(ref, client.allowed_hosts)


async def personal_conversation(
    store: StateStore, client: BotConnectorClient, user: ConversationReference
) -> ConversationReference:
    """The user's 1:1 conversation: the one remembered, else created from `user` (any reference naming the
    user, its serviceUrl, tenant and bot: e.g. `user_reference(...)`) and remembered."""
    if user.user_id is None:
        raise ValueError(f"the reference to {user.conversation_id!r} names no user")
    known = await personal_reference(store, user.platform, user.user_id, app=user.app)
    if known is not None:
        return check_reference(known, client.allowed_hosts)
    if user.service_url is None or user.tenant_id is None or user.bot_id is None:
        raise ValueError("creating a 1:1 conversation needs the reference's service_url, tenant_id and bot_id")
    ref = await create_conversation(client, user.service_url, user.tenant_id, user.user_id, user.bot_id, app=user.app)
    ref = ConversationReference(
        ref.platform,
        ref.conversation_id,
        service_url=ref.service_url,
        tenant_id=ref.tenant_id,
        conversation_type="personal",
        user_id=user.user_id,
        user_name=user.user_name,
        aad_object_id=user.aad_object_id,
        bot_id=user.bot_id,
        app=user.app,
    )
    return await remember_reference(store, ref, allowed_hosts=client.allowed_hosts)


async def post(
    client: SlackWebClient,
    channel: str | ConversationReference,
    text: str | None = None,
    *,
    blocks: Sequence[Mapping[str, Any]] | None = None,
    thread_ts: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """`chat.postMessage` into a channel (id, or a Slack reference); a user id posts into the app's DM."""
    if isinstance(channel, ConversationReference):
        if channel.platform is not Platform.SLACK:
            raise ValueError("post writes to Slack; use send_to() for a Teams reference")
        channel = channel.conversation_id
    return await client.post_message(channel, text, blocks=blocks, thread_ts=thread_ts, **extra)


def allowed(ref: ConversationReference, hosts: Iterable[str]) -> bool:
    """Whether `ref` may be used with this allowlist (without raising)."""
    try:
        check_reference(ref, hosts)
    except ReferenceNotAllowed:
        return False
    return True
