"""`SlackConnector`: the worker's Slack Socket Mode connector (implements `worker.connector.Connector`).

    connector = SlackConnector(settings.slack, handoff, metrics)
    await connector.run(stopping)   # until `stopping` is set; raises FatalConnectorError on final errors

It owns the `apps.connections.open` HTTP client and the connection pool (`worker.slack.pool`).
"""

from __future__ import annotations

import asyncio
import logging

import httpx

from worker.handoff import Handoff
from worker.metrics import Metrics
from worker.slack.api import ConnectionOpener
from worker.slack.pool import SlackPool
from worker.slack.settings import SlackSettings

log = logging.getLogger(__name__)


class SlackConnector:
    platform: str = "slack"

    def __init__(
        self,
        settings: SlackSettings,
        handoff: Handoff,
        metrics: Metrics,
        *,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.settings = settings
        self._handoff = handoff
        self._metrics = metrics
        self._http_client = http_client
        self.pool: SlackPool | None = None

    async def run(self, stopping: asyncio.Event) -> None:
        s = self.settings
        opener = ConnectionOpener(
            s.api_url, s.app_token.get_secret_value(), timeout=s.open_timeout, client=self._http_client
        )
        self.pool = SlackPool(s, self._handoff, self._metrics, opener)
        log.info(
            "slack connector starting%s: %d connections to %s",
            f" app={s.app}" if s.app else "",
            s.connections,
            s.api_url,
        )
        try:
            await self.pool.run(stopping)
        finally:
            await opener.aclose()
            log.info("slack connector stopped%s", f" app={s.app}" if s.app else "")
