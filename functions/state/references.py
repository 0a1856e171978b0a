"""Conversation references: where a bot can write later (proactively), remembered from what arrives.

    ref = reference_for(envelope)                   # pure: a ConversationReference, or None (no conversation)
    await remember(store, envelope, allowed_hosts=settings.service_url_hosts)   # on each activity / event
    ref = await conversation_reference(store, Platform.TEAMS, "19:…@thread.tacv2")
    ref = await user_reference(store, Platform.TEAMS, "29:…")       # where the user was last seen
    ref = await personal_reference(store, Platform.TEAMS, "29:…")   # the user's 1:1 conversation, if any

A Teams reference carries the Bot Connector `serviceUrl` that a proactive send will POST to with the bot's
token, so it is checked against the Bot Connector allowlist (`FunctionSettings.service_url_hosts`, the
same rule as `functions.teams_api.check_service_url`) when it is stored and again when it is used
(`functions.state.proactive`): a forged or stale one raises `ReferenceNotAllowed`, an `UnsafeReplyTarget`
(dead-lettered with reason `ServiceUrlNotAllowed` by the trigger), and nothing is stored or sent.

Stored entries (partition / key), values `ConversationReference.to_value()`:

    relaybus.ref.<platform>.conversation / <conversation id>    Slack: the channel id
    relaybus.ref.<platform>.user         / <user id>            the reference of the user's last message
    relaybus.ref.<platform>.personal     / <user id>            the user's 1:1 conversation (Teams personal,
                                                                Slack im), when the bot has one

`remember` skips a write that would store what this process already wrote within the last hour, so a busy
conversation costs one write an hour, not one per message.
"""

from __future__ import annotations

import time
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from functions.settings import DEFAULT_BOT_CONNECTOR_HOSTS
from functions.state import ConflictError, StateError, StateStore
from shared.envelope import Envelope, Kind, Platform
from shared.errors import UnsafeReplyTarget

REFRESH_SECONDS = 3600.0
"""A reference this process already wrote is written again only after this long."""
_CACHE_SIZE = 4096
_BOT_FRAMEWORK = (Platform.TEAMS, Platform.DIRECTLINE)


class ReferenceNotAllowed(StateError, UnsafeReplyTarget):
    """A reference whose Bot Connector serviceUrl is not on the allowlist: never stored, never used."""

    reason = "ServiceUrlNotAllowed"


@dataclass(frozen=True, slots=True)
class ConversationReference:
    """Enough to write into a conversation later: on Teams the serviceUrl, conversation, tenant, team and
    channel, the user and the bot; on Slack the channel (`conversation_id`), the team (`tenant_id`), the user."""

    platform: Platform
    conversation_id: str
    service_url: str | None = None
    tenant_id: str | None = None
    team_id: str | None = None
    channel_id: str | None = None
    """Teams: the channel's id (`channelData.channel.id`); Slack: the channel (the same as conversation_id)."""
    conversation_type: str | None = None
    """Teams: personal, groupChat or channel; Slack: im, mpim, channel or group (when the payload says)."""
    user_id: str | None = None
    user_name: str | None = None
    aad_object_id: str | None = None
    bot_id: str | None = None
    """Teams: the bot's channel account (`28:<app id>`); Slack: the bot's user id."""
    app: str | None = None
    """Which of the deployment's Slack apps / Teams bots the conversation belongs to (`Envelope.app`; None: the
    single app). Proactive sends through this reference use that app's token or credentials, and references
    of different apps are kept apart (two bots in one Teams conversation each keep their own)."""

    @property
    def personal(self) -> bool:
        """A 1:1 conversation between the bot and `user_id`."""
        if self.platform is Platform.SLACK:
            return self.conversation_type == "im" or self.conversation_id.startswith("D")
        return self.conversation_type == "personal"

    def to_value(self) -> dict[str, Any]:
        data = asdict(self)
        data["platform"] = self.platform.value
        return {name: value for name, value in data.items() if value is not None}

    @classmethod
    def from_value(cls, value: Mapping[str, Any]) -> ConversationReference:
        """A reference from `to_value()`'s dict; `StateError` when it is not one (fields it does not know are
        ignored, so an older process reads a newer one's)."""
        try:
            platform = Platform(value["platform"])
            conversation_id = value["conversation_id"]
        except (KeyError, TypeError, ValueError):
            raise StateError("a stored conversation reference has no valid platform or conversation_id") from None
        if not isinstance(conversation_id, str) or not conversation_id:
            raise StateError("a stored conversation reference has no valid conversation_id")
        fields: dict[str, str | None] = {}
        for name in cls.__dataclass_fields__:
            if name in ("platform", "conversation_id"):
                continue
            item = value.get(name)
            fields[name] = item if isinstance(item, str) and item else None
        return cls(platform, conversation_id, **fields)


