"""Live updates through Azure SignalR Service in serverless mode: negotiate, pushes, the live page.

`register_live(app, bot, settings)` (called by `function_app.py`) adds, when a SignalR Service is configured:

    live_negotiate  POST /api/live/negotiate   httpTrigger (anonymous: the function authenticates)
                    + signalRConnectionInfo    hubName=<RELAYBUS_LIVE_HUB>, connectionStringSetting=
                                               AzureSignalRConnectionString, userId={headers.x-ms-signalr-userid}
                    + signalR (out)            the same hub and connection: adds the user to `tenant:<tid>`
    live_page       GET  /api/live              the live page (functions/static/live.html)
    live_assets     GET  /api/live/assets/{name}  its script, style and the @microsoft/signalr bundle

and the bot's activity feed (`activity_feed`, a middleware): each envelope's `received`, the handlers'
`outcome` and every `reply` they send, pushed to the envelope's tenant group.

Negotiate. The `signalRConnectionInfo` binding mints a client token for the user id the request's
`x-ms-signalr-userid` header names; the function returns it only after the bearer token validated
(`functions.auth`: signature against the issuer's JWKS, issuer, audience, expiry, tenant allowlist) and the
header is exactly the validated identity's user id (`<tid>:<oid>`). The group comes from the token's `tid`
alone: no parameter of the request names it. Every refusal is a 401 (503 when the issuer's keys cannot be
read) with `{"error": <reason>, "detail": …}` and no connection info. (On Azure a request without the header
fails in the binding, before the function runs, with a 500: the page always sends it.)

Pushes. `ctx.live.send(target, payload)` (`LiveChannel`) sends to the envelope's tenant group, `to_user=` to
one user of that tenant, `group=` to a named group of that tenant (`tenant:<tid>/<name>`); there is no
broadcast, and a Slack workspace's tenant is its team id unless `RELAYBUS_LIVE_TENANT_ALIASES` maps it to an
Entra tenant. A Python function cannot add output bindings per handler call, so pushes go where the `signalR`
output binding's messages go, by the same data-plane REST API the extension calls (`POST
/api/v1/hubs/{hub}/groups/{group}`, `…/users/{user}`, `PUT|DELETE …/groups/{group}/users/{user}`), as the
function app's identity (an Entra token for `https://signalr.azure.com/.default`) or, locally, with the
connection string's access key. Pushes are best-effort: `send` never raises and returns whether the service
took the message. A payload that cannot be serialised or exceeds the service's 1 MB, a service that throttles
(429: pushes are skipped until its `Retry-After`), is down (skipped for a backoff that doubles up to 30 s) or
refuses, is a counter (`LiveStats`) and a log line; the handler goes on, and its message settles as it would
without live updates (never retried because of a push).

This module imports only the standard library and azure-functions at import: httpx, PyJWT and azure-identity
are imported when the first push or negotiate needs them (cold start).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

import azure.functions as func

from functions.settings import FunctionSettings
from shared.errors import ConfigurationError
from shared.redact import redact, redact_url
from shared.urls import check_https_url, split

if TYPE_CHECKING:
    import httpx

    from functions.auth import Identity, TokenValidator
    from functions.bot import Bot
    from functions.context import Context

log = logging.getLogger(__name__)

CONNECTION_SETTING = "AzureSignalRConnectionString"
USER_ID_HEADER = "x-ms-signalr-userid"
USER_ID_BINDING = "{headers.x-ms-signalr-userid}"
TENANT_GROUP = "tenant:{tenant}"
MAX_MESSAGE_BYTES = 1024 * 1024
"""Azure SignalR Service's limit on one message sent through the REST API."""
PUSH_TIMEOUT = 2.0
"""Seconds one push may take before it counts as `unavailable` (a handler waits at most this long)."""
SIGNALR_SCOPE = "https://signalr.azure.com/.default"
ACTIVITY_TARGET = "activity"
"""The client method the activity feed invokes (`connection.on("activity", …)` on the page)."""
TEXT_WIDTH = 80
DEFAULT_ISSUERS = ("https://login.microsoftonline.com/{tid}/v2.0", "https://sts.windows.net/{tid}/")
DEFAULT_JWKS_URL = "https://login.microsoftonline.com/common/discovery/v2.0/keys"
STATIC_DIR = Path(__file__).resolve().parent / "static"
DEFAULT_CLIENT_JS = STATIC_DIR / "vendor" / "signalr.min.js"
ASSETS: Mapping[str, tuple[str, str]] = {
    "live.js": ("live.js", "text/javascript"),
    "live.css": ("live.css", "text/css"),
    "signalr.min.js": ("", "text/javascript"),
}
"""The only files `live_assets` serves: name -> (file under static/, content type); "" is the client bundle."""

