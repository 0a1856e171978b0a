"""Direct Line for handlers: talk to a Direct Line bot (a Copilot Studio agent, any Bot Framework bot) on behalf
of chat users, and render its answers for Slack and Teams.

    settings = DirectLineBridgeSettings.from_env()           # None unless DIRECTLINE_SECRET is set
    client = DirectLineClient(settings, ctx.clients.state)
    key = slack_key(team, channel, thread_ts)                 # one agent conversation per Slack thread
    await client.post(key, user=chat_user("slack", team, user_id), text="hi", chat={"platform": "slack", ...})
    chat = await client.chat_for(conversation_id)             # where the agent's answers go back to
    await client.end(key, user=...)

- A key (a Slack team+channel+thread, a Teams conversation id) maps to one Direct Line conversation, kept in the
  state store (`functions.state`): `relaybus.directline.key / <key>` → `{conversation_id}`, and
  `relaybus.directline.chat / <conversation id>` → the chat to answer in (`chat`, as given to `post`). The first
  `post` for a key starts the conversation (`POST /conversations` with the secret); two functions racing for a
  new key agree on one conversation (the mapping is written `if_not_exists`).
- Every post registers the conversation with the worker, or marks it wanted again, in the Direct Line directory
  (`shared.directline.want`): the worker holds its socket and publishes the agent's answers on the
  `directline_activities` route; a parked conversation resumes.
- Activities are posted `from` the chat user: `chat_user()` gives each one a stable id (`relaybus-u-` and a hash:
  the same user always, no personal data), so the agent sees who speaks; `value` carries a card submit.
- A conversation the service no longer knows (404) is replaced by a new one for the key, once.

Rendering (pure): `to_slack(activity)` turns an agent activity into a Slack message: text (Markdown to mrkdwn),
Adaptive Cards as Block Kit where they map (TextBlock, FactSet, Image, containers, Action.Submit/Execute/OpenUrl;
inputs cannot be, and are named in `problems`), hero and thumbnail cards, suggested actions as buttons; anything
beyond Slack's limits (40,000 characters of text, 50 blocks, 3,000 characters a section) is cut and said in
`problems`. A button's `action_id` starts with `BUTTON_PREFIX`; `slack_button_activity(action)` turns its click
back into the activity for the agent (`imBack`: its text; a submit or `postBack`: a `value` message).

    DirectLineClientError (RelaybusError)   a Direct Line call failed (status, code)
    └── DirectLineConversationGone          404: the service no longer knows the conversation
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
from pydantic import ConfigDict, Field, SecretStr, field_validator

from functions.state import ConflictError, StateStore
from shared.config import load_section
from shared.directline import DEFAULT_BASE_URL, DEFAULT_STORE_PATH, bridge_user_id, want
from shared.directline_table import DirectoryStoreSettings, table_client, want_in_table
from shared.errors import RelaybusError
from shared.urls import check_https_url

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential
    from azure.data.tables.aio import TableClient

log = logging.getLogger(__name__)

KEY_PARTITION = "relaybus.directline.key"
CHAT_PARTITION = "relaybus.directline.chat"
BUTTON_PREFIX = "relaybus.dl:"
MAX_SLACK_TEXT = 40_000
MAX_SECTION_TEXT = 3000
MAX_BLOCKS = 50
MAX_BUTTON_VALUE = 2000
MAX_BUTTON_TEXT = 75
ADAPTIVE_CARD = "application/vnd.microsoft.card.adaptive"
HERO_CARD = "application/vnd.microsoft.card.hero"
THUMBNAIL_CARD = "application/vnd.microsoft.card.thumbnail"


class DirectLineBridgeSettings(DirectoryStoreSettings):
    """The function app's Direct Line settings: the bridge is on when `DIRECTLINE_SECRET` is set; the directory
    (`DIRECTLINE_STORE`: the SQLite file, or Table Storage with `DIRECTLINE_TABLE*`) is the worker's."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    secret: SecretStr = Field(alias="DIRECTLINE_SECRET")
    base_url: str = Field(default=DEFAULT_BASE_URL, alias="DIRECTLINE_BASE_URL")
    store_path: Path = Field(default=Path(DEFAULT_STORE_PATH), alias="DIRECTLINE_STORE_PATH")
    timeout: float = Field(default=20.0, gt=0, le=120, alias="DIRECTLINE_HTTP_TIMEOUT_SECONDS")

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        check_https_url(value, DEFAULT_BASE_URL)
        return value.rstrip("/")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DirectLineBridgeSettings | None:
        """The settings, or None when `DIRECTLINE_SECRET` is not set; a wrong one is a `ConfigurationError`."""
        import os

        source = os.environ if env is None else env
        if not source.get("DIRECTLINE_SECRET"):
            return None
        return load_section(cls, source)


