"""`TeamsConnector`: the worker's Teams socket-mode connector (implements `worker.connector.Connector`).

    connector = TeamsConnector(settings.teams, handoff, metrics)
    await connector.run(stopping)   # until `stopping` is set; raises FatalConnectorError on final errors

It owns the HTTP client and the Bot Framework token provider, runs the slots (`worker.teams.pool`), and
glues each delivery to the handoff: `protocol.classify()` decides what a delivery is (refused → 400 at
once, counted as invalid), `Handoff.deliver()` decides the answer and calls this connector's answer
action, which writes the completion (`protocol.answer`: 200 durable, 500 not; invokes carry a `body`).
Every invoke takes a synchronous answer: with a reply inbox, its envelope gets `reply_to` (deadline:
received + `deadlineMs` − `TEAMS_ANSWER_MARGIN_MS`) and its completion carries the function's status and
body, or the fallback (500, `{"error": …}`) when none came in time. A redelivery of an invoke already
published (after a fallback 500, for example) is a duplicate: 200 without a body.

The shipped contract's failures are redelivered by the service (`AckPolicy.REDELIVERS`); the
draft contract's one-way `activity` cannot be, so a failed publish keeps the envelope in the handoff's
retry buffer (`AckPolicy.KEEP_UNTIL_DURABLE`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta

import httpx

from shared.teams_auth import TokenProvider, token_provider
from worker import tls
from worker.handoff import AckPolicy, Handoff, Verdict
from worker.metrics import Metrics
from worker.teams import signalr
from worker.teams.connection import HubConnection, Timings, epoch_ms
from worker.teams.pool import PLATFORM, ConnectorTimings, TeamsPool
from worker.teams.protocol import Refused, answer, classify, completion_result, deadline_ms
from worker.teams.settings import TeamsSettings

__all__ = ["ConnectorTimings", "TeamsConnector", "Timings"]

log = logging.getLogger(__name__)


class TeamsConnector:
    """Implements `worker.connector.Connector` for Teams socket mode (both contracts)."""

    platform = PLATFORM

    def __init__(
        self,
        settings: TeamsSettings,
        handoff: Handoff,
        metrics: Metrics,
        token_provider_: TokenProvider | None = None,
        *,
        timings: ConnectorTimings | None = None,
        http: httpx.AsyncClient | None = None,
        backoff: Callable[[], Iterator[float]] | None = None,
    ) -> None:
        self.settings = settings
        self.handoff = handoff
        self.metrics = metrics
        self.timings = timings or ConnectorTimings()
        if token_provider_ is None:
            token_provider_, self._credential_hint = token_provider(settings)
        else:
            self._credential_hint = "check TEAMS_APP_ID and the bot's credential"
        self._tokens = token_provider_
        self._http = http
        self._backoff = backoff
        self._policy = AckPolicy.KEEP_UNTIL_DURABLE if settings.contract == "draft" else AckPolicy.REDELIVERS
        self.pool: TeamsPool | None = None

    @property
    def connections(self) -> dict[str, HubConnection]:
        """The connection currently serving each slot (for tests and /readyz detail)."""
        return self.pool.connections if self.pool is not None else {}

    @property
    def rotations(self) -> int:
        return self.pool.rotations if self.pool is not None else 0

    async def run(self, stopping: asyncio.Event) -> None:
        http = self._http or httpx.AsyncClient(verify=tls.client_context())
        self.pool = TeamsPool(
            self.settings,
            self.metrics,
            self._tokens,
            http,
            self._deliver,
            timings=self.timings,
            credential_hint=self._credential_hint,
            admission=self._admission,
            backoff=self._backoff,
        )
        log.info(
            "teams connector starting%s: %s contract, slots %s at %s",
            f" bot={self.settings.app}" if self.settings.app else "",
            self.settings.contract,
            ",".join(self.settings.slot_names),
            self.settings.base_url,
        )
        try:
            await self.pool.run(stopping)
        finally:
            if self._http is None:
                await http.aclose()
            log.info("teams connector stopped")

    def _admission(self) -> Awaitable[None] | None:
        return self.handoff.admitting() if self.handoff.paused() else None

    # --- delivery: classify, hand off, answer -----------------------------------------------------------

    async def _deliver(self, conn: HubConnection, invocation: signalr.Invocation, recv_at: int) -> None:
        geo = conn.context.get("geo", "")
        inv_id = invocation.invocation_id
        decided = classify(invocation.arguments, conn.connection_id, app=self.settings.app)
        if isinstance(decided, Refused):
            await self._refuse(conn, inv_id, decided, recv_at, geo)
            return
        delivery, envelope = decided.delivery, decided.envelope
        bot_key = delivery.bot_key or conn.bot_key
        sent_status: list[int] = []
        inbox = self.handoff.replies
        if envelope.accepts_response and inv_id is not None and inbox is not None:  # every invoke
            budget = deadline_ms(delivery) - self.settings.answer_margin_ms
            deadline = datetime.fromtimestamp(recv_at / 1000, UTC) + timedelta(milliseconds=budget)
            envelope = envelope.model_copy(update={"reply_to": inbox.address(deadline)})

        def complete(verdict: Verdict) -> bool | asyncio.Future[bool]:
            status, body = answer(verdict.ack, verdict.status, verdict.body, verdict.fallback)
            sent_status.append(status)
            if inv_id is None:
                return verdict.ack  # the draft contract: nothing to answer
            result = completion_result(
                delivery.envelope_id, bot_key, status, recv_at, epoch_ms(), body=body, invoke=delivery.is_invoke
            )
            return conn.send_completion(inv_id, result)

        outcome = await self.handoff.deliver(envelope, complete, also=decided.also, policy=self._policy)
        log.info(
            "envelope %s status=%s cv=%s envelopeId=%s geo=%s connection=%s type=%s%s",
            outcome.value,
            sent_status[0] if sent_status and inv_id is not None else "-",
            delivery.cv,
            delivery.envelope_id,
            geo,
            conn.connection_id,
            envelope.event_type,
            f" bot={envelope.app}" if envelope.app else "",
        )

    async def _refuse(self, conn: HubConnection, inv_id: str | None, refused: Refused, recv_at: int, geo: str) -> None:
        self.metrics.invalid(PLATFORM, refused.reason)
        log.warning(
            "envelope refused (%s: %s) status=%d cv=%s envelopeId=%s geo=%s connection=%s",
            refused.reason,
            refused.detail,
            refused.status,
            refused.cv,
            refused.envelope_id,
            geo,
            conn.connection_id,
        )
        if inv_id is not None:
            result = completion_result(
                refused.envelope_id, refused.bot_key or conn.bot_key, refused.status, recv_at, epoch_ms()
            )
            conn.send_completion(inv_id, result)
