"""The Teams connections: one supervised slot per geo (shipped) or per draft slot, as `slack/pool.py` does.

Per slot (reported on the status board as `teams/<slot>`, or `teams/<bot>/<slot>` for one of several bots), a
loop: token → service negotiate → SignalR negotiate → websocket + handshake → `SocketReady` → serve; after any
loss it renegotiates from scratch (never SignalR's own reconnect). Between failed cycles it waits:

- the service's `Retry-After` on 429/503 when there is one, bounded by `TEAMS_MAX_RETRY_AFTER_SECONDS`;
- otherwise full jitter, uniform(0, min(1 s * 2^n, 15 s)) (shipped) or 0/2/10/30 s (draft);
- only the draft contract's 503 "Socket mode is not available." selects the slow fallback
  (`unavailable_retry`, 60 s, with `TEAMS_FALLBACK_ON_503`): the slot stays down, the worker runs on.

While serving it rotates make-before-break: at `expiresIn - 60 s` (shipped) or `0.8 x expiresIn` (draft)
it opens a new connection; only once that one is ready does the old one retire (after `overlap`, 5 s,
shipped; at once, draft), draining its in-flight deliveries. If the new one fails, the old one keeps
serving.

`stopping` is honoured in every phase: a negotiate or connect under way is abandoned at once (its socket
closed, its reader stopped), so SIGTERM never waits for 15 s + 15 s + 30 s of timeouts. Every connection's
task belongs to its slot's TaskGroup; nothing outlives `run()`.

Terminal: 401/403 from the service negotiate (`FatalConnectorError` naming the credential to check), and
a token that keeps failing `token_failures_before_fatal` times.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar, cast

import httpx
from websockets.exceptions import InvalidStatus

from shared.redact import describe_exception, redact_url
from shared.teams_auth import TokenError, TokenProvider
from worker.backoff import full_jitter, schedule
from worker.connector import FatalConnectorError
from worker.lifecycle import ConnectionStatus
from worker.metrics import Metrics
from worker.teams.connection import Admission, Deliver, EndReason, HubConnection, Timings
from worker.teams.negotiate import (
    NegotiateError,
    NegotiateRejected,
    ServiceGrant,
    ServiceUnavailable,
    connect_url,
    service_negotiate,
    signalr_negotiate,
)
from worker.teams.settings import TeamsSettings

log = logging.getLogger(__name__)

PLATFORM = "teams"
DRAFT_DELAYS = (0.0, 2.0, 10.0, 30.0)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ConnectorTimings:
    """Supervisor timing constants (production defaults); the connection's own are in `Timings`."""

    connection: Timings = field(default_factory=Timings)
    rotate_before_expiry: float = 60.0
    """Shipped: open the next connection at expiresIn - this."""
    draft_rotate_fraction: float = 0.8
    overlap: float = 5.0
    """Shipped: how long the old connection keeps serving once the new one is ready."""
    backoff_base: float = 1.0
    backoff_cap: float = 15.0
    draft_delays: tuple[float, ...] = DRAFT_DELAYS
    unavailable_retry: float = 60.0
    """Draft: how often a slot answered 503 "not available" asks again (unless Retry-After says otherwise)."""
    rotation_retry: float = 5.0
    token_failures_before_fatal: int = 5