class DirectLineClientError(RelaybusError):
    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class DirectLineConversationGone(DirectLineClientError):
    """404: the service no longer knows this conversation."""


@dataclass(frozen=True, slots=True)
class ChatUser:
    """A chat user as the agent sees them: a stable Direct Line id, a display name."""

    id: str
    name: str | None = None

    def account(self) -> dict[str, str]:
        account = {"id": self.id, "role": "user"}
        if self.name:
            account["name"] = self.name
        return account


def chat_user(platform: str, team: str | None, user: str, name: str | None = None) -> ChatUser:
    return ChatUser(bridge_user_id(platform, team, user), name)


def slack_key(team: str | None, channel: str, thread_ts: str) -> str:
    return f"slack:{team or '-'}:{channel}:{thread_ts}"


def teams_key(conversation_id: str) -> str:
    return f"teams:{conversation_id}"


class DirectLineClient:
    def __init__(
        self, settings: DirectLineBridgeSettings, state: StateStore, *, http: httpx.AsyncClient | None = None
    ) -> None:
        self.settings = settings
        self.state = state
        self._http = http or httpx.AsyncClient(timeout=settings.timeout)
        self._owns_http = http is None
        self._table: tuple[TableClient, AsyncTokenCredential | None] | None = None

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()
        if self._table is not None:
            client, credential = self._table
            self._table = None
            await client.close()
            if credential is not None:
                await credential.close()

    async def _want(self, conversation_id: str) -> None:
        """Register the conversation with the worker, or mark it wanted again (wakes a parked one)."""
        if self.settings.store == "sqlite":
            await asyncio.to_thread(want, self.settings.store_path, conversation_id)
            return
        from azure.core.exceptions import AzureError  # the Azure SDK only when the table is used

        if self._table is None:
            self._table = table_client(self.settings)
        try:
            await want_in_table(self._table[0], conversation_id)
        except AzureError as exc:
            message = getattr(exc, "message", None) or type(exc).__name__
            raise DirectLineClientError(f"the direct line directory table could not be written: {message}") from None

    # --- conversations ---------------------------------------------------------------------------------------

    async def conversation_for(self, key: str, chat: Mapping[str, Any] | None = None) -> str:
        """The conversation of `key`, started (and registered with the worker) when there is none yet."""
        entry = await self.state.get(KEY_PARTITION, key)
        if entry is not None and isinstance(entry.value.get("conversation_id"), str):
            return str(entry.value["conversation_id"])
        data = await self._call("POST", "/conversations", {})
        conversation_id = data.get("conversationId")
        if not isinstance(conversation_id, str) or not conversation_id:
            raise DirectLineClientError("POST /conversations answered no conversationId", 201)
        try:
            await self.state.put(KEY_PARTITION, key, {"conversation_id": conversation_id}, if_not_exists=True)
        except ConflictError:
            winner = await self.state.get(KEY_PARTITION, key)
            if winner is not None and isinstance(winner.value.get("conversation_id"), str):
                log.info("another invocation started the conversation for this key first: using that one")
                return str(winner.value["conversation_id"])
            raise
        await self.state.put(CHAT_PARTITION, conversation_id, {"key": key, **dict(chat or {})})
        await self._want(conversation_id)
        log.info("direct line conversation started for a %s chat", str(dict(chat or {}).get("platform", "?")))
        return conversation_id

    async def chat_for(self, conversation_id: str) -> dict[str, Any] | None:
        """Where the answers of `conversation_id` go (the `chat` given when it started), or None."""
        entry = await self.state.get(CHAT_PARTITION, conversation_id)
        return None if entry is None else dict(entry.value)

    async def post(
        self,
        key: str,
        *,
        user: ChatUser,
        text: str | None = None,
        attachments: Sequence[Mapping[str, Any]] | None = None,
        value: Any = None,
        chat: Mapping[str, Any] | None = None,
        activity_type: str = "message",
        extra: Mapping[str, Any] | None = None,
    ) -> str:
        """Post an activity from `user` into the key's conversation; returns the activity id."""
        activity: dict[str, Any] = {"type": activity_type, "from": user.account(), **dict(extra or {})}
        if text is not None:
            activity["text"] = text
        if attachments:
            activity["attachments"] = [dict(a) for a in attachments]
        if value is not None:
            activity["value"] = value
        for attempt in (1, 2):
            conversation_id = await self.conversation_for(key, chat)
            try:
                data = await self._call(
                    "POST", f"/conversations/{quote(conversation_id, safe='')}/activities", activity
                )
            except DirectLineConversationGone:
                if attempt == 2:
                    raise
                log.warning("the agent's conversation for this chat is gone (404): starting a new one")
                await self._forget(key, conversation_id)
                continue
            await self._want(conversation_id)  # wakes a parked one
            activity_id = data.get("id")
            return activity_id if isinstance(activity_id, str) else ""
        raise AssertionError("unreachable")

    async def end(self, key: str, *, user: ChatUser) -> None:
        """Tell the agent the conversation ended (`endOfConversation`) and forget the key's mapping."""
        entry = await self.state.get(KEY_PARTITION, key)
        if entry is None:
            return
        conversation_id = str(entry.value.get("conversation_id") or "")
        if conversation_id:
            with contextlib.suppress(DirectLineConversationGone):
                await self._call(
                    "POST",
                    f"/conversations/{quote(conversation_id, safe='')}/activities",
                    {"type": "endOfConversation", "from": user.account()},
                )
        await self._forget(key, conversation_id)

    async def _forget(self, key: str, conversation_id: str) -> None:
        await self.state.delete(KEY_PARTITION, key)
        if conversation_id:
            await self.state.delete(CHAT_PARTITION, conversation_id)

    async def _call(self, method: str, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.settings.secret.get_secret_value()}"}
        try:
            response = await self._http.request(method, self.settings.base_url + path, json=dict(body), headers=headers)
        except httpx.HTTPError as exc:
            raise DirectLineClientError(f"direct line {method}: {type(exc).__name__}") from None
        if response.status_code < 300:
            try:
                data = response.json()
            except ValueError:
                data = {}
            return data if isinstance(data, dict) else {}
        code = None
        try:
            error = response.json().get("error")
            code = error.get("code") if isinstance(error, dict) else None
        except (ValueError, AttributeError):
            pass
        message = f"direct line {method} {path.split('?')[0][:60]}: HTTP {response.status_code} {code or ''}".strip()
        if response.status_code == 404:
            raise DirectLineConversationGone(message, 404, code)
        raise DirectLineClientError(message, response.status_code, code)


