"""The Teams connector: one supervisor per slot (a geo, or a draft slot), all sharing one `Handoff`.

Each slot's supervisor loops: token → service negotiate → SignalR negotiate → websocket + handshake →
`SocketReady` → serve, and renegotiates from scratch after any loss (never SignalR's own reconnect),
waiting full jitter ≤ 15 s (shipped) or 0/2/10/30 s (draft) between failed cycles. While serving it
rotates make-before-break: at `expiresIn - 60 s` (shipped) or `0.8 x expiresIn` (draft) it opens a new
connection; only once that one is ready does the old one retire (after `overlap`, 5 s, shipped; at
once, draft), draining its in-flight deliveries. If the new one fails, the old one keeps serving.

Delivery (`_deliver`): parse the envelope (bad → `metrics.invalid("teams", reason)`, 400),
`protocolVersion` > 1 → 400 without publishing, else `Handoff.hand_off()` with the keys
(envelopeId, conversation.id/activity.id); a completion with status 200 only when the outcome says
ack, 500 otherwise, so the service redelivers. Invokes are answered 200 with an empty body.

Terminal: 401/403 from the service negotiate (`FatalConnectorError` naming the credential to check).
503 is "unavailable": the slot stays down and retries every `unavailable_retry` seconds (or the
service's Retry-After), while the rest of the worker keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
from websockets.exceptions import InvalidStatus, WebSocketException

from shared.errors import InvalidEnvelopeError
from shared.teams_auth import CredentialTokenProvider, StaticTokenProvider, TokenError, TokenProvider, credential_for
from worker.backoff import full_jitter, schedule
from worker.connector import FatalConnectorError
from worker.handoff import Handoff
from worker.lifecycle import ConnectionStatus
from worker.metrics import Metrics
from worker.teams import signalr
from worker.teams.connection import EndReason, HubConnection, Timings, epoch_ms
from worker.teams.negotiate import (
    NegotiateError,
    NegotiateRejected,
    ServiceGrant,
    ServiceUnavailable,
    connect_url,
    redact,
    service_negotiate,
    signalr_negotiate,
)
from worker.teams.protocol import (
    STATUS_BAD_REQUEST,
    STATUS_FAILED,
    STATUS_OK,
    SUPPORTED_PROTOCOL_VERSION,
    completion_result,
    parse_delivery,
    peek_envelope_id,
)
from worker.teams.settings import TeamsSettings

log = logging.getLogger(__name__)

PLATFORM = "teams"
DRAFT_DELAYS = (0.0, 2.0, 10.0, 30.0)


@dataclass(frozen=True, slots=True)
class ConnectorTimings:
    """Supervisor timing constants (production defaults); the connection's own are in `connection`."""

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
    """How often a slot answered 503 asks again (unless Retry-After says otherwise)."""
    rotation_retry: float = 5.0
    token_failures_before_fatal: int = 5