# --- from an envelope (pure) ---------------------------------------------------------------------------


def reference_for(envelope: Envelope) -> ConversationReference | None:
    """The conversation an envelope happened in, or None (a Slack event outside any channel, an activity
    without a conversation). Never raises, whatever the payload holds."""
    payload = envelope.payload
    if envelope.platform in _BOT_FRAMEWORK:
        ref = _bot_framework(envelope.platform, payload, envelope.tenant)
    else:
        ref = _slack(envelope.kind, payload, envelope.tenant)
    return ref if ref is None or envelope.app is None else replace(ref, app=envelope.app)


def _bot_framework(platform: Platform, activity: dict[str, Any], tenant: str | None) -> ConversationReference | None:
    conversation = _dict(activity.get("conversation"))
    conversation_id = _str(conversation.get("id"))
    if conversation_id is None:
        return None
    channel_data = _dict(activity.get("channelData"))
    user = _dict(activity.get("from"))
    bot = _dict(activity.get("recipient"))
    return ConversationReference(
        platform=platform,
        conversation_id=conversation_id,
        service_url=_str(activity.get("serviceUrl")),
        tenant_id=_str(conversation.get("tenantId")) or _str(_dict(channel_data.get("tenant")).get("id")) or tenant,
        team_id=_str(_dict(channel_data.get("team")).get("id")),
        channel_id=_str(_dict(channel_data.get("channel")).get("id")),
        conversation_type=_str(conversation.get("conversationType")),
        user_id=_str(user.get("id")),
        user_name=_str(user.get("name")),
        aad_object_id=_str(user.get("aadObjectId")),
        bot_id=_str(bot.get("id")),
    )


def _slack(kind: Kind, payload: dict[str, Any], tenant: str | None) -> ConversationReference | None:
    conversation_type: str | None = None
    if kind is Kind.EVENTS_API:
        event = _dict(payload.get("event"))
        channel = _slack_channel(event)
        user = _str(event.get("user")) or _str(_dict(event.get("user")).get("id"))
        conversation_type = _str(event.get("channel_type"))
        auths = payload.get("authorizations")
        first = _dict(auths[0]) if isinstance(auths, list) and auths else {}
        bot = _str(first.get("user_id")) if first.get("is_bot") is True else None
        user_name = None
    elif kind is Kind.INTERACTIVE:
        container = _dict(payload.get("container"))
        channel = _str(_dict(payload.get("channel")).get("id")) or _str(container.get("channel_id"))
        who = _dict(payload.get("user"))
        user, user_name, bot = _str(who.get("id")), _str(who.get("username")) or _str(who.get("name")), None
    else:
        channel = _str(payload.get("channel_id"))
        user, user_name, bot = _str(payload.get("user_id")), _str(payload.get("user_name")), None
        if payload.get("channel_name") == "directmessage":
            conversation_type = "im"
    if channel is None:
        return None
    return ConversationReference(
        platform=Platform.SLACK,
        conversation_id=channel,
        tenant_id=tenant,
        team_id=tenant,
        channel_id=channel,
        conversation_type=conversation_type,
        user_id=user,
        user_name=user_name,
        bot_id=bot,
    )


def _slack_channel(event: dict[str, Any]) -> str | None:
    channel = event.get("channel")
    if isinstance(channel, dict):
        return _str(channel.get("id"))
    return _str(channel) or _str(_dict(event.get("item")).get("channel")) or _str(event.get("channel_id"))


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


# --- the allowlist -------------------------------------------------------------------------------------


def check_reference(ref: ConversationReference, allowed_hosts: Iterable[str]) -> ConversationReference:
    """`ref` (its serviceUrl normalised) when a Bot Framework reference names an allowed Bot Connector host;
    else `ReferenceNotAllowed`. Slack references have nothing to check (Slack's API URL is a setting)."""
    if ref.platform not in _BOT_FRAMEWORK:
        return ref
    from functions.teams_api import ServiceUrlNotAllowed, check_service_url

    if ref.service_url is None:
        raise ReferenceNotAllowed(f"the {ref.platform.value} reference to {ref.conversation_id!r} has no serviceUrl")
    try:
        url = check_service_url(ref.service_url, tuple(allowed_hosts))
    except ServiceUrlNotAllowed as exc:
        raise ReferenceNotAllowed(f"conversation reference refused: {exc}") from None
    return ref if url == ref.service_url else replace(ref, service_url=url)


# --- in the store ----------------------------------------------------------------------------------------