# --- rendering for Slack (pure) ---------------------------------------------------------------------------------


@dataclass
class SlackMessage:
    text: str
    blocks: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    """What could not be shown (an input, a too long text, too many blocks): log or count it."""


def markdown_to_mrkdwn(text: str) -> str:
    """The Markdown agents write, as Slack mrkdwn: **bold**, [links](url), # headings."""
    text = re.sub(r"\[([^\]\n]+)\]\((https?://[^)\s]+)\)", r"<\2|\1>", text)
    text = re.sub(r"\*\*([^*\n]+)\*\*", r"*\1*", text)
    text = re.sub(r"__([^_\n]+)__", r"*\1*", text)
    return re.sub(r"(?m)^#{1,6}\s+(.+)$", r"*\1*", text)


def to_slack(activity: Mapping[str, Any]) -> SlackMessage | None:
    """The Slack message for an agent activity; None for activities that post nothing (typing, events, end)."""
    if activity.get("type") != "message":
        return None
    problems: list[str] = []
    blocks: list[dict[str, Any]] = []
    raw_text = activity.get("text")
    text = markdown_to_mrkdwn(raw_text) if isinstance(raw_text, str) else ""
    if len(text) > MAX_SLACK_TEXT:
        problems.append(f"text of {len(text):,} characters cut to {MAX_SLACK_TEXT:,} (Slack's limit)")
        text = text[: MAX_SLACK_TEXT - 1] + "…"
    for start in range(0, len(text), MAX_SECTION_TEXT):
        blocks.append(_section(text[start : start + MAX_SECTION_TEXT]))
    buttons: list[dict[str, Any]] = []
    for attachment in activity.get("attachments") or []:
        if not isinstance(attachment, dict):
            continue
        kind = attachment.get("contentType")
        content = attachment.get("content")
        if kind == ADAPTIVE_CARD and isinstance(content, dict):
            card, found = card_blocks(content, problems)
            blocks.extend(card)
            buttons.extend(found)
        elif kind in (HERO_CARD, THUMBNAIL_CARD) and isinstance(content, dict):
            blocks.extend(_hero_blocks(content))
            buttons.extend(_card_actions(content.get("buttons"), problems))
        elif isinstance(kind, str) and kind.startswith("image/") and isinstance(attachment.get("contentUrl"), str):
            blocks.append(
                {
                    "type": "image",
                    "image_url": attachment["contentUrl"],
                    "alt_text": str(attachment.get("name") or "image"),
                }
            )
        else:
            problems.append(f"an attachment of type {str(kind)[:60]} is not shown")
    suggested = activity.get("suggestedActions")
    if isinstance(suggested, dict):
        buttons.extend(_card_actions(suggested.get("actions"), problems))
    for start in range(0, len(buttons), 25):
        blocks.append({"type": "actions", "elements": buttons[start : start + 25]})
    if len(blocks) > MAX_BLOCKS:
        problems.append(f"{len(blocks)} blocks cut to {MAX_BLOCKS} (Slack's limit)")
        blocks = [*blocks[: MAX_BLOCKS - 1], _section("_(the rest of this answer does not fit in Slack)_")]
    summary = text or _summary(activity) or "(an answer Slack cannot show)"
    return SlackMessage(summary[:MAX_SLACK_TEXT], blocks, problems)