class TeamsPool:
    def __init__(
        self,
        settings: TeamsSettings,
        metrics: Metrics,
        tokens: TokenProvider,
        http: httpx.AsyncClient,
        deliver: Deliver,
        *,
        timings: ConnectorTimings,
        credential_hint: str,
        admission: Admission | None = None,
        backoff: Callable[[], Iterator[float]] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.timings = timings
        self._tokens = tokens
        self._http = http
        self._deliver = deliver
        self._admission = admission
        self._credential_hint = credential_hint
        self._backoff_factory = backoff or self._default_backoff
        self._generation = 0
        self.connections: dict[str, HubConnection] = {}
        """The connection currently serving each slot."""
        self.rotations = 0

    async def run(self, stopping: asyncio.Event) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                for slot in self.settings.slot_names:
                    tg.create_task(self._supervise(slot, stopping), name=f"teams-{self.settings.label(slot)}")
        except* FatalConnectorError as group:
            raise _first(group) from None
        finally:
            for slot in self.settings.slot_names:
                self._status(slot, ConnectionStatus.ENDED, "stopped")

    # --- one slot --------------------------------------------------------------------------------------

    def _default_backoff(self) -> Iterator[float]:
        t = self.timings
        if self.settings.contract == "draft":
            return schedule(t.draft_delays)
        return full_jitter(t.backoff_base, t.backoff_cap)

    def _status(self, slot: str, status: ConnectionStatus, detail: str = "") -> None:
        self.metrics.status.set(PLATFORM, self.settings.label(slot), status, detail)

    def _retry_delay(self, retry_after: float | None, delays: Iterator[float]) -> float:
        if retry_after is not None:
            return min(retry_after, self.settings.max_retry_after)
        return next(delays)

    async def _supervise(self, slot: str, stopping: asyncio.Event) -> None:
        delays = self._backoff_factory()
        token_failures = 0
        async with asyncio.TaskGroup() as tg:  # owns every connection of this slot
            while not stopping.is_set():
                self._status(slot, ConnectionStatus.CONNECTING)
                delay: float
                try:
                    connected = await _unless(stopping, self._connect(slot, tg))
                    if connected is None:
                        break
                except NegotiateRejected as exc:
                    self._status(slot, ConnectionStatus.FAILED_TO_CONNECT, "credentials refused")
                    self._tokens.invalidate()
                    raise FatalConnectorError(f"Teams slot {slot}: {exc}") from exc
                except TokenError as exc:
                    token_failures += 1
                    self._status(slot, ConnectionStatus.EXPIRED_TOKEN, exc.credential)
                    if token_failures >= self.timings.token_failures_before_fatal:
                        raise FatalConnectorError(str(exc)) from exc
                    delay = next(delays)
                    log.warning("Teams slot %s: %s; retrying in %.1f s", self.settings.label(slot), exc, delay)
                except ServiceUnavailable as exc:
                    if self.settings.contract == "draft" and self.settings.fallback_on_503:
                        delay = max(exc.retry_after or 0.0, self.timings.unavailable_retry)
                        delay = min(delay, max(self.settings.max_retry_after, self.timings.unavailable_retry))
                        self._status(slot, ConnectionStatus.FAILED_TO_CONNECT, "socket mode not available (503)")
                        log.warning("Teams slot %s: %s; asking again in %.1f s", self.settings.label(slot), exc, delay)
                    elif self.settings.contract == "draft":
                        self._status(slot, ConnectionStatus.FAILED_TO_CONNECT, "socket mode not available (503)")
                        raise FatalConnectorError(f"Teams slot {slot}: {exc}") from exc
                    else:
                        delay = self._retry_delay(exc.retry_after, delays)
                        self._status(slot, ConnectionStatus.FAILED_TO_CONNECT, str(exc))
                        log.warning("Teams slot %s: %s; retrying in %.1f s", self.settings.label(slot), exc, delay)
                except Exception as exc:  # negotiate, DNS, TLS, refused URLs, handshake, no SocketReady
                    retry_after = exc.retry_after if isinstance(exc, NegotiateError) else None
                    delay = self._retry_delay(retry_after, delays)
                    self._status(slot, ConnectionStatus.FAILED_TO_CONNECT, describe_exception(exc))
                    log.warning(
                        "Teams slot %s: connect failed (%s); retrying in %.1f s",
                        self.settings.label(slot),
                        describe_exception(exc),
                        delay,
                    )
                else:
                    token_failures = 0
                    delays = self._backoff_factory()
                    conn, run_task, grant = connected
                    reason = await self._serve(slot, conn, run_task, grant, stopping, tg)
                    if stopping.is_set():
                        break
                    if reason.kind == "closed" and not reason.allow_reconnect:
                        delay = next(delays)
                        log.warning(
                            "Teams slot %s: server closed (%s); new cycle in %.1f s",
                            self.settings.label(slot),
                            reason,
                            delay,
                        )
                    else:
                        delay = 0.0
                        log.info(
                            "Teams slot %s: connection ended (%s); renegotiating", self.settings.label(slot), reason
                        )
                    self._status(slot, ConnectionStatus.CONNECTING, str(reason))
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stopping.wait(), delay)

    async def _connect(
        self, slot: str, tg: asyncio.TaskGroup
    ) -> tuple[HubConnection, asyncio.Task[EndReason], ServiceGrant]:
        """A new ready connection for `slot`, serving in a task of `tg`, or an exception. If this is cancelled
        (the worker stops), the connection is stopped: no reader is left running."""
        t = self.timings.connection
        token = await self._tokens.token()
        url = connect_url(self.settings, slot)
        try:
            grant = await service_negotiate(self._http, url, token, t.negotiate_timeout, self._credential_hint)
        except NegotiateRejected:
            self._tokens.invalidate()
            raise
        ws_url = await signalr_negotiate(self._http, grant, t.negotiate_timeout)
        self._generation += 1
        name = self.settings.label(f"{slot}#{self._generation}")
        conn = HubConnection(
            ws_url,
            self._deliver,
            name=name,
            timings=t,
            max_in_flight=self.settings.max_in_flight,
            require_ready=self.settings.contract == "shipped",
            on_invalid=lambda reason: self.metrics.invalid(PLATFORM, reason),
            admission=self._admission,
            context={"geo": slot if self.settings.contract == "shipped" else "", "slot": slot},
        )
        try:
            await conn.open()
        except InvalidStatus as exc:
            raise NegotiateError(f"websocket {redact_url(ws_url)} refused: {exc.response.status_code}") from None
        run_task = tg.create_task(conn.run(), name=f"teams-conn-{name}")
        try:
            ready = await _unless_done(run_task, conn.ready.wait(), within=t.ready_timeout)
        except BaseException:
            conn.stop("connect abandoned")
            raise
        if not ready:
            conn.stop("no SocketReady")
            reason = await _result(run_task)
            raise NegotiateError(f"SocketReady not received ({reason or 'timeout'})")
        log.info(
            "Teams slot %s: connection %s ready (connection id %s, %s, expires in %.0f s)",
            self.settings.label(slot),
            name,
            conn.connection_id,
            redact_url(ws_url),
            grant.expires_in,
        )
        return conn, run_task, grant

    def _rotation_delay(self, grant: ServiceGrant) -> float:
        t = self.timings
        if self.settings.contract == "draft":
            return max(1.0, t.draft_rotate_fraction * grant.expires_in)
        return max(1.0, grant.expires_in - t.rotate_before_expiry)

    async def _serve(
        self,
        slot: str,
        conn: HubConnection,
        run_task: asyncio.Task[EndReason],
        grant: ServiceGrant,
        stopping: asyncio.Event,
        tg: asyncio.TaskGroup,
    ) -> EndReason:
        """Serve one slot across rotations; returns when its current connection ended unreplaced."""
        loop = asyncio.get_running_loop()
        rotate_at = loop.time() + self._rotation_delay(grant)
        retiring: list[asyncio.Task[None]] = []
        try:
            while True:
                self.connections[slot] = conn
                self._status(slot, ConnectionStatus.ONLINE, conn.connection_id or conn.name)
                timeout = max(0.0, rotate_at - loop.time())
                await _wait_any(stopping, run_task, timeout)
                if stopping.is_set():
                    conn.stop("worker stopping")
                    return await _result(run_task) or EndReason("stopped")
                if run_task.done():
                    return await _result(run_task) or EndReason("stopped")
                # make before break
                try:
                    rotated = await _unless(stopping, self._connect(slot, tg))
                except NegotiateRejected:
                    raise
                except Exception as exc:  # the old connection keeps serving
                    log.warning(
                        "Teams slot %s: rotation failed (%s); the current connection keeps serving",
                        self.settings.label(slot),
                        describe_exception(exc),
                    )
                    rotate_at = loop.time() + self.timings.rotation_retry
                    continue
                if rotated is None:
                    continue  # stopping: the loop stops the current connection
                self.rotations += 1
                new_conn, new_task, new_grant = rotated
                log.info("Teams slot %s: rotated %s -> %s", self.settings.label(slot), conn.name, new_conn.name)
                retiring.append(tg.create_task(self._retire(conn, run_task), name=f"teams-retire-{conn.name}"))
                conn, run_task, grant = new_conn, new_task, new_grant
                rotate_at = loop.time() + self._rotation_delay(grant)
        finally:
            if not run_task.done():
                conn.stop("supervisor leaving")
                await _result(run_task)
            if retiring:
                await asyncio.gather(*retiring, return_exceptions=True)
            self.connections.pop(slot, None)

    async def _retire(self, conn: HubConnection, run_task: asyncio.Task[EndReason]) -> None:
        overlap = self.timings.overlap if self.settings.contract == "shipped" else 0.0
        try:
            if overlap > 0:
                await asyncio.wait({run_task}, timeout=overlap)
        finally:
            conn.stop("rotated out")
            reason = await _result(run_task)
            log.info("Teams connection %s retired (%s)", conn.name, reason)


