"""Service Bus–triggered functions, one per route, generated from the route table.

`register_routes(app, bot, settings)` adds to a `func.FunctionApp` one function per route:

    name          = route.name                     (e.g. slack_events)
    trigger       = serviceBusTrigger
    queueName     = %<route.setting>%              (e.g. %SLACK_EVENTS_QUEUE%)
    connection    = ServiceBusConnection           (connection string, or identity-based
                                                    ServiceBusConnection__fullyQualifiedNamespace)
    isSessionsEnabled = route.sessions

Each function parses the body into an `Envelope`, dispatches to the bot's handlers and, when the worker
waits for an answer (`envelope.reply_to`), sends it. This module is the one place that decides how a
message is settled and answered.

Answers (issue 10), when `envelope.reply_to` is set (the worker holds the platform's ack until then):
- the handlers returned a `functions.responses.Response` → its `Reply` goes through the outbox to
  `reply_to.queue`, SessionId `reply_to.session_id`, CorrelationId = the envelope's MessageId, TimeToLive
  `REPLIES.time_to_live`; they returned nothing, or no handler wanted the envelope → an empty `Reply`
  (the plain ack, at once rather than at the deadline);
- a handler raised → `Reply(error=...)` at once (the worker sends the platform's fallback), then the
  message is retried or dead-lettered as below;
- an answer for an envelope that takes none (Slack `accepts_response_payload: false`, Teams non-invoke
  activities), or that is not a `Response` → an error line naming the handler's envelope; nothing sent;
- retries (attempt 2 and later) send no answer: the platform got its fallback when attempt 1 failed.
An answer that cannot be sent (the outbox failed) is logged; the worker sends its fallback at its deadline.

Settlement (what the host does with the message):
- the handler returns → the host completes the message;
- the handler raises → retried with backoff (`functions.retries`): the message is completed and a copy
  for the next attempt is sent through the outbox as a scheduled message; after the route's last
  attempt → `DeadLetterError("MaxAttemptsExceeded", the last error)`. If the copy cannot be sent, the
  handler's error propagates: the host abandons the message and Service Bus redelivers it (as before);
- a reply can never land (`RecipientGone`: Teams `MessageWritesBlocked`, Slack `channel_not_found`,
  `used_url`, ...) → logged as a warning and completed: retrying cannot help;
- a reply target is refused (`UnsafeReplyTarget`: a Slack `response_url` that is not https on an allowed
  host → reason `UnsafeReplyTarget`; a Teams `serviceUrl` off the allowlist, on another port or not
  parseable → reason `ServiceUrlNotAllowed`) → `DeadLetterError` with that reason; nothing was sent;
- the body is not a valid envelope, or sits on the wrong queue → `DeadLetterError` with a readable
  reason (`InvalidBody`, `WrongQueue`).

A `DeadLetterError` (raised here, or by a handler) is dead-lettered at once with its reason by
relaybus's local functions host. Python's classic Service Bus binding on Azure cannot settle messages
itself, so there the error is logged with the reason and the message reaches the dead-letter queue
after MaxDeliveryCount deliveries (bounded: never retried forever); for `MaxAttemptsExceeded` those
redeliveries do not run the handler again (a redelivered last attempt is dead-lettered at once). See
the README's design notes.
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING, Any

import azure.functions as func

from functions.bot import Bot, register_settlement_error
from functions.context import Context, ReplyClients
from functions.errors import Retry
from functions.outbox import outbox
from functions.responses import Response
from functions.retries import (
    LAST_ERROR_PROPERTY,
    MAX_ATTEMPTS_EXCEEDED,
    Backoff,
    RetryTiming,
    attempt_of,
    decide,
    retry_message,
)
from functions.settings import FunctionSettings
from shared.envelope import Envelope, Kind, Platform, message_id_for, utcnow
from shared.errors import (
    ConfigurationError,
    DeadLetterError,
    InvalidEnvelopeError,
    PublishError,
    RecipientGone,
    UnsafeReplyTarget,
)
from shared.routes import REPLIES, ROUTES, Route, RouteTable

if TYPE_CHECKING:
    from shared.replies import Reply

log = logging.getLogger(__name__)

CONNECTION = "ServiceBusConnection"

register_settlement_error(Retry)  # `Retry` is a settlement signal: the bot's error handler never sees it

_indexed: weakref.WeakKeyDictionary[func.FunctionApp, list[func.Function]] = weakref.WeakKeyDictionary()


def indexed_functions(app: func.FunctionApp) -> list[func.Function]:
    """`app.get_functions()`, indexed once per app.

    azure-functions' `get_functions()` is not idempotent (a second call reports every function as a
    duplicate name), because the Functions host indexes an app exactly once. Everything in this
    process that needs the registered functions (the local functions host, tests) goes through here.
    """
    functions = _indexed.get(app)
    if functions is None:
        functions = _indexed[app] = app.get_functions()
    return functions


def register_routes(
    app: func.FunctionApp,
    bot: Bot,
    settings: FunctionSettings,
    routes: RouteTable = ROUTES,
    *,
    timing: RetryTiming | None = None,
) -> ReplyClients:
    """Register one Service Bus–triggered function per route; returns the shared reply clients.

    `timing` is the clock and jitter retries are scheduled with (tests pin them)."""
    clients = ReplyClients(settings)
    bot.use(clients)
    for route in routes:
        _register(app, bot, route, settings, clients, timing or RetryTiming())
    return clients


def _register(
    app: func.FunctionApp,
    bot: Bot,
    route: Route,
    settings: FunctionSettings,
    clients: ReplyClients,
    timing: RetryTiming,
) -> None:
    async def handle(msg: func.ServiceBusMessage) -> None:
        await process_message(bot, route, msg, settings, clients, timing=timing)

    handle.__name__ = route.name
    handle.__qualname__ = route.name
    handle.__doc__ = f"{route.description or route.name} (queue %{route.setting}%)"
    trigger = app.service_bus_queue_trigger(
        arg_name="msg",
        queue_name=f"%{route.setting}%",
        connection=CONNECTION,
        is_sessions_enabled=route.sessions,
    )
    app.function_name(name=route.name)(trigger(handle))


async def process_message(
    bot: Bot,
    route: Route,
    msg: func.ServiceBusMessage,
    settings: FunctionSettings,
    clients: ReplyClients,
    *,
    timing: RetryTiming | None = None,
) -> bool:
    """Parse, check the route, dispatch, answer, retry. Returns whether a handler ran."""
    message_id = msg.message_id
    try:
        envelope = Envelope.from_body(msg.get_body())
    except InvalidEnvelopeError as exc:
        log.error(
            "dead-lettering invalid body function=%s message_id=%s reason=%s: %s",
            route.name,
            message_id,
            exc.reason,
            exc.detail,
        )
        raise DeadLetterError(exc.reason, exc.detail) from exc
    if not route.accepts(envelope):
        detail = (
            f"route {route.name} takes platform={route.platform.value} kinds="
            f"{sorted(k.value for k in route.kinds)}, got platform={envelope.platform.value} kind={envelope.kind.value}"
        )
        log.error("dead-lettering misrouted message function=%s message_id=%s: %s", route.name, message_id, detail)
        raise DeadLetterError("WrongQueue", detail)
    attempt = attempt_of(msg.application_properties)
    delivery_count = msg.delivery_count or 1
    policy = Backoff.for_route(settings, route.name)
    if attempt >= policy.max_attempts and delivery_count > 1:
        # The last attempt, delivered again: on Azure the DeadLetterError below cannot settle the message
        # (the classic binding abandons it), so the handler must not run again on each redelivery.
        last = str((msg.application_properties or {}).get(LAST_ERROR_PROPERTY) or "unknown")
        log.error(
            "dead-lettering a redelivered last attempt function=%s message_id=%s attempt=%d/%d delivery_count=%d",
            route.name,
            message_id,
            attempt,
            policy.max_attempts,
            delivery_count,
        )
        raise DeadLetterError(
            MAX_ATTEMPTS_EXCEEDED, f"redelivered after its last attempt ({attempt}); the last known error: {last}"
        )
    answering = _Answering(envelope, route, settings, attempt, message_id)
    ctx = Context.for_envelope(envelope, settings, clients, message_id, delivery_count, attempt)
    try:
        dispatched = await bot.dispatch(ctx)
    except RecipientGone as exc:
        # Retrying cannot help (the user blocked or removed the bot), and dead-lettering every message
        # to such a user would bury real failures: complete it, say so once.
        await answering.failed(exc)
        log.warning(
            "reply refused for good, completing without retry function=%s message_id=%s dedupe_key=%s: %s",
            route.name,
            message_id,
            envelope.dedupe_key,
            exc,
        )
        return True
    except UnsafeReplyTarget as exc:
        await answering.failed(exc)
        log.error(
            "dead-lettering message with an unsafe reply target function=%s message_id=%s: %s",
            route.name,
            message_id,
            exc,
        )
        raise DeadLetterError(exc.reason, str(exc)) from exc
    except DeadLetterError as exc:
        await answering.failed(exc)
        raise
    except Exception as exc:
        await answering.failed(exc)
        await _retry(envelope, route, msg, settings, policy, attempt, exc, timing or RetryTiming())
        return True
    await answering.answer(dispatched.response)
    return dispatched.ran


async def _retry(
    envelope: Envelope,
    route: Route,
    msg: func.ServiceBusMessage,
    settings: FunctionSettings,
    policy: Backoff,
    attempt: int,
    exc: Exception,
    timing: RetryTiming,
) -> None:
    """Schedule the next attempt (the host then completes this message), or raise `DeadLetterError`."""
    decision = decide(policy, attempt, exc, timing.jitter())
    if not decision.retry:
        log.error(
            "dead-lettering after the last attempt function=%s message_id=%s dedupe_key=%s attempt=%d/%d: %s",
            route.name,
            msg.message_id,
            envelope.dedupe_key,
            attempt,
            policy.max_attempts,
            decision.error,
            exc_info=exc,
        )
        raise DeadLetterError(MAX_ATTEMPTS_EXCEEDED, decision.dead_letter_description) from exc
    retry = retry_message(
        envelope,
        decision,
        queue=settings.queue_names.get(route.name) or route.queue,
        session_id=msg.session_id or route.session_id(envelope),
        body=msg.get_body(),
        now=timing.clock(),
    )
    try:
        await outbox(settings).send(retry)
    except (PublishError, ConfigurationError) as send_error:
        log.error(
            "cannot schedule the retry function=%s message_id=%s attempt=%d/%d (%s): the message is abandoned "
            "and Service Bus delivers it again now",
            route.name,
            msg.message_id,
            attempt,
            policy.max_attempts,
            send_error,
        )
        raise exc from None
    log.warning(
        "handler failed function=%s message_id=%s dedupe_key=%s attempt=%d/%d: retry in %.2f s%s as message_id=%s: %s",
        route.name,
        msg.message_id,
        envelope.dedupe_key,
        attempt,
        policy.max_attempts,
        decision.delay,
        " (the delay it asked for)" if decision.chosen else "",
        retry.message_id,
        decision.error,
        exc_info=None if isinstance(exc, Retry) else exc,  # Retry: on purpose
    )


class _Answering:
    """The synchronous answer of one delivery: sent once, to `envelope.reply_to`, if the worker waits for it."""

    def __init__(
        self, envelope: Envelope, route: Route, settings: FunctionSettings, attempt: int, message_id: str
    ) -> None:
        self.envelope = envelope
        self.route = route
        self.settings = settings
        self.attempt = attempt
        self.message_id = message_id

    @property
    def waiting(self) -> bool:
        """The worker waits for this delivery's answer: an answerable envelope with a reply address on the reply
        queue, and not a retry (a retry comes after the platform got its fallback)."""
        address = self.envelope.reply_to
        return (
            address is not None
            and self.envelope.accepts_response
            and self.attempt == 1
            and address.queue == self.settings.reply_queue
        )

    async def answer(self, response: Any) -> None:
        envelope = self.envelope
        if response is not None and not isinstance(response, Response):
            log.error(
                "a handler returned %s for function=%s message_id=%s dedupe_key=%s: not an answer (return a "
                "functions.responses type such as CommandReply or InvokeResponse, or None); nothing sent",
                type(response).__name__,
                self.route.name,
                self.message_id,
                envelope.dedupe_key,
            )
            response = None
        if response is not None and not envelope.accepts_response:
            log.error(
                "a handler returned %s for an envelope that takes no answer function=%s message_id=%s dedupe_key=%s "
                "platform=%s kind=%s interaction=%s (%s): nothing sent",
                type(response).__name__,
                self.route.name,
                self.message_id,
                envelope.dedupe_key,
                envelope.platform.value,
                envelope.kind.value,
                interaction(envelope),
                "Slack sent accepts_response_payload: false"
                if envelope.platform is Platform.SLACK
                else "only Teams invokes take one",
            )
            return
        if envelope.reply_to is None:
            if response is not None:
                log.warning(
                    "a handler returned %s but no worker waits for it (no reply_to) function=%s message_id=%s "
                    "dedupe_key=%s: nothing sent",
                    type(response).__name__,
                    self.route.name,
                    self.message_id,
                    envelope.dedupe_key,
                )
            return
        if envelope.reply_to.queue != self.settings.reply_queue:
            log.error(
                "the envelope's reply_to names queue %r, not the reply queue %r function=%s message_id=%s "
                "dedupe_key=%s: nothing sent",
                envelope.reply_to.queue[:200],
                self.settings.reply_queue,
                self.route.name,
                self.message_id,
                envelope.dedupe_key,
            )
            return
        if not self.waiting:
            if response is not None:
                log.info(
                    "attempt %d's answer is not sent function=%s message_id=%s: the platform got its fallback "
                    "when the first attempt failed",
                    self.attempt,
                    self.route.name,
                    self.message_id,
                )
            return
        from shared.replies import Reply, problem  # only when a worker waits: not at import (cold start)

        correlation_id = envelope.message_id
        try:
            reply = Reply(correlation_id=correlation_id) if response is None else response.to_reply(correlation_id)
        except Exception as exc:
            log.error(
                "the answer %s cannot be built function=%s message_id=%s: %s: %s",
                type(response).__name__,
                self.route.name,
                self.message_id,
                type(exc).__name__,
                exc,
            )
            reply = Reply(correlation_id=correlation_id, status=500, error=f"invalid answer: {type(exc).__name__}")
        wrong = problem("slack" if envelope.platform is Platform.SLACK else "teams", interaction(envelope), reply)
        if wrong is not None:
            log.error(
                "the answer %s does not fit function=%s message_id=%s interaction=%s: %s (the worker refuses it "
                "and sends the fallback)",
                type(response).__name__,
                self.route.name,
                self.message_id,
                interaction(envelope),
                wrong,
            )
        await self._send(reply)

    async def failed(self, exc: BaseException) -> None:
        """The handler raised: tell the waiting worker at once, so that it sends the platform's fallback."""
        if not self.waiting:
            return
        from shared.replies import Reply

        error = f"handler raised {type(exc).__name__}"
        await self._send(Reply(correlation_id=self.envelope.message_id, status=500, error=error))

    async def _send(self, reply: Reply) -> None:
        from shared.queue_message import QueueMessage

        address = self.envelope.reply_to
        assert address is not None
        late = (utcnow() - address.deadline).total_seconds()
        message = QueueMessage(
            queue=address.queue,
            message_id=message_id_for(f"{self.envelope.message_id}~reply"),
            body=reply.to_body(),
            session_id=address.session_id,
            application_properties={"platform": self.envelope.platform.value, "kind": "reply"},
            correlation_id=reply.correlation_id,
            time_to_live=REPLIES.time_to_live.total_seconds(),
        )
        try:
            await outbox(self.settings).send(message)
        except (PublishError, ConfigurationError) as exc:
            log.error(
                "answer not sent function=%s message_id=%s reply_queue=%s: %s (the worker sends its fallback at "
                "its deadline)",
                self.route.name,
                self.message_id,
                address.queue,
                exc,
            )
            return
        log.info(
            "answer sent function=%s message_id=%s status=%d%s%s",
            self.route.name,
            self.message_id,
            reply.status,
            " error" if reply.error else "",
            f" {late:.3f} s after the worker's deadline (it drops it)" if late > 0 else "",
        )


def interaction(envelope: Envelope) -> str | None:
    """What an answer answers: a Slack interactive payload type or slash command, a Teams invoke name."""
    payload = envelope.payload
    if envelope.platform is Platform.SLACK:
        if envelope.kind is Kind.SLASH_COMMANDS:
            value = payload.get("command")
        elif envelope.kind is Kind.INTERACTIVE:
            value = payload.get("type")
        else:
            value = envelope.event_type
    else:
        value = payload.get("name") if envelope.kind is Kind.INVOKE or payload.get("type") == "invoke" else None
    if isinstance(value, str):
        return value
    return envelope.event_type
