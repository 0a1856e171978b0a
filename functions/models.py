"""Typed Slack payloads and Teams activities for handlers, kept as received (`extra="allow"`).

Every model keeps whatever the platform sends (fields it does not name are in `model_extra` and
reachable with `model["field"]` / `model.get("field")`), so a new Slack or Teams field never breaks a
bot, and a handler written against the raw dicts (`ctx.event.get("channel")`) keeps working. Parsing
never fails a handler: `parse(Model, data)` returns the model, or, when the data does not fit, a
`Raw` model around the same dict with a warning in the log.

Slack: `SlackEvent` (Events API `event`), `SlashCommand`, `BlockActions` (+ `Action`),
`ViewSubmission` / `ViewClosed` (+ `View`), `BlockSuggestion` (external select options), `Shortcut`.
Teams: `Activity` (+ `ChannelAccount`, `ConversationAccount`), camelCase on the wire, snake_case here.
"""

from __future__ import annotations

import logging
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

log = logging.getLogger(__name__)

M = TypeVar("M", bound="Payload")

_SLACK_MENTION = re.compile(r"<[@!][A-Za-z0-9^|._-]+(\|[^>]*)?>\s*")
_TEAMS_MENTION = re.compile(r"<at>[^<]*</at>\s*", re.IGNORECASE)


class Payload(BaseModel):
    """Base: a platform payload as received; dict-style access reaches every field, named or not."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=False)

    def raw(self) -> dict[str, Any]:
        """The payload as the platform sent it (aliases, extra fields)."""
        return self.model_dump(by_alias=True, exclude_unset=True)

    def get(self, key: str, default: Any = None) -> Any:
        extra = self.model_extra or {}
        if key in extra:
            return extra[key]
        for name, field in type(self).model_fields.items():
            if key in (name, field.alias):
                value = getattr(self, name)
                if isinstance(value, Payload):
                    return value.raw()
                if isinstance(value, list):
                    return [v.raw() if isinstance(v, Payload) else v for v in value]
                return default if value is None else value
        return default

    def __getitem__(self, key: str) -> Any:
        marker = object()
        value = self.get(key, marker)
        if value is marker:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key, None) is not None


class Raw(Payload):
    """A payload that did not fit its model: every field is still here, untyped."""


def parse(model: type[M], data: Any) -> M | Raw:
    """`model` from `data`; a `Raw` (with a warning) when it does not fit: never an exception."""
    if not isinstance(data, dict):
        log.warning("%s payload is not an object (%s): handing it over raw", model.__name__, type(data).__name__)
        return Raw()
    try:
        return model.model_validate(data)
    except (ValidationError, ValueError, TypeError, RecursionError) as exc:
        log.warning("%s payload does not fit its model (%s): handing it over raw", model.__name__, exc)
        return Raw.model_validate(data)


def strip_mentions(text: str, platform: str) -> str:
    """Text without the leading/inline mentions (`<@U123>` on Slack, `<at>Bot</at>` on Teams)."""
    pattern = _SLACK_MENTION if platform == "slack" else _TEAMS_MENTION
    return pattern.sub("", text).strip()


# --- Slack --------------------------------------------------------------------------------------------


class SlackEvent(Payload):
    type: str | None = None
    subtype: str | None = None
    user: str | None = None
    channel: str | None = None
    text: str | None = None
    ts: str | None = None
    thread_ts: str | None = None
    event_ts: str | None = None
    bot_id: str | None = None
    app_id: str | None = None
    team: str | None = None
    channel_type: str | None = None


class IdName(Payload):
    id: str | None = None
    name: str | None = None
    username: str | None = None
    team_id: str | None = None
    domain: str | None = None


class SlashCommand(Payload):
    command: str | None = None
    text: str = ""
    user_id: str | None = None
    user_name: str | None = None
    channel_id: str | None = None
    channel_name: str | None = None
    team_id: str | None = None
    response_url: str | None = None
    trigger_id: str | None = None
    api_app_id: str | None = None


class Action(Payload):
    action_id: str | None = None
    block_id: str | None = None
    type: str | None = None
    value: str | None = None
    action_ts: str | None = None


class View(Payload):
    id: str | None = None
    callback_id: str | None = None
    type: str | None = None
    hash: str | None = None
    private_metadata: str | None = None
    state: dict[str, Any] = Field(default_factory=dict)

    def values(self) -> dict[str, dict[str, Any]]:
        """`state.values`: block_id -> action_id -> the element's state."""
        values = self.state.get("values")
        return values if isinstance(values, dict) else {}

    def value(self, block_id: str, action_id: str | None = None) -> Any:
        """The submitted value of one input (text `value`, `selected_option.value`, …), or None."""
        block = self.values().get(block_id)
        if not isinstance(block, dict) or not block:
            return None
        element = block.get(action_id) if action_id else next(iter(block.values()))
        if not isinstance(element, dict):
            return None
        if "value" in element:
            return element["value"]
        selected = element.get("selected_option")
        if isinstance(selected, dict):
            return selected.get("value")
        for key in ("selected_user", "selected_channel", "selected_date", "selected_options", "selected_users"):
            if key in element:
                return element[key]
        return None