async def _unless(stopping: asyncio.Event, work: Awaitable[T]) -> T | None:
    """`await work`, or None as soon as `stopping` is set (the work is then cancelled and awaited)."""
    if stopping.is_set():
        if asyncio.iscoroutine(work):
            work.close()
        return None
    task: asyncio.Future[T] = asyncio.ensure_future(work)
    stop: asyncio.Future[object] = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait([cast("asyncio.Future[object]", task), stop], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    if task.cancelled():
        return None
    return task.result()


async def _unless_done(run_task: asyncio.Task[EndReason], work: Awaitable[object], within: float) -> bool:
    """True when `work` completed within `within` seconds, before `run_task` ended."""
    waiter: asyncio.Future[object] = asyncio.ensure_future(work)
    try:
        await asyncio.wait(
            [waiter, cast("asyncio.Future[object]", run_task)], timeout=within, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        if not waiter.done():
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
    return waiter.done() and not waiter.cancelled()


async def _wait_any(stopping: asyncio.Event, run_task: asyncio.Task[EndReason], within: float) -> None:
    stop: asyncio.Future[object] = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait(
            [cast("asyncio.Future[object]", run_task), stop], timeout=within, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        stop.cancel()


async def _result(task: asyncio.Task[EndReason]) -> EndReason | None:
    try:
        return await asyncio.shield(task) if not task.done() else task.result()
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
        return None
    except Exception as exc:
        return EndReason("error", describe_exception(exc))


def _first(group: BaseExceptionGroup[FatalConnectorError]) -> FatalConnectorError:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first(exc)
        return exc
    raise AssertionError("empty exception group")