_HUB = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,127}")
TENANT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""Tenant ids (Entra GUIDs, Slack team ids) and group names of one tenant: no `:` or `/`, so that one tenant's
group can never be spelled as another's."""
USER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
_TARGET = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,127}")


# -- settings ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LiveConfig:
    """The live update settings, checked (`LiveConfig.from_settings`)."""

    hub: str
    endpoint: str
    """The service's base URL (`https://<name>.service.signalr.net`, or the local service's)."""
    access_key: str | None = field(repr=False)
    """Signs the data-plane tokens (connection string); None: the managed identity."""
    client_id: str | None
    audiences: tuple[str, ...]
    issuers: tuple[str, ...]
    jwks_url: str
    tenants: frozenset[str] | None
    aliases: Mapping[str, str]
    client_js: Path

    @property
    def identity(self) -> bool:
        return self.access_key is None

    @property
    def connect_sources(self) -> tuple[str, str]:
        """The service's origins, http(s) and ws(s): what the page's Content-Security-Policy lets it reach."""
        parts = split(self.endpoint)
        assert parts is not None
        port = f":{parts.port}" if parts.port else ""
        origin = f"{parts.scheme}://{parts.host}{port}"
        return origin, ("wss" if parts.scheme == "https" else "ws") + origin[len(parts.scheme) :]

    @classmethod
    def from_settings(cls, settings: FunctionSettings) -> LiveConfig | None:
        """None when no SignalR Service is configured (live updates off); `ConfigurationError` when wrong."""
        connection = settings.signalr_connection.get_secret_value() if settings.signalr_connection else None
        service_uri = settings.signalr_service_uri
        if connection is None and service_uri is None:
            return None
        if connection is not None and service_uri is not None:
            raise ConfigurationError(
                CONNECTION_SETTING,
                f"is set together with {CONNECTION_SETTING}__serviceUri: the connection string locally (the dev "
                "stack's SignalR Service), the service URI with the managed identity in Azure, not both",
            )
        if connection is not None:
            endpoint, key = parse_connection_string(connection)
        else:
            assert service_uri is not None
            try:
                check_https_url(service_uri, "https://<name>.service.signalr.net")
            except ValueError as exc:
                raise ConfigurationError(f"{CONNECTION_SETTING}__serviceUri", str(exc)) from None
            endpoint, key = service_uri.rstrip("/"), None
        if not _HUB.fullmatch(settings.live_hub):
            raise ConfigurationError(
                "RELAYBUS_LIVE_HUB", "must start with a letter and hold only letters, digits and _ (a SignalR hub name)"
            )
        audiences = _items(settings.live_audience)
        if not audiences:
            raise ConfigurationError(
                "RELAYBUS_LIVE_AUDIENCE",
                "is required when live updates are on (a SignalR Service is configured): the audience of the page "
                "users' tokens (the app registration's client id, or its api://… URI)",
            )
        issuers = _items(settings.live_issuers) or DEFAULT_ISSUERS
        for issuer in issuers:
            try:
                check_https_url(issuer.replace("{tid}", "tenant"), "https://login.microsoftonline.com/{tid}/v2.0")
            except ValueError as exc:
                raise ConfigurationError("RELAYBUS_LIVE_ISSUERS", f"{issuer[:80]!r} {exc}") from None
        jwks_url = settings.live_jwks_url or DEFAULT_JWKS_URL
        try:
            check_https_url(jwks_url, DEFAULT_JWKS_URL)
        except ValueError as exc:
            raise ConfigurationError("RELAYBUS_LIVE_JWKS_URL", str(exc)) from None
        tenants = _items(settings.live_tenants)
        for tenant in tenants:
            if not TENANT_ID.fullmatch(tenant):
                raise ConfigurationError("RELAYBUS_LIVE_TENANTS", f"lists tenant ids separated by commas: {tenant!r}")
        return cls(
            hub=settings.live_hub,
            endpoint=endpoint,
            access_key=key,
            client_id=settings.signalr_client_id or None,
            audiences=audiences,
            issuers=issuers,
            jwks_url=jwks_url,
            tenants=frozenset(tenants) if tenants else None,
            aliases=_aliases(settings.live_tenant_aliases),
            client_js=Path(settings.live_client_js) if settings.live_client_js else DEFAULT_CLIENT_JS,
        )


def _items(value: str | None) -> tuple[str, ...]:
    return tuple(item.strip() for item in (value or "").split(",") if item.strip())


