"""A local Azure Functions host for Service Bus-triggered functions, over the local queue.

It runs the very functions a `func.FunctionApp` registered (`function_app.app`), found through the
app's own registration: `app.get_functions()` and each function's binding metadata
(`serviceBusTrigger`, `queueName` such as `%SLACK_EVENTS_QUEUE%` resolved from the settings with the
route table's default, `isSessionsEnabled`). There is no second registration list.

`host.json` `extensions.serviceBus` is honoured the way the Service Bus extension does:

- `maxConcurrentCalls`: invocations in flight per function (queues without sessions);
- `maxConcurrentSessions`: sessions processed at once per function, each session one message at a
  time, in order; `sessionIdleTimeout`: how long a session is kept waiting for its next message;
- `autoCompleteMessages`: complete on success (when false, a successful message is left to its lock:
  Python's classic binding cannot settle, so it comes back after the lock expires, as on Azure);
- `maxAutoLockRenewalDuration`: locks of long invocations are renewed up to this long;
- a function that raises abandons its message (redelivered, `delivery_count` + 1) until the queue's
  max delivery count, then the queue dead-letters it (`MaxDeliveryCountExceeded`);
- a function raising `shared.errors.DeadLetterError` is dead-lettered at once with its reason and
  description. (On Azure, Python's classic binding cannot dead-letter: there the message is abandoned
  until max deliveries. `functions.triggers` documents the difference.)

Functions receive real `azure.functions.ServiceBusMessage` objects; sync functions run in a thread,
async ones on the loop. `stats` counts invocations and outcomes per function, and `on_outcome` (an
optional callback) sees each invocation's outcome as it happens (the `dev` command's live progress).

The host uses its own connections to the queue file: given the worker's `LocalQueueBackend`, it opens
a second one on the same file (so the worker may close its backend while the host drains) and only
borrows the worker's in-process "new messages" signal to pick messages up without polling delay.

While it runs, the host installs a `LocalOutbox` over that connection as the function side's outbox
(`functions.outbox.install`): synchronous answers go to the reply queue (session, CorrelationId, time to
live) and retries that back off are scheduled messages of the same file, so `make dev` and the tests see
what Azure does. Settlement follows from what the function did, as on Azure: a handler that raised and
whose retry was scheduled has returned normally, so its message is COMPLETED (`FunctionRun.sent` shows
the scheduled copy, `FunctionStats.retries_scheduled` counts them); after the last attempt it raises
`DeadLetterError("MaxAttemptsExceeded", ...)` and is dead-lettered.

HTTP-triggered functions (`httpTrigger`) are served on loopback (`http_url`, an aiohttp server on port 0 or on
a socket the caller bound), under host.json's `extensions.http.routePrefix` (default `api`), each route with
its methods; functions get real `azure.functions.HttpRequest` objects and what they return (an `HttpResponse`)
is the answer; a function that raises is a 500. Two SignalR Service bindings are implemented, against the
service their connection setting names (the dev stack's `devstack.signalr_service`, by its connection string):

- `signalRConnectionInfo` (in): `{"url": "<endpoint>/client/?hub=<hub>", "accessToken": …}`, a token signed
  with the connection string's access key for the `userId` binding expression's value (`{headers.<name>}`,
  `{query.<name>}` or a literal), as the extension mints it. A header or query parameter the expression names
  but the request lacks fails the binding: a 500 before the function runs (what Azure answers too);
- `signalR` (out): after the function returns, each item it set (a JSON object or array: messages with
  `target`/`arguments` to a `groupName` or `userId`, group actions `{"userId","groupName","action"}`) is
  performed with the data-plane REST API, before the answer goes out; if one fails the invocation fails (500).

Bindings the host cannot run faithfully (other binding types, `idToken`/`claimTypeList`, route constraints,
an identity-only SignalR connection) are a `ConfigurationError` naming the function, at construction.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
import logging
import os
import re
import socket
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from functools import partial
from pathlib import Path
from typing import Any

import azure.functions as func
from aiohttp import web
from azure.functions.meta import Datum
from azure.functions.servicebus import ServiceBusMessage

from functions import outbox as function_outbox
from functions.live import LiveService, PushError, SignalRAction, access_key_token, parse_connection_string
from functions.triggers import indexed_functions
from localqueue import (
    Disposition,
    LocalQueueBackend,
    LocalQueueError,
    LockLostError,
    QueueConfig,
    SessionLease,
    StoredMessage,
    queue_configs,
)
from shared.errors import ConfigurationError, DeadLetterError
from shared.queue_message import QueueMessage
from shared.routes import ROUTES, RouteTable

log = logging.getLogger(__name__)

SERVICE_BUS_TRIGGER = "serviceBusTrigger"
_SETTING_REFERENCE = re.compile(r"%([^%]+)%")
_TIMESPAN = re.compile(r"^(?:(?P<days>\d+)\.)?(?P<hours>\d+):(?P<minutes>\d+):(?P<seconds>\d+(?:\.\d+)?)$")


# -- host.json ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HostOptions:
    """`host.json` `extensions.serviceBus`, with the extension's defaults (durations in seconds)."""

    max_concurrent_calls: int = 16 * (os.cpu_count() or 1)
    max_concurrent_sessions: int = 8 * (os.cpu_count() or 1)
    auto_complete_messages: bool = True
    max_auto_lock_renewal_duration: float = 300.0
    session_idle_timeout: float = 1.0
    """Not set in host.json: the local host releases an idle session after one second."""

    @classmethod
    def from_host_json(cls, path: Path | None) -> HostOptions:
        """Read `extensions.serviceBus` (and the older `messageHandlerOptions` / `sessionHandlerOptions`)."""
        if path is None or not path.is_file():
            return cls()
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigurationError(str(path), f"cannot read host.json: {exc}") from exc
        section = (document.get("extensions") or {}).get("serviceBus") or {}
        if not isinstance(section, dict):
            raise ConfigurationError(str(path), "extensions.serviceBus must be an object")
        merged: dict[str, Any] = {}
        for legacy in ("messageHandlerOptions", "sessionHandlerOptions"):
            if isinstance(section.get(legacy), dict):
                merged.update(section[legacy])
        merged.update({k: v for k, v in section.items() if not isinstance(v, dict)})
        defaults = cls()
        where = f"{path}: extensions.serviceBus"
        try:
            return cls(
                max_concurrent_calls=_positive(merged.get("maxConcurrentCalls", defaults.max_concurrent_calls)),
                max_concurrent_sessions=_positive(
                    merged.get("maxConcurrentSessions", defaults.max_concurrent_sessions)
                ),
                auto_complete_messages=_boolean(
                    merged.get("autoCompleteMessages", merged.get("autoComplete", defaults.auto_complete_messages))
                ),
                max_auto_lock_renewal_duration=_duration(
                    merged.get("maxAutoLockRenewalDuration", defaults.max_auto_lock_renewal_duration)
                ),
                session_idle_timeout=_duration(merged.get("sessionIdleTimeout", defaults.session_idle_timeout)),
            )
        except ValueError as exc:
            raise ConfigurationError(where, str(exc)) from exc