def card_blocks(card: Mapping[str, Any], problems: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """An Adaptive Card as Block Kit blocks, and its actions as buttons."""
    blocks: list[dict[str, Any]] = []
    buttons: list[dict[str, Any]] = []

    def walk(items: Any) -> None:
        for item in items if isinstance(items, list) else []:
            if not isinstance(item, dict):
                continue
            kind = str(item.get("type") or "")
            if kind == "TextBlock" and isinstance(item.get("text"), str):
                if item.get("weight") == "Bolder" or item.get("size") in ("Large", "ExtraLarge", "Medium"):
                    blocks.append({"type": "header", "text": {"type": "plain_text", "text": item["text"][:150]}})
                else:
                    blocks.append(_section(markdown_to_mrkdwn(item["text"])[:MAX_SECTION_TEXT]))
            elif kind == "RichTextBlock":
                parts = [str(i.get("text", "")) for i in item.get("inlines") or [] if isinstance(i, dict)]
                if parts:
                    blocks.append(_section("".join(parts)[:MAX_SECTION_TEXT]))
            elif kind == "FactSet":
                facts = [f for f in item.get("facts") or [] if isinstance(f, dict)]
                for start in range(0, len(facts), 10):
                    fields = [
                        {"type": "mrkdwn", "text": f"*{f.get('title', '')}*\n{f.get('value', '')}"[:2000]}
                        for f in facts[start : start + 10]
                    ]
                    blocks.append({"type": "section", "fields": fields})
            elif kind == "Image" and isinstance(item.get("url"), str):
                blocks.append(
                    {"type": "image", "image_url": item["url"], "alt_text": str(item.get("altText") or "image")}
                )
            elif kind in ("Container", "Column"):
                walk(item.get("items"))
            elif kind == "ColumnSet":
                for column in item.get("columns") or []:
                    if isinstance(column, dict):
                        walk(column.get("items"))
            elif kind == "ActionSet":
                buttons.extend(_card_actions(item.get("actions"), problems))
            elif kind.startswith("Input."):
                problems.append(f"a card input ({kind}) cannot be shown in Slack")
            elif kind:
                problems.append(f"a card element ({kind[:40]}) is not shown")

    walk(card.get("body"))
    buttons.extend(_card_actions(card.get("actions"), problems))
    if any(p.startswith("a card input") for p in problems):
        blocks.append(
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": "_This card asks for input Slack cannot show._"}],
            }
        )
    return blocks, buttons