def _aliases(value: str | None) -> dict[str, str]:
    found: dict[str, str] = {}
    for item in _items(value):
        source, sep, target = (part.strip() for part in item.partition("="))
        if not sep or not TENANT_ID.fullmatch(source) or not TENANT_ID.fullmatch(target):
            raise ConfigurationError(
                "RELAYBUS_LIVE_TENANT_ALIASES", f"lists <slack team id>=<tenant id> pairs separated by commas: {item!r}"
            )
        found[source] = target
    return found


def parse_connection_string(value: str, setting: str = CONNECTION_SETTING) -> tuple[str, str]:
    """(endpoint, access key) of `Endpoint=…;AccessKey=…;Version=1.0;` (an optional `Port=`); the key is never
    echoed in an error, which names `setting`."""
    parts: dict[str, str] = {}
    for item in value.split(";"):
        name, sep, text = item.partition("=")
        if sep and name.strip():
            parts[name.strip().lower()] = text.strip()
    endpoint = parts.get("endpoint", "").rstrip("/")
    key = parts.get("accesskey", "")
    if parts.get("authtype"):
        raise ConfigurationError(
            setting,
            f"names an AuthType: for the managed identity set {setting}__serviceUri instead",
        )
    if not endpoint or not key:
        raise ConfigurationError(setting, "must be Endpoint=<url>;AccessKey=<key>;Version=1.0;")
    port = parts.get("port")
    if port:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigurationError(setting, "names a Port that is not a port number")
        parsed = split(endpoint)
        if parsed is not None and parsed.port is None:
            endpoint = f"{endpoint}:{port}"
    try:
        check_https_url(endpoint, "https://<name>.service.signalr.net")
    except ValueError as exc:
        raise ConfigurationError(setting, f"Endpoint {exc}") from None
    return endpoint, key


_configs: dict[int, tuple[FunctionSettings, LiveConfig | None]] = {}


def live_config(settings: FunctionSettings) -> LiveConfig | None:
    """`LiveConfig.from_settings`, once per settings object."""
    cached = _configs.get(id(settings))
    if cached is not None and cached[0] is settings:
        return cached[1]
    config = LiveConfig.from_settings(settings)
    _configs[id(settings)] = (settings, config)
    return config


# -- what travels: the signalR output binding's JSON ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignalRAction:
    """One item of the `signalR` output binding: a message (`target`, `arguments`, to `group_name` or
    `user_id`) or a group action (`action` add/remove of `user_id` to/from `group_name`)."""

    target: str | None = None
    arguments: tuple[Any, ...] = ()
    group_name: str | None = None
    user_id: str | None = None
    action: Literal["add", "remove"] | None = None

    @classmethod
    def from_binding(cls, item: Mapping[str, Any]) -> SignalRAction:
        """An item as a function sets it on the output binding (camelCase JSON); `ValueError` if it is none."""
        action = item.get("action")
        group = item.get("groupName")
        user = item.get("userId")
        if action is not None:
            if str(action).lower() not in ("add", "remove"):
                raise ValueError(f"action must be add or remove, not {str(action)[:20]!r}")
            if not isinstance(group, str) or not isinstance(user, str):
                raise ValueError("a group action names a userId and a groupName")
            return cls(group_name=group, user_id=user, action="add" if str(action).lower() == "add" else "remove")
        target = item.get("target")
        arguments = item.get("arguments", [])
        if not isinstance(target, str) or not isinstance(arguments, list):
            raise ValueError("a message has a target (string) and arguments (list)")
        return cls(
            target=target,
            arguments=tuple(arguments),
            group_name=group if isinstance(group, str) else None,
            user_id=user if isinstance(user, str) else None,
        )

    def request(self, hub: str) -> tuple[str, str, bytes | None]:
        """(method, path, body) of the data-plane REST call (v1) that does this action."""
        base = f"/api/v1/hubs/{hub}"
        if self.action is not None:
            assert self.group_name is not None and self.user_id is not None
            path = f"{base}/groups/{_segment(self.group_name)}/users/{_segment(self.user_id)}"
            return ("PUT" if self.action == "add" else "DELETE"), path, None
        body = json.dumps(
            {"target": self.target, "arguments": list(self.arguments)},
            ensure_ascii=False,
            allow_nan=False,
            separators=(",", ":"),
        ).encode()
        if self.group_name is not None:
            return "POST", f"{base}/groups/{_segment(self.group_name)}", body
        if self.user_id is not None:
            return "POST", f"{base}/users/{_segment(self.user_id)}", body
        return "POST", base, body


def _segment(value: str) -> str:
    return quote(value, safe=":")


