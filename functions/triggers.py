"""Service Bus–triggered functions, one per route, generated from the route table.

`register_routes(app, bot, settings)` adds to a `func.FunctionApp` one function per route:

    name          = route.name                     (e.g. slack_events)
    trigger       = serviceBusTrigger
    queueName     = %<route.setting>%              (e.g. %SLACK_EVENTS_QUEUE%)
    connection    = ServiceBusConnection           (connection string, or identity-based
                                                    ServiceBusConnection__fullyQualifiedNamespace)
    isSessionsEnabled = route.sessions

Each function parses the body into an `Envelope` and dispatches to the bot's handlers.
This module is the one place that decides how a message is settled.

Settlement (what the host does with the message):
- the handler returns → the host completes the message;
- the handler raises → the host abandons it and Service Bus redelivers, up to the queue's
  MaxDeliveryCount, then dead-letters it;
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
after MaxDeliveryCount deliveries (bounded: never retried forever). See the README's design notes.
"""

from __future__ import annotations

import logging
import weakref

import azure.functions as func

from functions.bot import Bot
from functions.context import Context, ReplyClients
from functions.settings import FunctionSettings
from shared.envelope import Envelope
from shared.errors import DeadLetterError, InvalidEnvelopeError, RecipientGone, UnsafeReplyTarget
from shared.routes import ROUTES, Route, RouteTable

log = logging.getLogger(__name__)

CONNECTION = "ServiceBusConnection"

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
) -> ReplyClients:
    """Register one Service Bus–triggered function per route; returns the shared reply clients."""
    clients = ReplyClients(settings)
    for route in routes:
        _register(app, bot, route, settings, clients)
    return clients


def _register(app: func.FunctionApp, bot: Bot, route: Route, settings: FunctionSettings, clients: ReplyClients) -> None:
    async def handle(msg: func.ServiceBusMessage) -> None:
        await process_message(bot, route, msg, settings, clients)

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
) -> bool:
    """Parse, check the route, dispatch. Returns whether a handler ran."""
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
    ctx = Context(
        envelope=envelope,
        settings=settings,
        clients=clients,
        message_id=message_id,
        delivery_count=msg.delivery_count or 1,
    )
    try:
        return (await bot.dispatch(ctx)).ran
    except RecipientGone as exc:
        # Retrying cannot help (the user blocked or removed the bot), and dead-lettering every message
        # to such a user would bury real failures: complete it, say so once.
        log.warning(
            "reply refused for good, completing without retry function=%s message_id=%s dedupe_key=%s: %s",
            route.name,
            message_id,
            envelope.dedupe_key,
            exc,
        )
        return True
    except UnsafeReplyTarget as exc:
        log.error(
            "dead-lettering message with an unsafe reply target function=%s message_id=%s: %s",
            route.name,
            message_id,
            exc,
        )
        raise DeadLetterError(exc.reason, str(exc)) from exc