def partition(platform: Platform, what: str, app: str | None = None) -> str:
    """`relaybus.ref.teams.conversation`; for one of several apps `relaybus.ref.teams.support.conversation`."""
    return f"relaybus.ref.{platform.value}.{what}" if app is None else f"relaybus.ref.{platform.value}.{app}.{what}"


_written: weakref.WeakKeyDictionary[Any, OrderedDict[tuple[str, str], tuple[dict[str, Any], float]]] = (
    weakref.WeakKeyDictionary()
)


async def remember(
    store: StateStore, envelope: Envelope, *, allowed_hosts: Iterable[str] = DEFAULT_BOT_CONNECTOR_HOSTS
) -> ConversationReference | None:
    """Store the envelope's conversation reference (by conversation, by user, and as the user's 1:1
    conversation when it is one); returns it, or None when the envelope has no conversation.
    `ReferenceNotAllowed` (nothing stored) when its serviceUrl is off the allowlist. A Direct Line activity
    (an agent's answer the worker published) is answered through the Direct Line bridge's own key mapping
    (`functions.directline`), never through a Bot Connector: nothing is stored for it."""
    if envelope.platform is Platform.DIRECTLINE:
        return None
    ref = reference_for(envelope)
    if ref is None:
        return None
    return await remember_reference(store, ref, allowed_hosts=allowed_hosts)


async def remember_reference(
    store: StateStore, ref: ConversationReference, *, allowed_hosts: Iterable[str] = DEFAULT_BOT_CONNECTOR_HOSTS
) -> ConversationReference:
    ref = check_reference(ref, allowed_hosts)
    value = ref.to_value()
    await _write_once(store, partition(ref.platform, "conversation", ref.app), ref.conversation_id, value)
    if ref.user_id is not None and ref.user_id != ref.bot_id:
        await _write_once(store, partition(ref.platform, "user", ref.app), ref.user_id, value)
        if ref.personal:
            await _write_once(store, partition(ref.platform, "personal", ref.app), ref.user_id, value)
    return ref


async def _write_once(store: StateStore, part: str, key: str, value: dict[str, Any]) -> None:
    try:
        recent = _written.setdefault(store, OrderedDict())
    except TypeError:  # a store that cannot be weakly referenced: no cache
        await store.put(part, key, value)
        return
    now = time.monotonic()
    seen = recent.get((part, key))
    if seen is not None and seen[0] == value and now - seen[1] < REFRESH_SECONDS:
        recent.move_to_end((part, key))
        return
    await store.put(part, key, value)
    recent[(part, key)] = (value, now)
    recent.move_to_end((part, key))
    while len(recent) > _CACHE_SIZE:
        recent.popitem(last=False)


async def _lookup(store: StateStore, part: str, key: str) -> ConversationReference | None:
    entry = await store.get(part, key)
    return None if entry is None else ConversationReference.from_value(entry.value)


async def conversation_reference(
    store: StateStore, platform: Platform, conversation_id: str, *, app: str | None = None
) -> ConversationReference | None:
    """The reference last remembered for this conversation (Slack: channel id), or None; `app`: of that one
    of several apps."""
    return await _lookup(store, partition(platform, "conversation", app), conversation_id)


async def user_reference(
    store: StateStore, platform: Platform, user_id: str, *, app: str | None = None
) -> ConversationReference | None:
    """The reference of the conversation this user last wrote in, or None."""
    return await _lookup(store, partition(platform, "user", app), user_id)


async def personal_reference(
    store: StateStore, platform: Platform, user_id: str, *, app: str | None = None
) -> ConversationReference | None:
    """The user's 1:1 conversation with the bot, when the bot has seen or created one; else None."""
    return await _lookup(store, partition(platform, "personal", app), user_id)


async def forget(store: StateStore, ref: ConversationReference) -> None:
    """Delete what `remember` stored for this reference (e.g. after the bot was removed from it)."""
    cache = _written.get(store)
    keys = [(partition(ref.platform, "conversation", ref.app), ref.conversation_id)]
    if ref.user_id is not None:
        keys += [
            (partition(ref.platform, "user", ref.app), ref.user_id),
            (partition(ref.platform, "personal", ref.app), ref.user_id),
        ]
    for part, key in keys:
        if part.endswith((".user", ".personal")):
            entry = await store.get(part, key)
            if entry is None or entry.value.get("conversation_id") != ref.conversation_id:
                continue  # the user's reference points elsewhere now
            try:
                await store.delete(part, key, etag=entry.etag)
            except ConflictError:
                continue  # rewritten meanwhile: it is a newer reference
        else:
            await store.delete(part, key)
        if cache is not None:
            cache.pop((part, key), None)