class TeamsConnector:
    """Implements `worker.connector.Connector` for Teams socket mode (both contracts)."""

    platform = PLATFORM

    def __init__(
        self,
        settings: TeamsSettings,
        handoff: Handoff,
        metrics: Metrics,
        token_provider: TokenProvider | None = None,
        *,
        timings: ConnectorTimings | None = None,
        http: httpx.AsyncClient | None = None,
        backoff: Callable[[], Iterator[float]] | None = None,
    ) -> None:
        self.settings = settings
        self.handoff = handoff
        self.metrics = metrics
        self.timings = timings or ConnectorTimings()
        self._credential_hint = "check TEAMS_APP_ID and the bot's credential"
        self._tokens = token_provider or self._default_tokens(settings)
        self._http = http
        self._own_http = http is None
        self._backoff_factory = backoff or self._default_backoff
        self._generation = 0
        self.connections: dict[str, HubConnection] = {}
        """The connection currently serving each slot (for tests and /readyz detail)."""
        self.rotations = 0

    # --- Connector protocol ---

    async def run(self, stopping: asyncio.Event) -> None:
        http = self._http or httpx.AsyncClient()
        self._http = http
        try:
            async with asyncio.TaskGroup() as tg:
                for slot in self.settings.slot_names:
                    tg.create_task(self._supervise(slot, stopping), name=f"teams-{slot}")
        except* FatalConnectorError as group:
            raise group.exceptions[0] from None
        finally:
            if self._own_http:
                await http.aclose()
                self._http = None
            for slot in self.settings.slot_names:
                self.metrics.status.set(PLATFORM, slot, ConnectionStatus.ENDED)

    # --- supervisor ---

    def _default_backoff(self) -> Iterator[float]:
        t = self.timings
        if self.settings.contract == "draft":
            return schedule(t.draft_delays)
        return full_jitter(t.backoff_base, t.backoff_cap)

    def _default_tokens(self, settings: TeamsSettings) -> TokenProvider:
        if settings.static_token is not None:
            self._credential_hint = "check TEAMS_STATIC_TOKEN against the sandbox"
            return StaticTokenProvider(settings.static_token.get_secret_value())
        credential, hint = credential_for(
            settings.app_id,
            settings.tenant_id,
            settings.app_password.get_secret_value() if settings.app_password else None,
            settings.certificate_path,
            settings.managed_identity_client_id,
        )
        self._credential_hint = hint
        return CredentialTokenProvider(credential, description=hint)

    def _status(self, slot: str, status: ConnectionStatus, detail: str = "") -> None:
        self.metrics.status.set(PLATFORM, slot, status, detail)

    async def _supervise(self, slot: str, stopping: asyncio.Event) -> None:
        delays = self._backoff_factory()
        token_failures = 0
        while not stopping.is_set():
            self._status(slot, ConnectionStatus.CONNECTING)
            delay: float
            try:
                conn, run_task, grant = await self._connect(slot)
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
                log.warning("Teams slot %s: %s; retrying in %.1f s", slot, exc, delay)
            except ServiceUnavailable as exc:
                delay = max(exc.retry_after or 0.0, self.timings.unavailable_retry)
                self._status(slot, ConnectionStatus.FAILED_TO_CONNECT, "socket mode unavailable (503)")
                if not self.settings.fallback_on_503:
                    raise FatalConnectorError(f"Teams slot {slot}: {exc}") from exc
                log.warning("Teams slot %s: %s; asking again in %.1f s", slot, exc, delay)
            except (NegotiateError, OSError, TimeoutError, WebSocketException, signalr.SignalRProtocolError) as exc:
                retry_after = getattr(exc, "retry_after", None)
                delay = max(next(delays), retry_after or 0.0)
                self._status(slot, ConnectionStatus.FAILED_TO_CONNECT, _describe(exc))
                log.warning("Teams slot %s: connect failed (%s); retrying in %.1f s", slot, _describe(exc), delay)
            else:
                token_failures = 0
                delays = self._backoff_factory()
                reason = await self._serve(slot, conn, run_task, grant, stopping)
                if stopping.is_set():
                    break
                if reason.kind == "closed" and not reason.allow_reconnect:
                    delay = next(delays)
                    log.warning("Teams slot %s: server closed (%s); new cycle in %.1f s", slot, reason, delay)
                else:
                    delay = 0.0
                    log.info("Teams slot %s: connection ended (%s); renegotiating", slot, reason)
                self._status(slot, ConnectionStatus.CONNECTING, str(reason))
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), delay)

    async def _connect(self, slot: str) -> tuple[HubConnection, asyncio.Task[EndReason], ServiceGrant]:
        """A new ready connection for `slot` (serving in its own task), or an exception."""
        assert self._http is not None
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
        name = f"{slot}#{self._generation}"
        conn = HubConnection(
            ws_url,
            self._deliver,
            name=name,
            timings=t,
            max_in_flight=self.settings.max_in_flight,
            require_ready=self.settings.contract == "shipped",
            on_invalid=lambda reason: self.metrics.invalid(PLATFORM, reason),
            context={"geo": slot if self.settings.contract == "shipped" else "", "slot": slot},
        )
        try:
            await conn.open()
        except InvalidStatus as exc:
            raise NegotiateError(f"websocket {redact(ws_url)} refused: {exc.response.status_code}") from None
        run_task = asyncio.create_task(conn.run(), name=f"teams-conn-{name}")
        ready = asyncio.create_task(conn.ready.wait())
        try:
            await asyncio.wait({ready, run_task}, timeout=t.ready_timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
        if not conn.ready.is_set():
            await conn.stop("no SocketReady")
            reason = await _result(run_task)
            raise NegotiateError(f"SocketReady not received ({reason or 'timeout'})")
        log.info(
            "Teams slot %s: connection %s ready (connection id %s, %s, expires in %.0f s)",
            slot,
            name,
            conn.connection_id,
            redact(ws_url),
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
    ) -> EndReason:
        """Serve one slot across rotations; returns when its current connection ended unreplaced."""
        retiring: set[asyncio.Task[None]] = set()
        stop_task = asyncio.create_task(stopping.wait())
        loop = asyncio.get_running_loop()
        rotate_at = loop.time() + self._rotation_delay(grant)
        try:
            while True:
                self.connections[slot] = conn
                self._status(slot, ConnectionStatus.ONLINE, conn.connection_id or conn.name)
                timeout = max(0.0, rotate_at - loop.time())
                await asyncio.wait({run_task, stop_task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if stopping.is_set():
                    await conn.stop("worker stopping")
                    return await run_task
                if run_task.done():
                    return await run_task
                # make before break
                try:
                    new_conn, new_task, new_grant = await self._connect(slot)
                except NegotiateRejected:
                    raise
                except Exception as exc:  # the old connection keeps serving
                    log.warning("Teams slot %s: rotation failed (%s); the current connection keeps serving", slot, exc)
                    rotate_at = loop.time() + self.timings.rotation_retry
                    continue
                self.rotations += 1
                log.info("Teams slot %s: rotated %s -> %s", slot, conn.name, new_conn.name)
                retire = asyncio.create_task(self._retire(conn, run_task))
                retiring.add(retire)
                retire.add_done_callback(retiring.discard)
                conn, run_task, grant = new_conn, new_task, new_grant
                rotate_at = loop.time() + self._rotation_delay(grant)
        finally:
            stop_task.cancel()
            if not run_task.done():
                await conn.stop("supervisor leaving")
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
            await conn.stop("rotated out")
            reason = await _result(run_task)
            log.info("Teams connection %s retired (%s)", conn.name, reason)

    # --- delivery ---

    async def _deliver(self, conn: HubConnection, invocation: signalr.Invocation, recv_at: int) -> None:
        geo = conn.context.get("geo", "")
        inv_id = invocation.invocation_id
        try:
            delivery = parse_delivery(invocation.arguments)
        except InvalidEnvelopeError as exc:
            self.metrics.invalid(PLATFORM, exc.reason)
            envelope_id, bot_key = peek_envelope_id(invocation.arguments)
            log.warning(
                "rejected envelope envelopeId=%s geo=%s connection=%s: %s",
                envelope_id,
                geo,
                conn.connection_id,
                exc.detail,
            )
            if inv_id is not None:
                await conn.send_completion(
                    inv_id, completion_result(envelope_id, bot_key, STATUS_BAD_REQUEST, recv_at, epoch_ms())
                )
            return
        ids = (delivery.cv, delivery.envelope_id, geo, conn.connection_id)
        if delivery.protocol_version > SUPPORTED_PROTOCOL_VERSION:
            self.metrics.invalid(PLATFORM, "protocol_version")
            log.warning(
                "envelope refused (protocolVersion %s) cv=%s envelopeId=%s geo=%s connection=%s",
                delivery.protocol_version,
                *ids,
            )
            if inv_id is not None:
                await conn.send_completion(
                    inv_id,
                    completion_result(delivery.envelope_id, delivery.bot_key, STATUS_BAD_REQUEST, recv_at, epoch_ms()),
                )
            return
        try:
            envelope = delivery.to_envelope(conn.connection_id)
        except ValueError as exc:
            self.metrics.invalid(PLATFORM, "bad_envelope")
            log.warning("envelope refused (%s) cv=%s envelopeId=%s geo=%s connection=%s", exc, *ids)
            if inv_id is not None:
                await conn.send_completion(
                    inv_id,
                    completion_result(delivery.envelope_id, delivery.bot_key, STATUS_BAD_REQUEST, recv_at, epoch_ms()),
                )
            return
        result = await self.handoff.hand_off(envelope, delivery.dedupe_keys())
        status = STATUS_OK if result.ack else STATUS_FAILED
        sent = True
        if inv_id is not None:
            sent = await conn.send_completion(
                inv_id,
                completion_result(
                    delivery.envelope_id,
                    delivery.bot_key or conn.bot_key,
                    status,
                    recv_at,
                    epoch_ms(),
                    invoke=delivery.is_invoke,
                ),
            )
        if result.ack and sent:
            self.handoff.acked(envelope)
        note = ""
        if delivery.is_invoke and result.ack:
            note = " (invoke answered with an empty body: synchronous invoke bodies are not supported yet)"
        log.info(
            "envelope %s status=%s%s cv=%s envelopeId=%s geo=%s connection=%s type=%s",
            result.outcome.value,
            status if inv_id is not None else "-",
            "" if sent else " (completion not sent: socket gone, the service redelivers)",
            *ids,
            envelope.event_type,
        )
        if note:
            log.info("envelopeId=%s cv=%s%s", delivery.envelope_id, delivery.cv, note)


async def _result(task: asyncio.Task[EndReason]) -> EndReason | None:
    try:
        return await task
    except asyncio.CancelledError:
        if asyncio.current_task() is not None and asyncio.current_task().cancelling():  # type: ignore[union-attr]
            raise
        return None
    except Exception as exc:
        return EndReason("error", _describe(exc))


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]
