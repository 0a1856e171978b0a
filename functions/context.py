"""What a handler gets: `Context` (the envelope, the settings, a logger with its ids, reply clients).

Reply clients are created on first use, one per process and event loop (`ReplyClients`), so importing
the function app stays cheap and every invocation of a process shares one HTTP connection pool.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from functions.settings import FunctionSettings
from shared.apps import setting_for
from shared.envelope import Envelope, Kind, Platform
from shared.errors import ConfigurationError, DeadLetterError
from shared.teams_auth import token_provider
from shared.urls import split

if TYPE_CHECKING:
    from functions.directline import DirectLineBridgeSettings, DirectLineClient
    from functions.live import LiveChannel
    from functions.models import Action, Activity, BlockSuggestion, Payload, SlackEvent, SlashCommand, View
    from functions.slack_api import SlackWebClient
    from functions.state import StateStore
    from functions.state.helpers import ConversationState, UserState
    from functions.teams_api import BotConnectorClient


class ReplyClients:
    """Reply clients shared by every invocation in this process (recreated if the event loop changes).

    Several apps (`RELAYBUS_SLACK_APPS`, `RELAYBUS_TEAMS_BOTS`): `slack_for(envelope.app)` and
    `teams_for(envelope.app)` answer with that app's bot token / bot credentials, one client per app; the
    envelope of an app the settings do not list is refused (`ConfigurationError` naming the missing setting)
    rather than answered with another app's identity. `slack` and `teams` are the single app's clients."""

    def __init__(self, settings: FunctionSettings, *, directline: DirectLineBridgeSettings | None = None) -> None:
        self.settings = settings
        self.directline_settings = directline
        """For `directline`: None reads `DIRECTLINE_*` from the environment on first use."""
        self._directline: DirectLineClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slack: SlackWebClient | None = None
        self._teams: BotConnectorClient | None = None
        self._state: StateStore | None = None
        self._slack_apps: dict[str, SlackWebClient] = {}
        self._teams_bots: dict[str, BotConnectorClient] = {}

    def _check_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop = loop
            self._slack = None
            self._teams = None
            self._state = None
            self._directline = None
            self._slack_apps = {}
            self._teams_bots = {}

    def slack_for(self, app: str | None) -> SlackWebClient:
        """The Slack client of the app that received the envelope (None: the single app's, `slack`)."""
        if app is None:
            return self.slack
        self._check_loop()
        client = self._slack_apps.get(app)
        if client is None:
            from functions.slack_api import SlackWebClient

            if app not in self.settings.slack_apps:
                raise ConfigurationError(
                    setting_for("SLACK_BOT_TOKEN", app),
                    f"is required to answer envelopes of the Slack app {app!r} (and RELAYBUS_SLACK_APPS must list it)",
                )
            s = self.settings
            api_url = s.slack_app_api_urls.get(app, s.slack_api_url)
            parts = split(api_url)
            client = self._slack_apps[app] = SlackWebClient(
                s.slack_apps[app],
                api_url=api_url,
                response_url_hosts=s.response_url_hosts,
                allow_loopback_response_urls=s.sandbox or (parts is not None and parts.loopback),
            )
        return client

    def teams_for(self, app: str | None) -> BotConnectorClient:
        """The Bot Connector client of the bot that received the envelope (None: the single bot's, `teams`)."""
        if app is None:
            return self.teams
        self._check_loop()
        client = self._teams_bots.get(app)
        if client is None:
            from functions.teams_api import BotConnectorClient

            credentials = self.settings.teams_bots.get(app)
            if credentials is None:
                raise ConfigurationError(
                    setting_for("TEAMS_APP_ID", app),
                    f"is required to answer envelopes of the Teams bot {app!r} (and RELAYBUS_TEAMS_BOTS must list it)",
                )
            tokens, _hint = token_provider(credentials)
            client = self._teams_bots[app] = BotConnectorClient(tokens, allowed_hosts=self.settings.service_url_hosts)
        return client

    @property
    def slack(self) -> SlackWebClient:
        self._check_loop()
        if self._slack is None:
            from functions.slack_api import SlackWebClient

            self._slack = SlackWebClient.from_settings(self.settings)
        return self._slack

    @property
    def teams(self) -> BotConnectorClient:
        self._check_loop()
        if self._teams is None:
            from functions.teams_api import BotConnectorClient

            self._teams = BotConnectorClient.from_settings(self.settings)
        return self._teams

    @property
    def state(self) -> StateStore:
        """The state store the settings name (Table Storage, Azurite, or the embedded SQLite file)."""
        self._check_loop()
        if self._state is None:
            from functions.state import state_store

            self._state = state_store(self.settings)
        return self._state

    @property
    def directline(self) -> DirectLineClient:
        """The Direct Line client (`functions.directline`): conversations per key, kept in the state store."""
        self._check_loop()
        if self._directline is None:
            from functions.directline import DirectLineBridgeSettings, DirectLineClient

            settings = self.directline_settings or DirectLineBridgeSettings.from_env()
            if settings is None:
                raise ConfigurationError("DIRECTLINE_SECRET", "is required to use ctx.directline (a Direct Line bot)")
            self.directline_settings = settings
            self._directline = DirectLineClient(settings, self.state)
        return self._directline

    async def aclose(self) -> None:
        if self._directline is not None:
            await self._directline.aclose()
            self._directline = None
        if self._state is not None:
            await self._state.aclose()
            self._state = None
        if self._slack is not None:
            await self._slack.aclose()
            self._slack = None
        if self._teams is not None:
            await self._teams.aclose()
            self._teams = None
        for slack in self._slack_apps.values():
            await slack.aclose()
        for teams in self._teams_bots.values():
            await teams.aclose()
        self._slack_apps, self._teams_bots = {}, {}


@dataclass
class Context:
    """What a handler gets: the envelope, the settings, a logger with the envelope's ids, reply clients.

    Handlers receive the platform's subclass (`SlackContext`, `TeamsContext`), with typed payloads and the
    helpers Bolt and teams.py users know (`say`, `respond`; `send`, `reply`, `typing`, `send_card`)."""

    envelope: Envelope
    settings: FunctionSettings
    clients: ReplyClients
    message_id: str | None = None
    delivery_count: int = 1
    attempt: int = 1
    """Which try of the handler this is (1 the first; retries that back off count up)."""
    log: logging.LoggerAdapter[logging.Logger] = field(init=False)
    extras: dict[str, Any] = field(default_factory=dict, init=False)
    """Anything middleware wants to hand the handlers (`ctx.extras["user"] = ...`)."""

    def __post_init__(self) -> None:
        self.log = logging.LoggerAdapter(
            logging.getLogger("handlers"),
            {"dedupe_key": self.envelope.dedupe_key, "message_id": self.message_id},
        )

    @classmethod
    def for_envelope(
        cls,
        envelope: Envelope,
        settings: FunctionSettings,
        clients: ReplyClients,
        message_id: str | None = None,
        delivery_count: int = 1,
        attempt: int = 1,
    ) -> Context:
        """The platform's context for an envelope."""
        kind: type[Context] = SlackContext if envelope.platform is Platform.SLACK else TeamsContext
        return kind(envelope, settings, clients, message_id, delivery_count, attempt)

    def specialised(self) -> Context:
        """This context as its platform's subclass (a plain `Context` made by hand becomes one)."""
        if type(self) is not Context:
            return self
        ctx = Context.for_envelope(
            self.envelope, self.settings, self.clients, self.message_id, self.delivery_count, self.attempt
        )
        ctx.extras.update(self.extras)
        return ctx

    @property
    def payload(self) -> dict[str, Any]:
        """The platform payload as received (Slack `payload`, Bot Framework activity)."""
        return self.envelope.payload

    @property
    def slack(self) -> SlackWebClient:
        """The Slack Web API client (`client` in Bolt), with the bot token of the app that received the envelope."""
        return self.clients.slack_for(self.envelope.app)

    @property
    def teams(self) -> BotConnectorClient:
        """The Bot Connector client, with the credentials of the bot that received the envelope."""
        return self.clients.teams_for(self.envelope.app)

    @property
    def directline(self) -> DirectLineClient:
        """A Direct Line bot (a Copilot Studio agent): `await ctx.directline.post(key, user=..., text=...)`
        starts or resumes the key's conversation; its answers arrive on the `directline_activities` route."""
        return self.clients.directline

    def text(self, *, strip_mentions: bool = False) -> str:
        """The message text (Slack event or command text, Teams activity text), mentions removed on request."""
        return ""

    @cached_property
    def state(self) -> ConversationScopes:
        """Per-conversation and per-user state: `await ctx.state.conversation.update(fn)`, `ctx.state.user.get()`."""
        return ConversationScopes(self)

    @cached_property
    def live(self) -> LiveChannel:
        """Live updates to the envelope's tenant (Azure SignalR Service): `await ctx.live.send("ticket", {...})`
        reaches every signed-in live page of that tenant and no other (`functions.live`); best-effort."""
        from functions.live import LiveChannel

        return LiveChannel.for_context(self)


class SlackContext(Context):
    """A Slack envelope: typed payloads (`event`, `command`, `actions`, `view`, `suggestion`, `body`), `say()`,
    `respond()`, `client`."""

    @property
    def client(self) -> SlackWebClient:
        return self.clients.slack_for(self.envelope.app)

    @cached_property
    def body(self) -> Payload:
        """The payload typed by its kind: `SlashCommand`, `BlockActions`, `ViewSubmission`, `BlockSuggestion`,
        `Shortcut`, or for events the `event_callback` wrapper (`Raw`)."""
        from functions.models import BlockActions, BlockSuggestion, Raw, Shortcut, SlashCommand, ViewSubmission, parse

        payload = self.envelope.payload
        if self.envelope.kind is Kind.SLASH_COMMANDS:
            return parse(SlashCommand, payload)
        if self.envelope.kind is Kind.INTERACTIVE:
            kind = payload.get("type")
            models: dict[str, type[Payload]] = {
                "block_actions": BlockActions,
                "view_submission": ViewSubmission,
                "view_closed": ViewSubmission,
                "block_suggestion": BlockSuggestion,
                "shortcut": Shortcut,
                "message_action": Shortcut,
            }
            return parse(models.get(kind if isinstance(kind, str) else "", Raw), payload)
        return parse(Raw, payload)

    @cached_property
    def event(self) -> SlackEvent:
        """Events API: the inner `event` (empty for other kinds). Dict access works too: `ctx.event["channel"]`."""
        from functions.models import SlackEvent, parse

        raw = self.envelope.payload.get("event")
        parsed = parse(SlackEvent, raw if isinstance(raw, dict) else {})
        # a payload that does not fit keeps every field, untyped (the warning is logged by `parse`)
        return parsed if isinstance(parsed, SlackEvent) else SlackEvent.model_construct(**parsed.raw())

    @property
    def command(self) -> SlashCommand:
        from functions.models import SlashCommand

        body = self.body
        return body if isinstance(body, SlashCommand) else SlashCommand()

    @property
    def actions(self) -> list[Action]:
        from functions.models import BlockActions

        body = self.body
        return body.actions if isinstance(body, BlockActions) else []

    @property
    def action(self) -> Action | None:
        """The first action of a `block_actions` payload."""
        actions = self.actions
        return actions[0] if actions else None

    @property
    def view(self) -> View:
        from functions.models import BlockActions, BlockSuggestion, View, ViewSubmission

        body = self.body
        if isinstance(body, ViewSubmission):
            return body.view
        if isinstance(body, BlockActions | BlockSuggestion) and body.view is not None:
            return body.view
        return View()

    @property
    def suggestion(self) -> BlockSuggestion:
        """An external select's request for options (`block_suggestion`)."""
        from functions.models import BlockSuggestion

        body = self.body
        return body if isinstance(body, BlockSuggestion) else BlockSuggestion()

    @property
    def channel_id(self) -> str | None:
        payload = self.envelope.payload
        if self.envelope.kind is Kind.EVENTS_API:
            return self.event.channel
        if self.envelope.kind is Kind.SLASH_COMMANDS:
            value = payload.get("channel_id")
            return value if isinstance(value, str) else None
        channel = payload.get("channel")
        if isinstance(channel, dict) and isinstance(channel.get("id"), str):
            return str(channel["id"])
        container = payload.get("container")
        if isinstance(container, dict) and isinstance(container.get("channel_id"), str):
            return str(container["channel_id"])
        return None

    @property
    def user_id(self) -> str | None:
        payload = self.envelope.payload
        if self.envelope.kind is Kind.EVENTS_API:
            return self.event.user
        if self.envelope.kind is Kind.SLASH_COMMANDS:
            value = payload.get("user_id")
            return value if isinstance(value, str) else None
        user = payload.get("user")
        return str(user["id"]) if isinstance(user, dict) and isinstance(user.get("id"), str) else None

    def text(self, *, strip_mentions: bool = False) -> str:
        if self.envelope.kind is Kind.SLASH_COMMANDS:
            text = str(self.envelope.payload.get("text") or "")
        else:
            text = self.event.text or ""
        return _strip(text, "slack") if strip_mentions else text

    async def say(
        self,
        text: str | None = None,
        *,
        blocks: Sequence[Mapping[str, Any]] | None = None,
        thread: bool | str | None = None,
        channel: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """chat.postMessage in the envelope's channel; `thread=True` answers in the event's thread (or starts
        one on the event), `thread="<ts>"` in that thread."""
        target = channel or self.channel_id
        if not target:
            raise DeadLetterError("NoChannel", f"say(): the {self.envelope.kind} envelope names no channel")
        thread_ts: str | None = None
        if thread is True:
            thread_ts = self.event.thread_ts or self.event.ts
        elif isinstance(thread, str):
            thread_ts = thread
        return await self.client.post_message(target, text, blocks=blocks, thread_ts=thread_ts, **extra)

    async def respond(
        self,
        text: str | None = None,
        *,
        blocks: Sequence[Mapping[str, Any]] | None = None,
        response_type: str | None = None,
        replace_original: bool | None = None,
        delete_original: bool | None = None,
        **extra: Any,
    ) -> None:
        """POST to the payload's `response_url` (slash commands, actions, shortcuts, view submissions)."""
        url = self.envelope.payload.get("response_url")
        if not isinstance(url, str):
            urls = self.envelope.payload.get("response_urls")
            url = urls[0].get("response_url") if isinstance(urls, list) and urls and isinstance(urls[0], dict) else None
        if not isinstance(url, str):
            raise DeadLetterError("NoResponseUrl", f"respond(): the {self.envelope.kind} payload has no response_url")
        await self.client.respond(
            url,
            text,
            blocks=blocks,
            response_type=response_type,
            replace_original=replace_original,
            delete_original=delete_original,
            **extra,
        )


class TeamsContext(Context):
    """A Teams (or Direct Line) activity: typed `activity`, `send()`, `reply()`, `update()`, `typing()`,
    `send_card()`."""

    @cached_property
    def activity(self) -> Activity:
        """The Bot Framework activity, typed (dict access works too: `ctx.activity["text"]`)."""
        from functions.models import Activity, parse

        parsed = parse(Activity, self.envelope.payload)
        return parsed if isinstance(parsed, Activity) else Activity.model_construct(**parsed.raw())

    @property
    def conversation_id(self) -> str:
        conversation = self.envelope.payload.get("conversation")
        value = conversation.get("id") if isinstance(conversation, dict) else None
        if not isinstance(value, str):
            raise DeadLetterError("NoConversation", "the activity names no conversation")
        return value

    @property
    def service_url(self) -> str:
        value = self.envelope.payload.get("serviceUrl")
        if not isinstance(value, str):
            raise DeadLetterError("NoServiceUrl", "the activity names no serviceUrl")
        return value

    def text(self, *, strip_mentions: bool = False) -> str:
        text = str(self.envelope.payload.get("text") or "")
        return _strip(text, "teams") if strip_mentions else text

    async def reply(self, activity: str | Mapping[str, Any]) -> dict[str, Any]:
        """Answer the activity in its conversation (threaded where the channel threads)."""
        return await self.teams.reply(self.envelope.payload, activity)

    async def send(self, activity: str | Mapping[str, Any]) -> dict[str, Any]:
        """Send into the activity's conversation (not as a reply)."""
        return await self.teams.send(self.service_url, self.conversation_id, activity)

    async def update(self, activity_id: str, activity: str | Mapping[str, Any]) -> dict[str, Any]:
        return await self.teams.update(self.service_url, self.conversation_id, activity_id, activity)

    async def delete(self, activity_id: str) -> None:
        await self.teams.delete(self.service_url, self.conversation_id, activity_id)

    async def typing(self) -> None:
        await self.teams.typing(self.service_url, self.conversation_id)

    async def send_card(self, card: Mapping[str, Any], *, text: str | None = None) -> dict[str, Any]:
        """Send an Adaptive Card (the card's JSON) into the conversation."""
        activity: dict[str, Any] = {
            "type": "message",
            "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "content": dict(card)}],
        }
        if text:
            activity["text"] = text
        return await self.send(activity)


class ConversationScopes:
    """`ctx.state.conversation` and `ctx.state.user`: state kept for the envelope's conversation and user."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def _reference(self) -> Any:
        from functions.state.references import reference_for

        ref = reference_for(self._ctx.envelope)
        if ref is None:
            raise DeadLetterError("NoConversation", "this envelope names no conversation to keep state for")
        return ref

    @property
    def store(self) -> StateStore:
        return self._ctx.clients.state

    @property
    def conversation(self) -> ConversationState:
        from functions.state.helpers import ConversationState

        return ConversationState(self.store, self._reference())

    @property
    def user(self) -> UserState:
        from functions.state.helpers import UserState

        return UserState(self.store, self._reference())


def _strip(text: str, platform: str) -> str:
    from functions.models import strip_mentions

    return strip_mentions(text, platform)
