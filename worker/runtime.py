"""The worker process: one queue backend, one `Handoff`, the configured connectors, the HTTP endpoints.

    settings ──► backend (local | servicebus) ──► EnvelopePublisher ──► Handoff ◄── connectors
                    │                                                     │
                    └──► ReplyInbox (this process's reply session) ───────┤  answers awaited by the handoff
                                                                          │
                                             metrics / StatusBoard ◄──────┘──► /healthz /readyz /metrics

The reply inbox (`worker.replies`) exists whenever the backend takes replies (local, Service Bus): its
session is accepted at start (a missing reply queue or role stops the worker with that message, as a
missing queue does) and its receive task belongs to the run's TaskGroup; it stops after the connectors
drained (their in-flight hand-offs may still be waiting for answers), releasing the session.

`Worker.run(stopping)` holds everything until `stopping` is set (SIGTERM, Ctrl-C), then drains: the
connectors stop reading and finish their in-flight publishes and acks within
`RELAYBUS_SHUTDOWN_TIMEOUT_SECONDS`; envelopes the platform cannot redeliver that are still in the
handoff's retry buffer get what is left of that time to become durable; then the backend flushes and
closes (also bounded). Anything not acked by then is redelivered by the platform.

Every background task (connectors, the retry buffer, the reply inbox, the shutdown clock) belongs to the
run's TaskGroup.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from shared.errors import PublishError
from shared.routes import REPLIES
from worker.connector import Connector, FatalConnectorError
from worker.dedupe import DedupeWindow
from worker.handoff import Breaker, Handoff
from worker.health import HealthServer
from worker.metrics import Metrics
from worker.publish import EnvelopePublisher, QueueBackend
from worker.replies import ReplyInbox, process_session_id, reply_source
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)


def build_backend(settings: WorkerSettings) -> QueueBackend:
    """The queue backend the settings ask for (imports only that backend's dependencies)."""
    if settings.queue_backend == "servicebus":
        from worker.publish.servicebus import ServiceBusBackend

        assert settings.servicebus is not None  # guaranteed by WorkerSettings validation
        return ServiceBusBackend.from_settings(settings.servicebus, queues=queues_in_use(settings))
    from localqueue import LocalQueueBackend

    return LocalQueueBackend(
        settings.local_queue_path,
        queue_settings={**settings.queue_names, REPLIES.setting: settings.reply_queue},
        close_timeout=settings.shutdown_timeout_seconds,
        commit_interval=settings.local_queue_commit_interval_ms / 1000,
    )


def build_inbox(settings: WorkerSettings, backend: QueueBackend, metrics: Metrics) -> ReplyInbox | None:
    """This process's reply inbox, when the backend takes replies (None for an in-memory backend)."""
    source = reply_source(backend, settings.reply_queue, process_session_id())
    return ReplyInbox(source, metrics) if source is not None else None


def queues_in_use(settings: WorkerSettings) -> list[str]:
    """The queue names the enabled platforms publish to (overrides applied), in route-table order."""
    from shared.routes import ROUTES

    return [
        settings.queue_names.get(route.setting, route.queue)
        for route in ROUTES
        if route.platform.value in settings.platforms
    ]


def build_connectors(settings: WorkerSettings, handoff: Handoff, metrics: Metrics) -> list[Connector]:
    """One connector per Slack app and per Teams bot (the single-app settings: one each), and Direct Line."""
    connectors: list[Connector] = []
    if settings.all_slack:
        from worker.slack.connector import SlackConnector

        connectors.extend(SlackConnector(app, handoff, metrics) for app in settings.all_slack)
    if settings.all_teams:
        from worker.teams.connector import TeamsConnector

        connectors.extend(TeamsConnector(bot, handoff, metrics) for bot in settings.all_teams)
    if settings.directline is not None:
        from worker.directline.connector import DirectLineConnector

        connectors.append(DirectLineConnector(settings.directline, handoff, metrics))
    return connectors


def connector_name(connector: Connector) -> str:
    """`slack`, or `slack/<app>` for one of several apps (the key of `RunResult.fatal`)."""
    app = getattr(getattr(connector, "settings", None), "app", None)
    return connector.platform if app is None else f"{connector.platform}/{app}"


@dataclass
class RunResult:
    fatal: dict[str, str] = field(default_factory=dict)
    """Connectors that stopped on a final error (`slack`, `teams`, or `slack/<app>` …), with the message."""

    @property
    def ok(self) -> bool:
        return not self.fatal


class Worker:
    def __init__(
        self,
        settings: WorkerSettings,
        *,
        backend: QueueBackend | None = None,
        connectors: Sequence[Connector] | None = None,
        metrics: Metrics | None = None,
        serve_http: bool = True,
        replies: ReplyInbox | bool | None = True,
    ) -> None:
        """`replies`: True builds the reply inbox the backend supports; an inbox uses that one; None or False
        runs without synchronous answers."""
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.backend = backend if backend is not None else build_backend(settings)
        self.publisher = EnvelopePublisher(self.backend, queue_settings=settings.queue_names)
        self.replies: ReplyInbox | None
        if replies is True:
            self.replies = build_inbox(settings, self.backend, self.metrics)
        else:
            self.replies = replies if isinstance(replies, ReplyInbox) else None
        self.handoff = Handoff(
            self.publisher,
            DedupeWindow(ttl=settings.dedupe_ttl_seconds),
            self.metrics,
            breaker=Breaker(threshold=settings.breaker_threshold, max_pause=settings.breaker_max_pause),
            retry_buffer=settings.publish_retry_buffer,
            replies=self.replies,
        )
        self.connectors = (
            list(connectors) if connectors is not None else build_connectors(settings, self.handoff, self.metrics)
        )
        self._stopped_at: float | None = None
        self.health = (
            HealthServer(self.metrics, settings.platforms, settings.http_host, settings.http_port)
            if serve_http
            else None
        )

    async def run(self, stopping: asyncio.Event) -> RunResult:
        result = RunResult()
        opening = getattr(self.backend, "open", None)
        if opening is not None:
            # A missing queue, a wrong namespace or a missing role shows now, not at the first envelope.
            try:
                await opening()
            except PublishError as exc:
                result.fatal["queue"] = f"the queue backend could not be opened: {exc}"
                log.error("%s", result.fatal["queue"])
                await self.publisher.close()
                return result
        if self.replies is not None:
            try:
                await self.replies.open()
            except PublishError as exc:
                result.fatal["queue"] = f"the reply queue {self.settings.reply_queue!r} could not be opened: {exc}"
                log.error("%s", result.fatal["queue"])
                await self.publisher.close()
                return result
        if self.health is not None:
            try:
                await self.health.start()
            except BaseException:
                if self.replies is not None:
                    await self.replies.close()
                await self.publisher.close()
                raise
            log.info(
                "health and metrics on http://%s:%s (/healthz /readyz /metrics)",
                self.settings.http_host,
                self.health.port,
            )
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.TaskGroup() as group:
                retry = group.create_task(self.handoff.retry_kept(), name="handoff-retry-buffer")
                inbox = group.create_task(self.replies.run(), name="reply-inbox") if self.replies else None
                tasks = [group.create_task(self._run_one(c, stopping, result)) for c in self.connectors]
                if tasks:
                    group.create_task(self._enforce_shutdown_timeout(stopping, tasks))
                    group.create_task(self._stop_when_all_failed(tasks, stopping))
                    await asyncio.wait(tasks)
                else:
                    await stopping.wait()
                retry.cancel()
                if inbox is not None:
                    inbox.cancel()  # the connectors drained: no hand-off waits for an answer any more
            left = self.settings.shutdown_timeout_seconds - (loop.time() - self._stop_started(loop))
            await self.handoff.flush(max(1.0, left))
        finally:
            if self.health is not None:
                self.health.stopping = True
            if self.replies is not None:
                await self.replies.close()  # before the backend: the session is released through it
            await self.publisher.close()
            if self.health is not None:
                await self.health.stop()
        return result

    async def _run_one(self, connector: Connector, stopping: asyncio.Event, result: RunResult) -> None:
        name = connector_name(connector)
        try:
            await connector.run(stopping)
        except FatalConnectorError as exc:
            result.fatal[name] = str(exc)
            log.error("%s stopped: %s", name, exc)
        except asyncio.CancelledError:
            log.warning("%s did not drain within %.0f s: cancelled", name, self.settings.shutdown_timeout_seconds)

    def _stop_started(self, loop: asyncio.AbstractEventLoop) -> float:
        return self._stopped_at if self._stopped_at is not None else loop.time()

    async def _enforce_shutdown_timeout(self, stopping: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
        await stopping.wait()
        self._stopped_at = asyncio.get_running_loop().time()
        _done, pending = await asyncio.wait(tasks, timeout=self.settings.shutdown_timeout_seconds)
        for task in pending:
            task.cancel()

    async def _stop_when_all_failed(self, tasks: list[asyncio.Task[None]], stopping: asyncio.Event) -> None:
        await asyncio.gather(*tasks, return_exceptions=True)
        stopping.set()