def parse_timespan(value: str) -> float:
    """A .NET TimeSpan as host.json writes it (`00:05:00`, `1.00:00:00`, `00:00:00.500`) in seconds."""
    match = _TIMESPAN.match(value.strip())
    if match is None:
        raise ValueError(f"{value!r} is not a TimeSpan like 00:05:00")
    days = int(match["days"] or 0)
    return ((days * 24 + int(match["hours"])) * 60 + int(match["minutes"])) * 60 + float(match["seconds"])


def _duration(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        return parse_timespan(value)
    raise ValueError(f"{value!r} is not a duration")


def _positive(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{value!r} must be a positive integer")
    return value


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{value!r} must be true or false")
    return value


# -- discovery --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServiceBusFunction:
    """One Service Bus-triggered function, as the app registered it."""

    name: str
    queue: str
    sessions: bool
    arg_name: str
    connection: str | None
    user_function: Callable[..., Any]
    outputs: tuple[str, ...] = ()
    is_async: bool = False
    wants_context: bool = False
    """The function has a `context` parameter (it gets an `azure.functions.Context`)."""


def discover(
    app: func.FunctionApp,
    settings: Mapping[str, str],
    queues: Mapping[str, QueueConfig],
    routes: RouteTable = ROUTES,
) -> list[ServiceBusFunction]:
    """The app's Service Bus queue-triggered functions, bindings resolved against `settings`.

    Raises `ConfigurationError` for a function the local host cannot run faithfully (unknown queue,
    session mismatch, batch cardinality, unsupported input bindings). Functions with other triggers
    (HTTP, timer) are left out.
    """
    found: list[ServiceBusFunction] = []
    for fn in indexed_functions(app):
        name = fn.get_function_name() or fn.get_user_function().__name__
        bindings: list[dict[str, Any]] = list(fn.get_bindings_dict().get("bindings", []))
        trigger = next((b for b in bindings if b.get("type") == SERVICE_BUS_TRIGGER), None)
        if trigger is None:
            log.info("local functions host: skipping %s (not Service Bus-triggered)", name)
            continue
        if "queueName" not in trigger:
            log.warning("local functions host: skipping %s (topic subscriptions are not emulated)", name)
            continue
        if str(trigger.get("cardinality", "one")).lower() == "many":
            raise ConfigurationError(name, "cardinality=many (batches) is not supported by the local functions host")
        queue = resolve_setting_references(str(trigger["queueName"]), settings, routes, name)
        config = queues.get(queue)
        if config is None:
            raise ConfigurationError(
                name, f"its queue {queue!r} is not a local queue (known: {', '.join(sorted(queues))})"
            )
        sessions = bool(trigger.get("isSessionsEnabled", False))
        if sessions != config.sessions:
            raise ConfigurationError(
                name,
                f"isSessionsEnabled={sessions} but queue {queue!r} "
                f"{'requires' if config.sessions else 'does not use'} sessions",
            )
        outputs = []
        for binding in bindings:
            if binding is trigger:
                continue
            if _direction(binding) == "out":
                outputs.append(str(binding["name"]))
            else:
                raise ConfigurationError(
                    name, f"input binding {binding.get('type')!r} is not supported by the local functions host"
                )
        user_function = fn.get_user_function()
        found.append(
            ServiceBusFunction(
                name=name,
                queue=queue,
                sessions=sessions,
                arg_name=str(trigger["name"]),
                connection=trigger.get("connection"),
                user_function=user_function,
                outputs=tuple(outputs),
                is_async=inspect.iscoroutinefunction(user_function),
                wants_context="context" in inspect.signature(user_function).parameters,
            )
        )
    return found


def resolve_setting_references(value: str, settings: Mapping[str, str], routes: RouteTable, function: str) -> str:
    """Replace `%NAME%` with the app setting NAME, or the route table's default queue for that setting."""
    defaults = {route.setting: route.queue for route in routes}

    def lookup(match: re.Match[str]) -> str:
        setting = match[1]
        resolved = settings.get(setting) or defaults.get(setting)
        if not resolved:
            raise ConfigurationError(setting, f"is not set (function {function} binds to %{setting}%)")
        return resolved

    return _SETTING_REFERENCE.sub(lookup, value)


def _direction(binding: Mapping[str, Any]) -> str:
    direction = binding.get("direction")
    text = getattr(direction, "name", direction)
    return str(text).lower()


# -- HTTP-triggered functions and the SignalR Service bindings --------------------------------------------------

HTTP_TRIGGER = "httpTrigger"
HTTP_OUTPUT = "http"
SIGNALR_CONNECTION_INFO = "signalRConnectionInfo"
SIGNALR_OUTPUT = "signalR"
DEFAULT_ROUTE_PREFIX = "api"
MAX_HTTP_BODY = 1024 * 1024
"""Request bodies the local host reads (Azure allows 100 MB; nothing here needs more than this)."""
_BINDING_EXPRESSION = re.compile(r"\{(?P<source>headers|query)\.(?P<name>[A-Za-z0-9_.-]+)\}")
_ROUTE_PARAMETER = re.compile(r"\{(?P<name>[^}]*)\}")
_PLAIN_PARAMETER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True, slots=True)
class SignalRConnection:
    """The SignalR Service a binding's connection setting names: its endpoint and access key."""

    setting: str
    endpoint: str
    access_key: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class ConnectionInfoBinding:
    """A `signalRConnectionInfo` input binding."""

    name: str
    hub: str
    connection: SignalRConnection
    user_id: str | None
    """The `userId` binding expression (`{headers.x}`, `{query.x}`) or a literal; None: no user."""


@dataclass(frozen=True, slots=True)
class SignalROutputBinding:
    """A `signalR` output binding."""

    name: str
    hub: str
    connection: SignalRConnection


@dataclass(frozen=True, slots=True)
class HttpFunction:
    """One HTTP-triggered function, as the app registered it."""

    name: str
    route: str
    """The route template without the prefix (`live/assets/{name}`)."""
    methods: tuple[str, ...]
    """Upper-case methods; empty: every method."""
    auth_level: str
    arg_name: str
    user_function: Callable[..., Any]
    is_async: bool
    connection_info: tuple[ConnectionInfoBinding, ...] = ()
    signalr_outputs: tuple[SignalROutputBinding, ...] = ()


def _text(value: object) -> str:
    return str(getattr(value, "value", value))


def _resolve_setting(value: str, settings: Mapping[str, str], function: str) -> str:
    """`%NAME%` replaced by the app setting NAME (which must be set)."""

    def lookup(match: re.Match[str]) -> str:
        resolved = settings.get(match[1])
        if not resolved:
            raise ConfigurationError(match[1], f"is not set (function {function} binds to %{match[1]}%)")
        return resolved

    return _SETTING_REFERENCE.sub(lookup, value)


def _signalr_connection(binding: Mapping[str, Any], settings: Mapping[str, str], function: str) -> SignalRConnection:
    setting = str(binding.get("connectionStringSetting") or binding.get("connection") or "AzureSignalRConnectionString")
    value = settings.get(setting)
    if not value:
        if settings.get(f"{setting}__serviceUri"):
            raise ConfigurationError(
                setting,
                f"is not set, only {setting}__serviceUri (an identity): the local functions host signs with an "
                "access key; set it to the local SignalR Service's connection string (the dev stack does)",
            )
        raise ConfigurationError(setting, f"is not set (function {function} has a SignalR Service binding)")
    endpoint, key = parse_connection_string(value, setting)
    return SignalRConnection(setting, endpoint, key)


def _user_id_expression(value: object, function: str) -> str | None:
    if value is None or value == "":
        return None
    text = str(value)
    if "{" in text and not _BINDING_EXPRESSION.fullmatch(text):
        raise ConfigurationError(
            function, f"userId {text!r}: the local functions host resolves {{headers.<name>}} and {{query.<name>}} only"
        )
    return text


def _check_route(route: str, function: str) -> None:
    for match in _ROUTE_PARAMETER.finditer(route):
        if not _PLAIN_PARAMETER.fullmatch(match["name"]):
            raise ConfigurationError(
                function, f"route {route!r}: only plain {{name}} parameters (no constraints, optional or catch-all)"
            )


def discover_http(app: func.FunctionApp, settings: Mapping[str, str]) -> list[HttpFunction]:
    """The app's HTTP-triggered functions with their SignalR Service bindings resolved against `settings`."""
    found: list[HttpFunction] = []
    for fn in indexed_functions(app):
        bindings: list[dict[str, Any]] = list(fn.get_bindings_dict().get("bindings", []))
        trigger = next((b for b in bindings if b.get("type") == HTTP_TRIGGER), None)
        if trigger is None:
            continue
        name = fn.get_function_name() or fn.get_user_function().__name__
        route = str(trigger.get("route") or name).strip("/")
        _check_route(route, name)
        inputs: list[ConnectionInfoBinding] = []
        outputs: list[SignalROutputBinding] = []
        for binding in bindings:
            if binding is trigger:
                continue
            kind, direction = binding.get("type"), _direction(binding)
            if kind == HTTP_OUTPUT and direction == "out":
                continue
            if kind == SIGNALR_CONNECTION_INFO and direction == "in":
                unsupported = sorted({"idToken", "claimTypeList"} & set(binding))
                if unsupported:
                    raise ConfigurationError(name, f"{', '.join(unsupported)} on {kind} is not supported locally")
                inputs.append(
                    ConnectionInfoBinding(
                        str(binding["name"]),
                        _resolve_setting(str(binding.get("hubName") or ""), settings, name),
                        _signalr_connection(binding, settings, name),
                        _user_id_expression(binding.get("userId"), name),
                    )
                )
            elif kind == SIGNALR_OUTPUT and direction == "out":
                outputs.append(
                    SignalROutputBinding(
                        str(binding["name"]),
                        _resolve_setting(str(binding.get("hubName") or ""), settings, name),
                        _signalr_connection(binding, settings, name),
                    )
                )
            else:
                raise ConfigurationError(
                    name, f"binding {kind!r} ({direction}) is not supported by the local functions host"
                )
        signalr_bindings: list[ConnectionInfoBinding | SignalROutputBinding] = [*inputs, *outputs]
        for signalr_binding in signalr_bindings:
            if not signalr_binding.hub:
                raise ConfigurationError(name, f"the SignalR binding {signalr_binding.name} names no hubName")
        user_function = fn.get_user_function()
        found.append(
            HttpFunction(
                name=name,
                route=route,
                methods=tuple(sorted({_text(m).upper() for m in trigger.get("methods") or []})),
                auth_level=_text(trigger.get("authLevel", "function")).lower(),
                arg_name=str(trigger["name"]),
                user_function=user_function,
                is_async=inspect.iscoroutinefunction(user_function),
                connection_info=tuple(inputs),
                signalr_outputs=tuple(outputs),
            )
        )
    return found


def route_prefix(host_json_path: Path | None) -> str:
    """host.json `extensions.http.routePrefix` (default `api`)."""
    if host_json_path is None or not host_json_path.is_file():
        return DEFAULT_ROUTE_PREFIX
    try:
        document = json.loads(host_json_path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(str(host_json_path), f"cannot read host.json: {exc}") from exc
    http = (document.get("extensions") or {}).get("http") or {}
    prefix = http.get("routePrefix", DEFAULT_ROUTE_PREFIX) if isinstance(http, dict) else DEFAULT_ROUTE_PREFIX
    return str(prefix).strip("/")


class BindingError(Exception):
    """An input binding could not be bound for this request (the host answers 500; the function does not run)."""


def binding_value(expression: str | None, request: web.Request) -> str | None:
    """The value of a `{headers.x}` / `{query.x}` binding expression (or a literal) for `request`."""
    if expression is None:
        return None
    match = _BINDING_EXPRESSION.fullmatch(expression)
    if match is None:
        return expression
    name = match["name"]
    value = request.headers.get(name) if match["source"] == "headers" else request.query.get(name)
    if value is None:
        raise BindingError(f"Error while accessing '{name}': property doesn't exist.")
    return value


def connection_info(binding: ConnectionInfoBinding, user_id: str | None, *, lifetime: float = 3600.0) -> str:
    """What the `signalRConnectionInfo` binding hands the function: the client URL and a token for `user_id`."""
    url = f"{binding.connection.endpoint}/client/?hub={binding.hub}"
    claims = {"nameid": user_id} if user_id else {}
    token = access_key_token(binding.connection.access_key, url, lifetime=lifetime, **claims)
    return json.dumps({"url": url, "accessToken": token})


def signalr_items(value: Any) -> list[SignalRAction]:
    """The items a function set on a `signalR` output binding (a JSON object or array, or a dict or list)."""
    if value is None:
        return []
    if isinstance(value, bytes | bytearray):
        value = value.decode()
    if isinstance(value, str):
        value = json.loads(value)
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(item, dict) for item in items):
        raise ValueError("each item of a signalR output binding is a JSON object")
    return [SignalRAction.from_binding(item) for item in items]


# -- outcomes and counters -------------------------------------------------------------------------------


class Settlement(Enum):
    COMPLETED = "completed"
    ABANDONED = "abandoned"
    """The function raised; the message will be redelivered."""
    DEAD_LETTERED = "dead_lettered"
    """`DeadLetterError`, or the function raised on the message's last allowed delivery."""
    LEFT_LOCKED = "left_locked"
    """Succeeded with autoCompleteMessages=false: the lock expires and the message comes back."""
    LOCK_LOST = "lock_lost"
    """The lock expired before settlement: the message is (or will be) redelivered."""


@dataclass(frozen=True, slots=True)
class FunctionRun:
    """What happened to one delivery (passed to `on_outcome`)."""

    function: str
    queue: str
    message_id: str
    session_id: str | None
    delivery_count: int
    outcome: Settlement
    seconds: float
    error: str | None = None
    dead_letter_reason: str | None = None
    outputs: Mapping[str, Any] = field(default_factory=dict)
    sent: tuple[QueueMessage, ...] = ()
    """What the function sent through the outbox during this invocation (answers, scheduled retries)."""

    @property
    def retry(self) -> QueueMessage | None:
        """The scheduled copy of this message for its next attempt, if the function sent one."""
        return next((m for m in self.sent if m.queue == self.queue and m.scheduled_enqueue_time is not None), None)


@dataclass(slots=True)
class FunctionStats:
    invocations: int = 0
    completed: int = 0
    abandoned: int = 0
    dead_lettered: int = 0
    left_locked: int = 0
    lock_lost: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    sessions_active: int = 0
    max_sessions_active: int = 0
    retries_scheduled: int = 0
    answers_sent: int = 0


@dataclass(slots=True)
class HostStats:
    """Counters per function, with totals (`completed`, `abandoned`, `dead_lettered`, …)."""

    functions: dict[str, FunctionStats] = field(default_factory=dict)

    def _sum(self, name: str) -> int:
        return sum(int(getattr(s, name)) for s in self.functions.values())

    @property
    def invocations(self) -> int:
        return self._sum("invocations")

    @property
    def completed(self) -> int:
        return self._sum("completed")

    @property
    def abandoned(self) -> int:
        return self._sum("abandoned")

    @property
    def dead_lettered(self) -> int:
        return self._sum("dead_lettered")

    @property
    def lock_lost(self) -> int:
        return self._sum("lock_lost")

    @property
    def in_flight(self) -> int:
        return self._sum("in_flight")

    @property
    def retries_scheduled(self) -> int:
        return self._sum("retries_scheduled")

    @property
    def answers_sent(self) -> int:
        return self._sum("answers_sent")


class _Out(func.Out[Any]):
    """A local output binding: keeps the value the function set."""

    def __init__(self) -> None:
        self._value: Any = None

    def set(self, val: Any) -> None:
        self._value = val

    def get(self) -> Any:
        return self._value


def _http_response(result: Any) -> web.Response:
    """What an HTTP function returned, as the answer (an `HttpResponse`; a str or bytes is a 200)."""
    if isinstance(result, func.HttpResponse):
        headers = {key: value for key, value in result.headers.items()}
        if not any(key.lower() == "content-type" for key in headers):
            mimetype = result.mimetype or "text/plain"
            headers["Content-Type"] = f"{mimetype}; charset={result.charset}" if result.charset else mimetype
        return web.Response(status=result.status_code, body=result.get_body(), headers=headers)
    if isinstance(result, str | bytes):
        return web.Response(status=200, body=result.encode() if isinstance(result, str) else result)
    if result is None:
        return web.Response(status=204)
    raise TypeError(f"an HTTP function returned {type(result).__name__}, not an HttpResponse")


# -- the outbox ---------------------------------------------------------------------------------------------

_sent_here: contextvars.ContextVar[list[QueueMessage] | None] = contextvars.ContextVar("funchost_sent", default=None)


class LocalOutbox:
    """The function side's outbox over the local queue (`functions.outbox.Outbox`): answers to the reply queue,
    scheduled retries to the function's own queue, with their CorrelationId, SessionId, time to live and
    scheduled time, in the same file the worker reads. What an invocation sends is recorded in its
    `FunctionRun.sent`."""

    def __init__(self, backend: LocalQueueBackend) -> None:
        self._backend = backend
        self.sent = 0

    async def send(self, message: QueueMessage) -> None:
        await self._backend.send(message)
        self.sent += 1
        recorded = _sent_here.get()
        if recorded is not None:
            recorded.append(message)

    async def close(self) -> None:
        """Nothing to close: the host owns the queue connection."""


# -- the host ---------------------------------------------------------------------------------------------


class LocalFunctionsHost:
    """Runs a FunctionApp's Service Bus-triggered functions against the local queue.

    `backend`: the worker's `LocalQueueBackend` (the host opens its own connections to the same file)
    or a queue file path (queues configured from `routes` and `settings`). `settings`: the app settings
    (resolves `%QUEUE_SETTING%` references). `poll_interval`: how often idle listeners look for
    messages written by other processes (messages from this process wake them at once).
    """

    def __init__(
        self,
        app: func.FunctionApp,
        backend: LocalQueueBackend | str | Path,
        host_json_path: Path | None = Path("host.json"),
        settings: Mapping[str, str] | None = None,
        *,
        routes: RouteTable = ROUTES,
        options: HostOptions | None = None,
        on_outcome: Callable[[FunctionRun], None] | None = None,
        poll_interval: float = 0.2,
        http_host: str = "127.0.0.1",
        http_port: int = 0,
        http_socket: socket.socket | None = None,
    ) -> None:
        self._settings = dict(settings or {})
        if isinstance(backend, LocalQueueBackend):
            self._notifier: LocalQueueBackend | None = backend
            self._path = backend.path
            self._queues = dict(backend.queues)
            self._clock = backend.clock
        elif isinstance(backend, str | Path):
            self._notifier = None
            self._path = Path(backend)
            self._queues = queue_configs(routes, self._settings)
            self._clock = time.time
        else:
            raise TypeError(f"the local functions host needs a LocalQueueBackend or a path, not {type(backend)}")
        self.options = options or HostOptions.from_host_json(host_json_path)
        self.functions = discover(app, self._settings, self._queues, routes)
        self._on_outcome = on_outcome
        self._poll = poll_interval
        self.stats = HostStats({f.name: FunctionStats() for f in self.functions})
        self._backend: LocalQueueBackend | None = None
        self._function_directory = str(Path(inspect.getfile(type(app))).parent)
        self.http_functions = discover_http(app, self._settings)
        self.http_stats: Counter[str] = Counter()
        """Requests, answers by status, binding failures of the HTTP functions."""
        self._route_prefix = route_prefix(host_json_path)
        self._http_host = http_host
        self._http_port = http_port
        self._http_socket = http_socket
        if http_socket is not None:
            bound_host, bound_port = http_socket.getsockname()[:2]
            self._http_host, self._http_port = str(bound_host), int(bound_port)
        self._http_runner: web.AppRunner | None = None
        self._http_ready = asyncio.Event()
        self._signalr: dict[tuple[str, str, str], LiveService] = {}

    @property
    def http_url(self) -> str:
        """`http://127.0.0.1:<port>` where the HTTP functions are served (the port is known once `run` started
        serving, or at once when a bound socket was given)."""
        return f"http://{self._http_host}:{self._http_port}"

    def url_of(self, route: str) -> str:
        """The URL of a route (`live/negotiate` -> `http://127.0.0.1:<port>/api/live/negotiate`)."""
        prefix = f"/{self._route_prefix}" if self._route_prefix else ""
        return f"{self.http_url}{prefix}/{route.lstrip('/')}"

    async def wait_http(self, within: float = 10.0) -> str:
        """Until the HTTP functions are served; returns `http_url`."""
        await asyncio.wait_for(self._http_ready.wait(), within)
        return self.http_url

    @property
    def backend(self) -> LocalQueueBackend:
        if self._backend is None:
            raise RuntimeError("the local functions host is not running")
        return self._backend

    async def run(self, stopping: asyncio.Event) -> None:
        """Listen on every function's queue until `stopping` is set; then finish in-flight invocations."""
        backend = LocalQueueBackend(self._path, queues=self._queues, clock=self._clock)
        self._backend = backend
        local_outbox = LocalOutbox(backend)
        previous_outbox = function_outbox.installed()
        function_outbox.install(local_outbox)
        try:
            await backend.open()
            if self.http_functions:
                await self._start_http()
            log.info(
                "local functions host started functions=%s path=%s%s",
                ",".join(f"{f.name}<-{f.queue}" for f in self.functions),
                self._path,
                f" http={self.http_url} routes={','.join(f.route for f in self.http_functions)}"
                if self.http_functions
                else "",
            )
            async with asyncio.TaskGroup() as group:
                for fn in self.functions:
                    listener = self._session_listener if fn.sessions else self._listener
                    group.create_task(listener(fn, stopping), name=f"funchost-{fn.name}")
                if self.http_functions:
                    group.create_task(stopping.wait(), name="funchost-http")
        finally:
            await self._stop_http()
            if function_outbox.installed() is local_outbox:
                function_outbox.install(previous_outbox)
            await backend.close()
            self._backend = None
            log.info("local functions host stopped")

    # -- HTTP functions -------------------------------------------------------------------------------

    async def _start_http(self) -> None:
        app = web.Application(client_max_size=MAX_HTTP_BODY)
        prefix = f"/{self._route_prefix}" if self._route_prefix else ""
        for fn in self.http_functions:
            path = f"{prefix}/{fn.route}" if fn.route else prefix or "/"
            for method in fn.methods or ("*",):
                app.router.add_route(method, path, partial(self._http, fn))
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        self._http_runner = runner
        site: web.BaseSite
        if self._http_socket is not None:
            site = web.SockSite(runner, self._http_socket)
        else:
            site = web.TCPSite(runner, self._http_host, self._http_port)
        await site.start()
        server = site._server
        if server is not None and self._http_socket is None:
            self._http_port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        self._http_ready.set()

    async def _stop_http(self) -> None:
        runner, self._http_runner = self._http_runner, None
        if runner is not None:
            await runner.cleanup()
        services, self._signalr = list(self._signalr.values()), {}
        for service in services:
            await service.aclose()
        self._http_ready.clear()

    async def _http(self, fn: HttpFunction, request: web.Request) -> web.StreamResponse:
        self.http_stats["requests"] += 1
        started = time.monotonic()
        response = await self._http_invoke(fn, request)
        self.http_stats[f"status_{response.status}"] += 1
        log.info(
            "invocation function=%s method=%s path=%s status=%d seconds=%.3f",
            fn.name,
            request.method,
            request.path,
            response.status,
            time.monotonic() - started,
        )
        return response

    async def _http_invoke(self, fn: HttpFunction, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        req = func.HttpRequest(
            method=request.method,
            url=str(request.url),
            headers=dict(request.headers),
            params=dict(request.query),
            route_params=dict(request.match_info),
            body=body,
        )
        kwargs: dict[str, Any] = {fn.arg_name: req}
        try:
            for binding in fn.connection_info:
                kwargs[binding.name] = connection_info(binding, binding_value(binding.user_id, request))
        except BindingError as exc:
            self.http_stats["binding_errors"] += 1
            log.warning("binding failed function=%s: %s (the function did not run)", fn.name, exc)
            return web.Response(status=500, text=f"Exception binding parameter: {exc}")
        outputs = {output.name: _Out() for output in fn.signalr_outputs}
        kwargs.update(outputs)
        try:
            if fn.is_async:
                result = await fn.user_function(**kwargs)
            else:
                result = await asyncio.to_thread(fn.user_function, **kwargs)
                if inspect.isawaitable(result):
                    result = await result
        except Exception as exc:
            log.warning("function failed function=%s error=%s: %s", fn.name, type(exc).__name__, exc, exc_info=exc)
            return web.Response(status=500)
        for output in fn.signalr_outputs:
            try:
                await self._signalr_output(output, outputs[output.name].get())
            except (PushError, ValueError) as exc:
                self.http_stats["output_binding_errors"] += 1
                log.warning("the signalR output binding failed function=%s: %s (the invocation fails)", fn.name, exc)
                return web.Response(status=500)
        return _http_response(result)

    async def _signalr_output(self, binding: SignalROutputBinding, value: Any) -> None:
        items = signalr_items(value)
        if not items:
            return
        connection = binding.connection
        key = (connection.endpoint, binding.hub, connection.access_key)
        service = self._signalr.get(key)
        if service is None:
            service = self._signalr[key] = LiveService(
                connection.endpoint, binding.hub, access_key=connection.access_key, timeout=10.0
            )
        for item in items:
            await service.perform(item)

    # -- listeners ------------------------------------------------------------------------------------

    async def _listener(self, fn: ServiceBusFunction, stopping: asyncio.Event) -> None:
        """A queue without sessions: up to maxConcurrentCalls invocations at once."""
        stats = self.stats.functions[fn.name]
        limit = self.options.max_concurrent_calls
        slot_freed = asyncio.Event()
        async with asyncio.TaskGroup() as invocations:
            while not stopping.is_set():
                free = limit - stats.in_flight
                if free <= 0:
                    slot_freed.clear()
                    await self._wait(stopping, slot_freed.wait())
                    continue
                try:
                    messages = await self.backend.receive(fn.queue, free)
                except sqlite3.OperationalError as exc:
                    log.warning("receive failed function=%s queue=%s error=%s", fn.name, fn.queue, exc)
                    messages = []
                if not messages:
                    await self._idle(stopping)
                    continue
                for message in messages:
                    self._started(stats)
                    task = invocations.create_task(self._invoke(fn, message, None), name=f"{fn.name}-invocation")
                    task.add_done_callback(lambda _t: slot_freed.set())

    async def _session_listener(self, fn: ServiceBusFunction, stopping: asyncio.Event) -> None:
        """A session queue: up to maxConcurrentSessions sessions at once, each processed in order."""
        stats = self.stats.functions[fn.name]
        limit = self.options.max_concurrent_sessions
        session_done = asyncio.Event()
        async with asyncio.TaskGroup() as sessions:
            while not stopping.is_set():
                if stats.sessions_active >= limit:
                    session_done.clear()
                    await self._wait(stopping, session_done.wait())
                    continue
                try:
                    lease = await self.backend.accept_next_session(fn.queue)
                except sqlite3.OperationalError as exc:
                    log.warning("accepting a session failed function=%s queue=%s error=%s", fn.name, fn.queue, exc)
                    lease = None
                if lease is None:
                    await self._idle(stopping)
                    continue
                stats.sessions_active += 1
                stats.max_sessions_active = max(stats.max_sessions_active, stats.sessions_active)
                task = sessions.create_task(self._session(fn, lease, stopping), name=f"{fn.name}-session")
                task.add_done_callback(lambda _t: session_done.set())

    async def _session(self, fn: ServiceBusFunction, lease: SessionLease, stopping: asyncio.Event) -> None:
        stats = self.stats.functions[fn.name]
        backend = self.backend
        try:
            idle_since = time.monotonic()
            while not stopping.is_set():
                try:
                    message = await backend.receive_from_session(lease)
                except _SETTLEMENT_ERRORS as exc:
                    log.warning("session lost function=%s session_id=%s error=%s", fn.name, lease.session_id, exc)
                    return
                if message is None:
                    if time.monotonic() - idle_since >= self.options.session_idle_timeout:
                        return
                    await self._idle(stopping, min(self._poll, self.options.session_idle_timeout))
                    continue
                self._started(stats)
                await self._invoke(fn, message, lease)
                idle_since = time.monotonic()
        finally:
            stats.sessions_active -= 1
            try:
                await backend.release_session(lease)
            except _SETTLEMENT_ERRORS as exc:
                log.warning("could not release session %s: %s", lease.session_id, exc)

    async def _idle(self, stopping: asyncio.Event, seconds: float | None = None) -> None:
        wait = self._poll if seconds is None else seconds
        if self._notifier is not None:
            await self._wait(stopping, self._notifier.wait_for_messages(wait))
        else:
            await self._wait(stopping, asyncio.sleep(wait))

    @staticmethod
    async def _wait(stopping: asyncio.Event, awaitable: Awaitable[Any]) -> None:
        """Wait for `awaitable` or for `stopping`, whichever comes first."""
        waiter = asyncio.ensure_future(awaitable)
        stop = asyncio.ensure_future(stopping.wait())
        try:
            await asyncio.wait({waiter, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waiter, stop):
                task.cancel()
            await asyncio.gather(waiter, stop, return_exceptions=True)

    @staticmethod
    def _started(stats: FunctionStats) -> None:
        stats.invocations += 1
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)

    # -- one invocation -------------------------------------------------------------------------------

    async def _invoke(self, fn: ServiceBusFunction, message: StoredMessage, lease: SessionLease | None) -> None:
        stats = self.stats.functions[fn.name]
        started = time.monotonic()
        outputs = {name: _Out() for name in fn.outputs}
        error: str | None = None
        reason: str | None = None
        sent: list[QueueMessage] = []
        recording = _sent_here.set(sent)
        try:
            async with asyncio.TaskGroup() as group:
                renewal = group.create_task(self._renew_locks(fn, message, lease, started), name="lock-renewal")
                try:
                    await self._call(fn, message, outputs)
                except DeadLetterError as exc:
                    outcome, reason, error = await self._settle_dead_letter(message, exc)
                except Exception as exc:
                    error = f"{type(exc).__name__}: {exc}"
                    log.warning(
                        "function failed function=%s message_id=%s delivery_count=%d error=%s",
                        fn.name,
                        message.message_id,
                        message.delivery_count,
                        error,
                        exc_info=exc,
                    )
                    outcome, reason = await self._settle_abandon(message)
                else:
                    outcome = await self._settle_success(message)
                finally:
                    renewal.cancel()
        finally:
            stats.in_flight -= 1
            _sent_here.reset(recording)
        self._count(stats, outcome)
        stats.answers_sent += sum(1 for m in sent if m.correlation_id is not None)
        record = FunctionRun(
            function=fn.name,
            queue=fn.queue,
            message_id=message.message_id,
            session_id=message.session_id,
            delivery_count=message.delivery_count,
            outcome=outcome,
            seconds=time.monotonic() - started,
            error=error,
            dead_letter_reason=reason,
            outputs={name: out.get() for name, out in outputs.items()},
            sent=tuple(sent),
        )
        retry = record.retry
        if retry is not None:
            stats.retries_scheduled += 1
        log.info(
            "invocation function=%s message_id=%s session_id=%s delivery_count=%d outcome=%s seconds=%.3f%s",
            fn.name,
            message.message_id,
            message.session_id,
            message.delivery_count,
            outcome.value,
            record.seconds,
            f" retry_scheduled={retry.message_id}" if retry is not None else "",
        )
        if self._on_outcome is not None:
            try:
                self._on_outcome(record)
            except Exception:
                log.exception("the on_outcome callback failed for message_id=%s", message.message_id)

    async def _call(self, fn: ServiceBusFunction, message: StoredMessage, outputs: Mapping[str, _Out]) -> None:
        kwargs: dict[str, Any] = {fn.arg_name: self._service_bus_message(fn, message), **outputs}
        if fn.wants_context and "context" not in kwargs:
            kwargs["context"] = _Context(fn.name, self._function_directory, message)
        if fn.is_async:
            await fn.user_function(**kwargs)
        else:
            result = await asyncio.to_thread(fn.user_function, **kwargs)
            if inspect.isawaitable(result):
                await result

    def _service_bus_message(self, fn: ServiceBusFunction, message: StoredMessage) -> ServiceBusMessage:
        properties = dict(message.application_properties)
        metadata = {
            "MessageId": Datum(message.message_id, "string"),
            "SessionId": Datum(message.session_id, "string"),
            "DeliveryCount": Datum(message.delivery_count, "int"),
            "SequenceNumber": Datum(message.sequence_number, "int"),
            "EnqueuedTimeUtc": Datum(message.enqueued_time.isoformat(), "string"),
            "LockToken": Datum(message.lock_token, "string"),
            "ApplicationProperties": Datum(json.dumps(properties), "json"),
            "UserProperties": Datum(json.dumps(properties), "json"),
        }
        return ServiceBusMessage(
            body=message.body,
            trigger_metadata=metadata,
            application_properties=properties,
            user_properties=dict(properties),
            message_id=message.message_id,
            session_id=message.session_id,
            delivery_count=message.delivery_count,
            enqueued_time_utc=message.enqueued_time,
            enqueued_sequence_number=message.sequence_number,
            sequence_number=message.sequence_number,
            lock_token=message.lock_token,
            locked_until=message.locked_until_time,
            to=fn.queue,
        )

    async def _settle_success(self, message: StoredMessage) -> Settlement:
        if not self.options.auto_complete_messages:
            return Settlement.LEFT_LOCKED
        try:
            await self.backend.complete(_token(message))
        except _SETTLEMENT_ERRORS as settle_error:
            _settlement_failed(message, settle_error)
            return Settlement.LOCK_LOST
        return Settlement.COMPLETED

    async def _settle_abandon(self, message: StoredMessage) -> tuple[Settlement, str | None]:
        try:
            disposition = await self.backend.abandon(_token(message))
        except _SETTLEMENT_ERRORS as settle_error:
            _settlement_failed(message, settle_error)
            return Settlement.LOCK_LOST, None
        if disposition is Disposition.DEAD_LETTERED:
            return Settlement.DEAD_LETTERED, "MaxDeliveryCountExceeded"
        return Settlement.ABANDONED, None

    async def _settle_dead_letter(
        self, message: StoredMessage, exc: DeadLetterError
    ) -> tuple[Settlement, str | None, str | None]:
        log.warning(
            "dead-lettering message_id=%s reason=%s description=%s", message.message_id, exc.reason, exc.description
        )
        error = f"DeadLetterError: {exc}"
        try:
            await self.backend.dead_letter(_token(message), exc.reason, exc.description)
        except _SETTLEMENT_ERRORS as settle_error:
            _settlement_failed(message, settle_error)
            return Settlement.LOCK_LOST, None, error
        return Settlement.DEAD_LETTERED, exc.reason, error

    async def _renew_locks(
        self, fn: ServiceBusFunction, message: StoredMessage, lease: SessionLease | None, started: float
    ) -> None:
        """Renew the message (or session) lock at half its duration, up to maxAutoLockRenewalDuration."""
        interval = self._queues[fn.queue].lock_duration / 2
        deadline = started + self.options.max_auto_lock_renewal_duration
        while time.monotonic() + interval < deadline:
            await asyncio.sleep(interval)
            try:
                if lease is not None:
                    await self.backend.renew_session_lock(lease)
                else:
                    await self.backend.renew_lock(_token(message))
            except _SETTLEMENT_ERRORS:
                log.warning("lock lost while renewing function=%s message_id=%s", fn.name, message.message_id)
                return
            log.debug("lock renewed function=%s message_id=%s", fn.name, message.message_id)

    @staticmethod
    def _count(stats: FunctionStats, outcome: Settlement) -> None:
        if outcome is Settlement.COMPLETED:
            stats.completed += 1
        elif outcome is Settlement.ABANDONED:
            stats.abandoned += 1
        elif outcome is Settlement.DEAD_LETTERED:
            stats.dead_lettered += 1
        elif outcome is Settlement.LEFT_LOCKED:
            stats.left_locked += 1
        else:
            stats.lock_lost += 1


_SETTLEMENT_ERRORS = (LocalQueueError, sqlite3.OperationalError)
"""Lock lost, or the queue file busy beyond its timeout: either way the message will be redelivered."""


def _settlement_failed(message: StoredMessage, exc: Exception) -> None:
    log.warning("settlement failed, the message will be redelivered message_id=%s error=%s", message.message_id, exc)


def _token(message: StoredMessage) -> str:
    if message.lock_token is None:
        raise LockLostError(f"message {message.message_id} was not received with a lock")
    return message.lock_token


class _Context(func.Context):
    """The `context` argument for functions that ask for it."""

    def __init__(self, function_name: str, function_directory: str, message: StoredMessage) -> None:
        self._invocation_id = str(uuid.uuid4())
        self._function_name = function_name
        self._function_directory = function_directory
        self._retry = _RetryContext(message.delivery_count - 1)

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def thread_local_storage(self) -> Any:
        return None

    @property
    def function_name(self) -> str:
        return self._function_name

    @property
    def function_directory(self) -> str:
        return self._function_directory

    @property
    def trace_context(self) -> Any:
        return None

    @property
    def retry_context(self) -> Any:
        return self._retry


@dataclass(frozen=True, slots=True)
class _RetryContext:
    retry_count: int
    max_retry_count: int = 0
    exception: Any = None