def _card_actions(actions: Any, problems: list[str]) -> list[dict[str, Any]]:
    buttons: list[dict[str, Any]] = []
    for index, action in enumerate(actions if isinstance(actions, list) else []):
        if not isinstance(action, dict):
            continue
        kind = str(action.get("type") or "")
        title = str(action.get("title") or action.get("text") or action.get("value") or "…")[:MAX_BUTTON_TEXT]
        button: dict[str, Any] = {"type": "button", "text": {"type": "plain_text", "text": title}}
        if kind in ("Action.OpenUrl", "openUrl") and isinstance(action.get("url") or action.get("value"), str):
            button["url"] = str(action.get("url") or action.get("value"))
            button["action_id"] = f"{BUTTON_PREFIX}url:{index}"
        elif kind in ("Action.Submit", "Action.Execute", "postBack", "messageBack", "imBack"):
            payload = {"k": "imBack" if kind == "imBack" else "value", "v": _action_value(action)}
            value = json.dumps(payload, separators=(",", ":"), sort_keys=True)
            if len(value) > MAX_BUTTON_VALUE:
                problems.append(f"a button ({title}) carries more data than a Slack button holds")
                continue
            button["value"] = value
            button["action_id"] = f"{BUTTON_PREFIX}{index}:{len(buttons)}"
        else:
            problems.append(f"a card action ({kind[:40]}) is not shown")
            continue
        buttons.append(button)
    return buttons


def _action_value(action: Mapping[str, Any]) -> Any:
    kind = action.get("type")
    if kind == "Action.Submit":
        return action.get("data", {})
    if kind == "Action.Execute":
        data = action.get("data")
        return {"verb": action.get("verb"), **(data if isinstance(data, dict) else {})}
    return action.get("value") if action.get("value") is not None else action.get("text")


def slack_button_activity(action: Mapping[str, Any]) -> dict[str, Any] | None:
    """The activity fields a click on a bridge button sends to the agent (`text` or `value`); None if not ours."""
    action_id = action.get("action_id")
    if not isinstance(action_id, str) or not action_id.startswith(BUTTON_PREFIX) or "url:" in action_id:
        return None
    try:
        data = json.loads(str(action.get("value") or ""))
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    if data.get("k") == "imBack":
        return {"text": str(data.get("v") or "")}
    return {"value": data.get("v")}


def _hero_blocks(content: Mapping[str, Any]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if isinstance(content.get("title"), str):
        blocks.append({"type": "header", "text": {"type": "plain_text", "text": content["title"][:150]}})
    lines = [str(content[k]) for k in ("subtitle", "text") if isinstance(content.get(k), str)]
    if lines:
        blocks.append(_section(markdown_to_mrkdwn("\n".join(lines))[:MAX_SECTION_TEXT]))
    for image in content.get("images") or []:
        if isinstance(image, dict) and isinstance(image.get("url"), str):
            blocks.append({"type": "image", "image_url": image["url"], "alt_text": str(image.get("alt") or "image")})
    return blocks


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text or " "}}


def _summary(activity: Mapping[str, Any]) -> str:
    """A text for notifications when the answer is a card: its first text, or a summary."""
    for attachment in activity.get("attachments") or []:
        content = attachment.get("content") if isinstance(attachment, dict) else None
        if isinstance(content, dict):
            for item in content.get("body") or []:
                if isinstance(item, dict) and isinstance(item.get("text"), str):
                    return str(item["text"])[:300]
            if isinstance(content.get("title"), str):
                return str(content["title"])[:300]
    return ""