class BlockActions(Payload):
    type: str | None = None
    user: IdName | None = None
    channel: IdName | None = None
    team: IdName | None = None
    actions: list[Action] = Field(default_factory=list)
    response_url: str | None = None
    trigger_id: str | None = None
    view: View | None = None
    container: dict[str, Any] = Field(default_factory=dict)
    api_app_id: str | None = None


class ViewSubmission(Payload):
    type: str | None = None
    user: IdName | None = None
    team: IdName | None = None
    view: View = Field(default_factory=View)
    trigger_id: str | None = None
    api_app_id: str | None = None


class BlockSuggestion(Payload):
    """An external select asks for options (`block_suggestion`)."""

    type: str | None = None
    action_id: str | None = None
    block_id: str | None = None
    value: str = ""
    user: IdName | None = None
    team: IdName | None = None
    view: View | None = None


class Shortcut(Payload):
    type: str | None = None
    callback_id: str | None = None
    trigger_id: str | None = None
    user: IdName | None = None
    team: IdName | None = None
    message: dict[str, Any] | None = None
    channel: IdName | None = None
    response_url: str | None = None


# --- Teams ---------------------------------------------------------------------------------------------


class ChannelAccount(Payload):
    id: str | None = None
    name: str | None = None
    aad_object_id: str | None = Field(default=None, alias="aadObjectId")
    role: str | None = None


class ConversationAccount(Payload):
    id: str | None = None
    name: str | None = None
    conversation_type: str | None = Field(default=None, alias="conversationType")
    tenant_id: str | None = Field(default=None, alias="tenantId")
    is_group: bool | None = Field(default=None, alias="isGroup")


class Activity(Payload):
    type: str | None = None
    id: str | None = None
    name: str | None = None
    text: str | None = None
    value: Any = None
    from_: ChannelAccount | None = Field(default=None, alias="from")
    recipient: ChannelAccount | None = None
    conversation: ConversationAccount | None = None
    service_url: str | None = Field(default=None, alias="serviceUrl")
    channel_id: str | None = Field(default=None, alias="channelId")
    channel_data: dict[str, Any] = Field(default_factory=dict, alias="channelData")
    reply_to_id: str | None = Field(default=None, alias="replyToId")
    locale: str | None = None
    attachments: list[dict[str, Any]] = Field(default_factory=list)
    entities: list[dict[str, Any]] = Field(default_factory=list)

    @property
    def tenant_id(self) -> str | None:
        tenant = self.channel_data.get("tenant")
        if isinstance(tenant, dict) and isinstance(tenant.get("id"), str):
            return str(tenant["id"])
        return self.conversation.tenant_id if self.conversation is not None else None

    @property
    def conversation_type(self) -> str | None:
        return self.conversation.conversation_type if self.conversation is not None else None
