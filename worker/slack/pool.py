"""The pool of Slack Socket Mode connections: N slots, each keeping one socket online.

Per slot (reported on the status board as `slack/<slot>`, or `slack/<app>/<slot>` for one of several apps):

- open: `apps.connections.open`, connect, wait for `hello` (only then is the socket usable);
- failures back off with full jitter; `ratelimited`/429 waits at least `Retry-After`;
  final auth errors (`invalid_auth`, `token_revoked`, ...) raise `FatalConnectorError` at once;
- `warning` / `refresh_requested`: make-before-break: the old socket keeps serving until the
  replacement said hello, then it drains (finishes its in-flight acks) and closes;
- `too_many_websockets`: the slot closes its socket and leaves the pool (the pool shrinks instead of
  feeding a reconnect storm); the last slot backs off and retries instead;
- `link_disabled`: Socket Mode was switched off for the app: `FatalConnectorError`;
- a socket that closes or goes silent (half-open) is replaced after a backoff delay.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Iterator

from shared.redact import redact_url
from worker.backoff import full_jitter
from worker.connector import FatalConnectorError
from worker.handoff import Handoff
from worker.lifecycle import ConnectionStatus
from worker.metrics import Metrics
from worker.slack.api import ConnectionOpener, SlackAuthError, SlackOpenError, SlackOpenRateLimited
from worker.slack.connection import SlackConnection
from worker.slack.protocol import LINK_DISABLED, ROTATION_REASONS, TOO_MANY_WEBSOCKETS
from worker.slack.settings import SlackSettings

log = logging.getLogger(__name__)

PLATFORM = "slack"


class SlackPool:
    def __init__(self, settings: SlackSettings, handoff: Handoff, metrics: Metrics, opener: ConnectionOpener) -> None:
        self._settings = settings
        self._handoff = handoff
        self._metrics = metrics
        self._opener = opener
        self._ids = itertools.count(1)
        self.size = settings.connections
        """Slots currently wanted (shrinks on too_many_websockets)."""
        self.connections: dict[str, SlackConnection] = {}
        """The live (serving) connection of each slot."""
        self.opened = 0

    async def run(self, stopping: asyncio.Event) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                for slot in range(self._settings.connections):
                    tg.create_task(
                        self._slot(str(slot), stopping), name=f"slack-slot-{self._settings.label(str(slot))}"
                    )
        except* FatalConnectorError as group:
            raise _first_fatal(group) from None

    # --- one slot --------------------------------------------------------------------------------

    async def _slot(self, slot: str, stopping: asyncio.Event) -> None:
        backoff = self._backoff()
        live: SlackConnection | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                while not stopping.is_set():
                    conn = await self._establish(tg, slot, backoff, stopping)
                    if conn is None:
                        break
                    usable = conn.ready.is_set() and not conn.disconnect_requested.is_set()
                    if live is not None and live is not conn and usable:
                        log.info("slack slot %s: %s online, retiring %s", self._settings.label(slot), conn.id, live.id)
                        live.drain()
                    live = conn
                    self.connections[slot] = conn
                    if usable:
                        backoff = self._backoff()
                        hello = conn.hello
                        detail = f"connection {conn.id}"
                        if hello is not None:
                            detail += f" app={hello.app_id} num_connections={hello.num_connections}"
                        self._status(slot, ConnectionStatus.ONLINE, detail)
                    await _wait_any(conn.disconnect_requested, conn.ended, stopping)
                    if stopping.is_set():
                        break
                    reason = conn.disconnect_reason
                    if reason in ROTATION_REASONS:
                        continue  # establish the replacement while `live` keeps serving
                    if reason == LINK_DISABLED:
                        conn.drain()
                        self._status(slot, ConnectionStatus.ENDED, "link_disabled")
                        raise FatalConnectorError(
                            "Slack closed the socket with link_disabled: Socket Mode is turned off for this app; "
                            "enable it under the app's Socket Mode settings and restart the worker"
                        )
                    if reason == TOO_MANY_WEBSOCKETS:
                        conn.drain()
                        live = None
                        if self.size > 1:
                            self.size -= 1
                            log.warning(
                                "slack slot %s: too_many_websockets (Slack allows 10 per app, other workers hold "
                                "some): shrinking the pool to %d connections",
                                self._settings.label(slot),
                                self.size,
                            )
                            self.connections.pop(slot, None)
                            self._metrics.status.remove(PLATFORM, self._settings.label(slot))
                            return
                        self._status(slot, ConnectionStatus.FAILED_TO_CONNECT, "too_many_websockets")
                        await _sleep_unless(max(next(backoff), self._settings.backoff_cap), stopping)
                        continue
                    # the socket ended (closed by the server, dropped, half-open) or an unknown disconnect
                    if not conn.ended.is_set():
                        log.info(
                            "slack slot %s: disconnect reason=%s: replacing %s",
                            self._settings.label(slot),
                            reason,
                            conn.id,
                        )
                        continue
                    live = None
                    self.connections.pop(slot, None)
                    self._status(slot, ConnectionStatus.CONNECTING, f"replacing {conn.id}: {conn.end_reason}")
                    await _sleep_unless(next(backoff), stopping)
                if live is not None:
                    live.drain()
        finally:
            self.connections.pop(slot, None)
            if stopping.is_set() and self.size > 0:
                self._status(slot, ConnectionStatus.ENDED, "stopped")

    async def _establish(
        self, tg: asyncio.TaskGroup, slot: str, backoff: Iterator[float], stopping: asyncio.Event
    ) -> SlackConnection | None:
        """Open a socket and wait for its hello (or its disconnect frame). None when stopping."""
        s = self._settings
        while not stopping.is_set():
            if slot not in self.connections:
                self._status(slot, ConnectionStatus.CONNECTING)
            try:
                url = await self._opener.open()
            except SlackAuthError as exc:
                self._status(slot, ConnectionStatus.EXPIRED_TOKEN, exc.error)
                raise FatalConnectorError(
                    f"Slack refused the app-level token (SLACK_APP_TOKEN): {exc.error}. Check the token "
                    "(xapp-..., scope connections:write) and that the app is installed; not retrying."
                ) from exc
            except SlackOpenRateLimited as exc:
                delay = max(min(exc.retry_after, s.max_retry_after), next(backoff))
                log.warning(
                    "slack slot %s: apps.connections.open rate limited, retrying in %.1f s",
                    self._settings.label(slot),
                    delay,
                )
                self._status_if_not_live(slot, ConnectionStatus.FAILED_TO_CONNECT, "ratelimited")
            except SlackOpenError as exc:
                delay = next(backoff)
                log.warning("slack slot %s: %s; retrying in %.1f s", self._settings.label(slot), exc, delay)
                self._status_if_not_live(slot, ConnectionStatus.FAILED_TO_CONNECT, exc.error)
            else:
                self.opened += 1
                conn = SlackConnection(
                    self._settings.label(f"{slot}.{next(self._ids)}"),
                    url,
                    settings=s,
                    handoff=self._handoff,
                    metrics=self._metrics,
                    expected_connections=self.size,
                    replicas=s.replicas,
                )
                log.info("slack slot %s: connecting %s to %s", self._settings.label(slot), conn.id, redact_url(url))
                task = tg.create_task(conn.run(), name=f"slack-conn-{conn.id}")
                try:
                    async with asyncio.timeout(s.hello_timeout + s.open_timeout):
                        await _wait_any(conn.ready, conn.disconnect_requested, conn.ended, stopping)
                except TimeoutError:
                    conn.abort("no hello")
                if stopping.is_set() and not conn.ready.is_set():
                    task.cancel()
                    return None
                if conn.disconnect_requested.is_set() or (conn.ready.is_set() and not conn.ended.is_set()):
                    return conn
                conn.abort(conn.end_reason or "ended before hello")
                delay = next(backoff)
                log.warning(
                    "slack slot %s: %s failed before hello (%s); retrying in %.1f s",
                    self._settings.label(slot),
                    conn.id,
                    conn.end_reason or "no hello",
                    delay,
                )
                self._status_if_not_live(slot, ConnectionStatus.FAILED_TO_CONNECT, conn.end_reason or "no hello")
            await _sleep_unless(delay, stopping)
        return None

    # --- helpers ---------------------------------------------------------------------------------

    def _backoff(self) -> Iterator[float]:
        return full_jitter(self._settings.backoff_base, self._settings.backoff_cap)

    def _status(self, slot: str, status: ConnectionStatus, detail: str = "") -> None:
        self._metrics.status.set(PLATFORM, self._settings.label(slot), status, detail)

    def _status_if_not_live(self, slot: str, status: ConnectionStatus, detail: str) -> None:
        live = self.connections.get(slot)
        if live is None or live.ended.is_set():
            self._status(slot, status, detail)


def _first_fatal(group: BaseExceptionGroup[FatalConnectorError]) -> FatalConnectorError:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_fatal(exc)
        return exc
    raise AssertionError("empty exception group")


async def _wait_any(*events: asyncio.Event) -> None:
    if any(e.is_set() for e in events):
        return
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


async def _sleep_unless(delay: float, stopping: asyncio.Event) -> None:
    """Sleep `delay` seconds, or less if `stopping` is set meanwhile."""
    if delay <= 0 or stopping.is_set():
        return
    try:
        async with asyncio.timeout(delay):
            await stopping.wait()
    except TimeoutError:
        pass