def access_key_token(key: str, audience: str, *, lifetime: float = 3600.0, **claims: Any) -> str:
    """An HS256 token signed with a SignalR access key: what the service accepts for `audience` (the REST URL,
    or `<endpoint>/client/?hub=<hub>` for a client connection, with `nameid` the user id)."""
    import jwt

    now = int(time.time())
    return jwt.encode({**claims, "aud": audience, "iat": now, "exp": now + int(lifetime)}, key, algorithm="HS256")


# -- the data-plane client ----------------------------------------------------------------------------------------


class PushError(Exception):
    """A push the service did not take; `reason`: unserialisable, too_large, throttled, unavailable, refused."""

    def __init__(self, reason: str, detail: str, retry_after: float | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.retry_after = retry_after


class _Credential:
    """The Authorization header of a data-plane request: an access-key token, or the identity's Entra token."""

    def __init__(self, access_key: str | None, client_id: str | None) -> None:
        self._access_key = access_key
        self._client_id = client_id
        self._signed: dict[str, tuple[str, float]] = {}
        self._identity: Any = None
        self._token: tuple[str, float] | None = None

    async def header(self, url: str) -> str:
        now = time.time()
        key = self._access_key
        if key is not None:
            cached = self._signed.get(url)
            if cached is None or cached[1] - now < 300:
                if len(self._signed) > 1024:
                    self._signed.clear()
                cached = (access_key_token(key, url), now + 3600)
                self._signed[url] = cached
            return f"Bearer {cached[0]}"
        if self._token is None or self._token[1] - now < 300:
            if self._identity is None:
                from azure.identity.aio import DefaultAzureCredential

                client_id = self._client_id
                self._identity = (
                    DefaultAzureCredential(managed_identity_client_id=client_id)
                    if client_id
                    else DefaultAzureCredential()
                )
            token = await self._identity.get_token(SIGNALR_SCOPE)
            self._token = (token.token, float(token.expires_on))
        return f"Bearer {self._token[0]}"

    async def aclose(self) -> None:
        if self._identity is not None:
            await self._identity.close()
            self._identity = None


class LiveService:
    """SignalR Service's data-plane REST API (what the `signalR` output binding calls), one per event loop.

    `access_key`: sign each request's token with the connection string's key; None: the managed identity
    (`client_id`, or DefaultAzureCredential's choice)."""

    def __init__(
        self,
        endpoint: str,
        hub: str,
        *,
        access_key: str | None = None,
        client_id: str | None = None,
        timeout: float = PUSH_TIMEOUT,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.hub = hub
        self.timeout = timeout
        self._credential = _Credential(access_key, client_id)
        self._http: httpx.AsyncClient | None = None

    async def perform(self, action: SignalRAction) -> None:
        """Do `action`; `PushError` when the service did not take it."""
        import httpx

        try:
            method, path, body = action.request(self.hub)
        except (TypeError, ValueError) as exc:
            raise PushError("unserialisable", f"{type(exc).__name__}: {str(exc)[:120]}") from None
        if body is not None and len(body) > MAX_MESSAGE_BYTES:
            raise PushError("too_large", f"{len(body)} bytes (the service takes at most {MAX_MESSAGE_BYTES})")
        url = self.endpoint + path
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.timeout, follow_redirects=False)
        headers = {"Authorization": await self._credential.header(url)}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            response = await self._http.request(method, url, content=body, headers=headers)
        except httpx.TimeoutException:
            raise PushError("unavailable", f"no answer within {self.timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise PushError("unavailable", type(exc).__name__) from None
        status = response.status_code
        if status < 300:
            return
        if status == 429:
            raise PushError("throttled", "429 Too Many Requests", _retry_after(response.headers.get("Retry-After")))
        if status == 413:
            raise PushError("too_large", "413 from the service")
        if status >= 500:
            raise PushError("unavailable", f"{status} from the service")
        raise PushError("refused", f"{status} from the service: {redact(response.text[:160])}")

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        await self._credential.aclose()


def _retry_after(value: str | None) -> float:
    try:
        seconds = float(value) if value else 1.0
    except ValueError:
        seconds = 1.0
    return min(max(seconds, 0.1), 60.0) if seconds == seconds else 1.0  # NaN: 1 s


# -- best-effort publishing -------------------------------------------------------------------------------------


@dataclass
class LiveStats:
    """What this process pushed, and why what it did not push was dropped."""

    sent: int = 0
    unserialisable: int = 0
    too_large: int = 0
    throttled: int = 0
    unavailable: int = 0
    refused: int = 0
    skipped: int = 0
    """Not tried: the service throttled or was down a moment ago (see `LivePublisher`)."""
    invalid: int = 0
    """A call that names no tenant, or a user, group or target that is not a plain name."""
    disabled: int = 0
    """Live updates are off (no SignalR Service configured)."""

    @property
    def failed(self) -> int:
        return self.unserialisable + self.too_large + self.throttled + self.unavailable + self.refused


class LivePublisher:
    """Pushes of one process: never raises, counts and logs what it drops, and stops trying for a moment after
    the service throttled (its `Retry-After`) or was unreachable (1 s, doubling up to 30 s), so that a service in
    trouble does not slow the handlers down."""

    def __init__(self, config: LiveConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.stats = LiveStats()
        self._clock = clock
        self._services: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LiveService] = weakref.WeakKeyDictionary()
        self._paused_until = 0.0
        self._pause_reason = ""
        self._backoff = 0.0
        self._logged: dict[str, float] = {}

    def service(self) -> LiveService:
        loop = asyncio.get_running_loop()
        service = self._services.get(loop)
        if service is None:
            config = self.config
            service = self._services[loop] = LiveService(
                config.endpoint, config.hub, access_key=config.access_key, client_id=config.client_id
            )
        return service

    async def publish(self, action: SignalRAction, what: str = "") -> bool:
        now = self._clock()
        if now < self._paused_until:
            self.stats.skipped += 1
            self._warn("skipped", "live push skipped (%s, for %.1f s more) %s", self._pause_reason,
                       self._paused_until - now, what)  # fmt: skip
            return False
        try:
            await self.service().perform(action)
        except PushError as exc:
            self._count(exc)
            self._warn(exc.reason, "live push dropped (%s) %s: %s", exc.reason, what, exc.detail)
            return False
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # whatever else: still never the handler's problem
            self.stats.unavailable += 1
            self._warn("error", "live push failed %s: %s: %s", what, type(exc).__name__, redact(str(exc))[:160])
            return False
        self.stats.sent += 1
        self._backoff = 0.0
        return True

    def _count(self, exc: PushError) -> None:
        setattr(self.stats, exc.reason, getattr(self.stats, exc.reason) + 1)
        now = self._clock()
        if exc.reason == "throttled":
            self._paused_until = now + (exc.retry_after or 1.0)
            self._pause_reason = "the service throttled"
        elif exc.reason == "unavailable":
            self._backoff = min(max(self._backoff * 2, 1.0), 30.0)
            self._paused_until = now + self._backoff
            self._pause_reason = "the service was unreachable"

    def _warn(self, reason: str, message: str, *args: Any) -> None:
        """A warning per reason at most every 10 s (debug lines in between), each with the counters."""
        now = self._clock()
        level = logging.WARNING if now - self._logged.get(reason, -1e9) >= 10.0 else logging.DEBUG
        if level == logging.WARNING:
            self._logged[reason] = now
        log.log(level, message + " (live stats: %s)", *args, self.stats)

    async def aclose(self) -> None:
        services = list(self._services.values())
        self._services = weakref.WeakKeyDictionary()
        for service in services:
            await service.aclose()


_publishers: dict[int, LivePublisher] = {}


def publisher(config: LiveConfig) -> LivePublisher:
    """The process's publisher for these settings."""
    found = _publishers.get(id(config))
    if found is None or found.config is not config:
        found = _publishers[id(config)] = LivePublisher(config)
    return found


def live_stats(settings: FunctionSettings) -> LiveStats | None:
    """The push counters of this process for these settings (None: live updates off)."""
    config = live_config(settings)
    return None if config is None else publisher(config).stats


async def aclose() -> None:
    """Close the data-plane clients of this process (the local functions host does at shutdown)."""
    for found in list(_publishers.values()):
        await found.aclose()


# -- ctx.live -----------------------------------------------------------------------------------------------------


class LiveChannel:
    """`ctx.live`: pushes to the envelope's tenant (see the module docstring). Every method is best-effort: it
    returns whether the service took the push and never raises."""

    def __init__(self, publisher: LivePublisher | None, tenant: str | None, *, what: str = "") -> None:
        self._publisher = publisher
        self.tenant = tenant
        """The tenant pushes go to: the envelope's (a Slack team id mapped by RELAYBUS_LIVE_TENANT_ALIASES)."""
        self._what = what

    @classmethod
    def for_context(cls, ctx: Context) -> LiveChannel:
        envelope = ctx.envelope
        what = f"dedupe_key={envelope.dedupe_key}"
        try:
            config = live_config(ctx.settings)
        except ConfigurationError as exc:
            log.error("live updates are off: %s", exc)
            config = None
        if config is None:
            return cls(None, envelope.tenant, what=what)
        tenant = config.aliases.get(envelope.tenant or "", envelope.tenant)
        return cls(publisher(config), tenant, what=what)

    @property
    def enabled(self) -> bool:
        return self._publisher is not None

    @property
    def group(self) -> str | None:
        """The tenant's group (`tenant:<tid>`): every signed-in page of the tenant is in it."""
        if self.tenant is None or not TENANT_ID.fullmatch(self.tenant):
            return None
        return TENANT_GROUP.format(tenant=self.tenant)

    def user_id(self, user: str) -> str:
        """The SignalR user id of a user of this tenant (`<tid>:<oid>`, as negotiate assigns it)."""
        return f"{self.tenant}:{user}"

    def group_name(self, name: str) -> str:
        """A named group of this tenant: `tenant:<tid>/<name>`."""
        return f"{self.group}/{name}"

    async def send(self, target: str, payload: Any, *, to_user: str | None = None, group: str | None = None) -> bool:
        """Invoke `target(payload)` on the tenant's pages (or one user's, `to_user`, or a named group's)."""
        base = self._base()
        if base is None:
            return False
        problem = None
        if not isinstance(target, str) or not _TARGET.fullmatch(target):
            problem = f"target {str(target)[:40]!r} is not a plain name"
        elif to_user is not None and group is not None:
            problem = "both to_user and group"
        elif to_user is not None and not (isinstance(to_user, str) and USER_ID.fullmatch(to_user)):
            problem = f"to_user {str(to_user)[:40]!r} is not a user id"
        elif group is not None and not (isinstance(group, str) and TENANT_ID.fullmatch(group)):
            problem = f"group {str(group)[:40]!r} is not a plain name"
        if problem is not None:
            return self._invalid(problem)
        if to_user is not None:
            action = SignalRAction(target=target, arguments=(payload,), user_id=self.user_id(to_user))
        else:
            action = SignalRAction(
                target=target, arguments=(payload,), group_name=base if group is None else self.group_name(group)
            )
        assert self._publisher is not None
        return await self._publisher.publish(action, f"target={target} {self._what}")

    async def add_to_group(self, user: str, group: str) -> bool:
        """Put a user of this tenant into a named group of this tenant (all their connections, now and later)."""
        return await self._membership("add", user, group)

    async def remove_from_group(self, user: str, group: str) -> bool:
        return await self._membership("remove", user, group)

    async def _membership(self, action: Literal["add", "remove"], user: str, group: str) -> bool:
        if self._base() is None:
            return False
        if not (isinstance(user, str) and USER_ID.fullmatch(user)) or not (
            isinstance(group, str) and TENANT_ID.fullmatch(group)
        ):
            return self._invalid(f"{action}: user {str(user)[:40]!r} or group {str(group)[:40]!r} is not a plain name")
        item = SignalRAction(user_id=self.user_id(user), group_name=self.group_name(group), action=action)
        assert self._publisher is not None
        return await self._publisher.publish(item, f"{action} {self._what}")

    def _base(self) -> str | None:
        if self._publisher is None:
            _disabled.disabled += 1
            return None
        group = self.group
        if group is None:
            self._publisher.stats.invalid += 1
            log.debug("live push not sent: the envelope names no tenant %s", self._what)
        return group

    def _invalid(self, problem: str) -> bool:
        assert self._publisher is not None
        self._publisher.stats.invalid += 1
        log.error("live push refused (%s) %s", problem, self._what)
        return False


_disabled = LiveStats()
"""Pushes asked for while live updates are off (`disabled`)."""


# -- the bot's activity feed ------------------------------------------------------------------------------------


def shorten(text: str, width: int = TEXT_WIDTH) -> str:
    """One line of at most `width` characters, secrets redacted ("…" where cut)."""
    text = " ".join(redact(text).split())
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def activity_event(ctx: Context, event: str, **extra: Any) -> dict[str, Any]:
    """What the page shows of an envelope: platform, kind, type, conversation, user, its text shortened."""
    envelope = ctx.envelope
    payload = envelope.payload
    conversation: Any = getattr(ctx, "channel_id", None)
    user: Any = getattr(ctx, "user_id", None)
    if conversation is None and isinstance(payload.get("conversation"), dict):
        conversation = payload["conversation"].get("id")
    if user is None and isinstance(payload.get("from"), dict):
        user = payload["from"].get("name") or payload["from"].get("id")
    try:
        text = ctx.text(strip_mentions=True)
    except Exception:
        text = ""
    return {
        "event": event,
        "id": hashlib.sha256(envelope.dedupe_key.encode()).hexdigest()[:12],
        "platform": envelope.platform.value,
        "kind": envelope.kind.value,
        "type": envelope.event_type,
        "conversation": shorten(str(conversation), 40) if conversation else None,
        "user": shorten(str(user), 40) if user else None,
        "text": shorten(text) if text else "",
        "at": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        **extra,
    }


_REPLY_HELPERS = ("say", "respond", "reply", "send", "send_card", "update")


def _reply_text(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    for value in (*args, kwargs.get("text"), kwargs.get("activity")):
        if isinstance(value, str):
            return value
        if isinstance(value, Mapping) and isinstance(value.get("text"), str):
            return str(value["text"])
    return "(a card or blocks)"


def _tap_replies(ctx: Context, push: Callable[[dict[str, Any]], Awaitable[bool]]) -> None:
    """Report each reply the handlers send through the context's helpers (say, respond, reply, send, …)."""
    for name in _REPLY_HELPERS:
        original = getattr(type(ctx), name, None)
        if original is None or name in vars(ctx):
            continue
        bound = getattr(ctx, name)

        def tapped(*args: Any, _bound: Any = bound, _name: str = name, **kwargs: Any) -> Awaitable[Any]:
            async def run() -> Any:
                result = await _bound(*args, **kwargs)
                await push(activity_event(ctx, "reply", via=_name, reply=shorten(_reply_text(args, kwargs))))
                return result

            return run()

        setattr(ctx, name, tapped)


async def activity_feed(ctx: Context, next_: Callable[[], Awaitable[Any]]) -> Any:
    """Middleware: push `received`, every `reply`, then the `outcome` (ok or the error's type, how long the
    handlers took, the answer's type) to the envelope's tenant group. The handlers' result, answer and
    exceptions pass through unchanged."""
    live = ctx.live
    if not live.enabled:
        return await next_()

    async def push(event: dict[str, Any]) -> bool:
        return await live.send(ACTIVITY_TARGET, event)

    await push(activity_event(ctx, "received", attempt=ctx.attempt))
    _tap_replies(ctx, push)
    started = time.perf_counter()
    try:
        answer = await next_()
    except BaseException as exc:
        if not isinstance(exc, asyncio.CancelledError):
            ms = round((time.perf_counter() - started) * 1000, 1)
            await push(activity_event(ctx, "outcome", outcome="error", error=type(exc).__name__, ms=ms))
        raise
    ms = round((time.perf_counter() - started) * 1000, 1)
    answered = type(answer).__name__ if answer is not None else None
    await push(activity_event(ctx, "outcome", outcome="ok", answer=answered, ms=ms))
    return answer


# -- the HTTP functions -------------------------------------------------------------------------------------------

_validators: dict[int, tuple[LiveConfig, TokenValidator]] = {}


def token_validator(config: LiveConfig) -> TokenValidator:
    """The process's validator for these settings (its JWKS cache shared by every request)."""
    found = _validators.get(id(config))
    if found is not None and found[0] is config:
        return found[1]
    from functions.auth import JwksCache, TokenValidator

    validator = TokenValidator(
        audiences=config.audiences, issuers=config.issuers, jwks=JwksCache(config.jwks_url), tenants=config.tenants
    )
    _validators[id(config)] = (config, validator)
    return validator


def _refuse(reason: str, detail: str, status: int = 401) -> func.HttpResponse:
    headers = {"Cache-Control": "no-store"}
    if status == 401:
        headers["WWW-Authenticate"] = f'Bearer error="invalid_token", error_description="{reason}"'
    return func.HttpResponse(
        json.dumps({"error": reason, "detail": detail}),
        status_code=status,
        headers=headers,
        mimetype="application/json",
    )


async def negotiate(
    config: LiveConfig, req: func.HttpRequest, connection_info: str, actions: func.Out[str]
) -> func.HttpResponse:
    """The negotiate function's body (see the module docstring)."""
    from functions.auth import AuthError, bearer

    try:
        identity: Identity = await token_validator(config).validate(bearer(req.headers.get("Authorization")))
    except AuthError as exc:
        log.info("negotiate refused reason=%s: %s", exc.reason, exc.detail)
        return _refuse(exc.reason, exc.detail, exc.status)
    if not TENANT_ID.fullmatch(identity.tenant) or not USER_ID.fullmatch(identity.user):
        return _refuse("bad_identity", "the token's tid or oid is not a plain id")
    claimed = req.headers.get(USER_ID_HEADER)
    if claimed != identity.user_id:
        log.info("negotiate refused reason=user_mismatch tenant=%s", identity.tenant)
        return _refuse("user_mismatch", f"send {USER_ID_HEADER}: <tid>:<oid> of the token's own user")
    group = TENANT_GROUP.format(tenant=identity.tenant)
    actions.set(json.dumps({"userId": identity.user_id, "groupName": group, "action": "add"}))
    log.info("negotiate tenant=%s group=%s", identity.tenant, group)
    return func.HttpResponse(
        connection_info, status_code=200, mimetype="application/json", headers={"Cache-Control": "no-store"}
    )


_static_cache: dict[Path, bytes] = {}


def _static(path: Path) -> bytes | None:
    data = _static_cache.get(path)
    if data is None:
        try:
            data = path.read_bytes()
        except OSError:
            return None
        _static_cache[path] = data
    return data


def page_headers(config: LiveConfig) -> dict[str, str]:
    """The live page's security headers: only its own scripts, and connections to this app and the service."""
    http_origin, ws_origin = config.connect_sources
    policy = (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src 'self' {http_origin} {ws_origin}; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'self' https://teams.microsoft.com https://*.teams.microsoft.com https://*.cloud.microsoft"
    )
    return {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }


def page(config: LiveConfig) -> func.HttpResponse:
    html = _static(STATIC_DIR / "live.html")
    if html is None:
        return func.HttpResponse("the live page is missing from this deployment", status_code=500)
    return func.HttpResponse(html, status_code=200, mimetype="text/html", charset="utf-8", headers=page_headers(config))


def asset(config: LiveConfig, name: str) -> func.HttpResponse:
    entry = ASSETS.get(name)
    if entry is None:
        return func.HttpResponse("not found", status_code=404)
    filename, content_type = entry
    path = STATIC_DIR / filename if filename else config.client_js
    data = _static(path)
    if data is None:
        detail = "" if filename else " (install it: python -m devstack.live vendor)"
        return func.HttpResponse(f"{name} is missing from this deployment{detail}", status_code=404)
    headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
    return func.HttpResponse(data, status_code=200, mimetype=content_type, charset="utf-8", headers=headers)


def register_live(app: func.FunctionApp, bot: Bot, settings: FunctionSettings, *, feed: bool = True) -> bool:
    """Add the negotiate function and the live page's functions, and (`feed`) the bot's activity feed, when a
    SignalR Service is configured; returns whether it did. `ConfigurationError` for wrong live settings."""
    config = live_config(settings)
    if config is None:
        log.debug("live updates off: neither %s nor %s__serviceUri is set", CONNECTION_SETTING, CONNECTION_SETTING)
        return False
    hub = config.hub

    @app.function_name(name="live_negotiate")
    @app.route(route="live/negotiate", methods=[func.HttpMethod.POST], auth_level=func.AuthLevel.ANONYMOUS)
    @app.generic_input_binding(
        arg_name="connectionInfo",
        type="signalRConnectionInfo",
        hub_name=hub,
        connection_string_setting=CONNECTION_SETTING,
        user_id=USER_ID_BINDING,
    )
    @app.generic_output_binding(
        arg_name="signalRActions", type="signalR", hub_name=hub, connection_string_setting=CONNECTION_SETTING
    )
    async def live_negotiate(
        req: func.HttpRequest,
        connectionInfo: str,
        signalRActions: func.Out[str],
    ) -> func.HttpResponse:
        """Validate the bearer token, add its user to the tenant's group, return the SignalR connection info."""
        return await negotiate(config, req, connectionInfo, signalRActions)

    @app.function_name(name="live_page")
    @app.route(route="live", methods=[func.HttpMethod.GET], auth_level=func.AuthLevel.ANONYMOUS)
    def live_page(req: func.HttpRequest) -> func.HttpResponse:
        """The live page (static; it holds no data until its user negotiates)."""
        return page(config)

    @app.function_name(name="live_assets")
    @app.route(route="live/assets/{name}", methods=[func.HttpMethod.GET], auth_level=func.AuthLevel.ANONYMOUS)
    def live_assets(req: func.HttpRequest) -> func.HttpResponse:
        """The live page's script and style, and the @microsoft/signalr browser bundle."""
        return asset(config, req.route_params.get("name", ""))

    if feed:
        bot.middleware(activity_feed)
    log.info("live updates on: hub=%s service=%s", hub, redact_url(config.endpoint))
    return True


__all__ = [
    "ACTIVITY_TARGET",
    "CONNECTION_SETTING",
    "MAX_MESSAGE_BYTES",
    "TENANT_GROUP",
    "USER_ID_HEADER",
    "LiveChannel",
    "LiveConfig",
    "LivePublisher",
    "LiveService",
    "LiveStats",
    "PushError",
    "SignalRAction",
    "access_key_token",
    "activity_event",
    "activity_feed",
    "live_config",
    "live_stats",
    "parse_connection_string",
    "register_live",
]
