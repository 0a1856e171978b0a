"""What a handler gets: `Context` (the envelope, the settings, a logger with its ids, reply clients).

Reply clients are created on first use, one per process and event loop (`ReplyClients`), so importing
the function app stays cheap and every invocation of a process shares one HTTP connection pool.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from functions.settings import FunctionSettings
from shared.envelope import Envelope

if TYPE_CHECKING:
    from functions.slack_api import SlackWebClient
    from functions.teams_api import BotConnectorClient


class ReplyClients:
    """Reply clients shared by every invocation in this process (recreated if the event loop changes)."""

    def __init__(self, settings: FunctionSettings) -> None:
        self.settings = settings
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slack: SlackWebClient | None = None
        self._teams: BotConnectorClient | None = None

    def _check_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop = loop
            self._slack = None
            self._teams = None

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

    async def aclose(self) -> None:
        if self._slack is not None:
            await self._slack.aclose()
            self._slack = None
        if self._teams is not None:
            await self._teams.aclose()
            self._teams = None


@dataclass
class Context:
    """What a handler gets: the envelope, the settings, a logger with the envelope's ids, reply clients."""

    envelope: Envelope
    settings: FunctionSettings
    clients: ReplyClients
    message_id: str | None = None
    delivery_count: int = 1
    log: logging.LoggerAdapter[logging.Logger] = field(init=False)

    def __post_init__(self) -> None:
        self.log = logging.LoggerAdapter(
            logging.getLogger("handlers"),
            {"dedupe_key": self.envelope.dedupe_key, "message_id": self.message_id},
        )

    @property
    def payload(self) -> dict[str, Any]:
        """The platform payload as received (Slack `payload`, Bot Framework activity)."""
        return self.envelope.payload

    @property
    def event(self) -> dict[str, Any]:
        """Slack Events API: the inner `event` object (empty for other kinds)."""
        event = self.envelope.payload.get("event")
        return event if isinstance(event, dict) else {}

    @property
    def activity(self) -> dict[str, Any]:
        """Teams: the Bot Framework activity."""
        return self.envelope.payload

    @property
    def slack(self) -> SlackWebClient:
        return self.clients.slack

    @property
    def teams(self) -> BotConnectorClient:
        return self.clients.teams
