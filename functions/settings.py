"""Function app settings: read once from the app settings (environment) and validated at start.

`FunctionSettings.from_env()` raises `ConfigurationError` (`setting NAME: problem`, the worker's format,
from the same loader `shared.config`) when `function_app.py` is imported, so a wrong setting stops the
host at start with its name instead of failing at the first message. In Azure, secrets
(`SLACK_BOT_TOKEN`, `TEAMS_APP_PASSWORD`) are Key Vault references resolved by the platform before they
reach the environment. Locally they come from `local.settings.json` (`func start`; check one with
`python -m functions settings --file local.settings.json`) or from the dev stack.

Reply targets are checked against these settings (see `functions.slack_api`, `functions.teams_api`):

- `SLACK_API_URL` must be https (http only on loopback: the sandbox);
- a Slack `response_url` must be https on `SLACK_RESPONSE_URL_ALLOWED_HOSTS` (default `hooks.slack.com`),
  on the default port, without user info; loopback is allowed only when `SLACK_API_URL` is on loopback
  (sandbox mode); else the message is dead-lettered with reason `UnsafeReplyTarget`;
- a Teams `serviceUrl` must be https on `BOT_CONNECTOR_ALLOWED_HOSTS` (default: the Bot Framework's hosts),
  on the default port, without user info; else reason `ServiceUrlNotAllowed`. A URL that cannot be
  parsed (a port out of range, a broken IPv6 literal, a host with a backslash) is refused the same way.

Retries that back off (`functions.retries`): `RELAYBUS_RETRY_MAX_ATTEMPTS` (5: runs of a handler in all),
`RELAYBUS_RETRY_BASE_SECONDS` (2) and `RELAYBUS_RETRY_MAX_SECONDS` (300, the cap), each overridable per route
with the route's name after two underscores (`RELAYBUS_RETRY_MAX_ATTEMPTS__slack_events=3`; a name that is
no route is a setting error).

Service Bus (what the outbox sends answers and scheduled retries with, `functions.outbox`): the trigger's
own connection, `ServiceBusConnection` (a connection string) or `ServiceBusConnection__fullyQualifiedNamespace`
with `ServiceBusConnection__clientId` (the user-assigned identity). The queue name settings
(`SLACK_EVENTS_QUEUE`, ...) say where a retry is sent; `RELAYBUS_REPLY_QUEUE` (default `relaybus-replies`) is
the one queue answers go to.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from typing import ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from shared.apps import SLACK_APPS, TEAMS_BOTS, app_names, app_section, setting_for, suffix
from shared.config import aliases, configuration_error, load_section
from shared.errors import ConfigurationError
from shared.routes import REPLIES, ROUTES
from shared.teams_auth import TeamsCredentials, check_static_token
from shared.urls import check_https_url, split

DEFAULT_SLACK_API_URL = "https://slack.com/api/"
DEFAULT_RESPONSE_URL_HOSTS: tuple[str, ...] = ("hooks.slack.com",)
DEFAULT_BOT_CONNECTOR_HOSTS: tuple[str, ...] = (
    "smba.trafficmanager.net",
    "smba.infra.gcc.teams.microsoft.com",
    "smba.infra.gov.teams.microsoft.us",
    "smba.infra.dod.teams.microsoft.us",
    ".botframework.com",
    ".botframework.azure.us",
    ".botframework.azure.cn",
)
"""Teams (commercial, GCC, GCC High, DoD) and the Bot Framework channel hosts; `.x` means any subdomain of x."""

DEFAULT_STATE_TABLE = "relaybusstate"
DEFAULT_STATE_ENDPOINT = "https://<account>.table.core.windows.net"
DEFAULT_STATE_PATH = ".relaybus/state.db"
_TABLE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]{2,62}")

_TEAMS_TRIGGERS = ("TEAMS_APP_ID", "TEAMS_APP_PASSWORD", "TEAMS_CERTIFICATE_PATH", "TEAMS_STATIC_TOKEN")

RETRY_MAX_ATTEMPTS = "RELAYBUS_RETRY_MAX_ATTEMPTS"
RETRY_BASE_SECONDS = "RELAYBUS_RETRY_BASE_SECONDS"
RETRY_MAX_SECONDS = "RELAYBUS_RETRY_MAX_SECONDS"
MAX_RETRY_ATTEMPTS = 1000
MAX_RETRY_SECONDS = 86400.0
"""Retry settings are bounded: at most 1000 attempts, delays of at most a day."""


class RouteRetry(BaseModel):
    """One route's retry overrides (`RELAYBUS_RETRY_MAX_ATTEMPTS__<route>` and the like); None: the global."""

    model_config = ConfigDict(frozen=True)

    max_attempts: int | None = None
    base_seconds: float | None = None
    max_seconds: float | None = None


_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")


def plain_host(host: str) -> bool:
    """A DNS name of ASCII letters, digits and hyphens (at most 253 characters), or an IP address."""
    if len(host) <= 253 and _HOSTNAME.fullmatch(host):
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def parse_hosts(value: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    if not value:
        return default
    return tuple(h.strip().lower() for h in value.split(",") if h.strip())


def check_storage_connection(value: str) -> None:
    """A Storage connection string the Tables client can use; `ValueError` saying what is missing (the value,
    which holds an account key, is never echoed)."""
    if value.strip().lower() == "usedevelopmentstorage=true":
        return
    parts: dict[str, str] = {}
    for item in value.split(";"):
        if not item.strip():
            continue
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise ValueError("must be a Storage connection string (Name=value;…) or UseDevelopmentStorage=true")
        parts[name.strip().lower()] = text.strip()
    if not parts.get("accountkey") and not parts.get("sharedaccesssignature"):
        raise ValueError("names no AccountKey or SharedAccessSignature (in Azure use RELAYBUS_STATE_TABLE_ENDPOINT)")
    if not parts.get("accountname") and not parts.get("tableendpoint"):
        raise ValueError("names no AccountName or TableEndpoint")
    if parts.get("tableendpoint"):
        try:
            check_https_url(parts["tableendpoint"], "https://<account>.table.core.windows.net")
        except ValueError as exc:
            raise ValueError(f"TableEndpoint {exc} (Azurite: http://127.0.0.1:10002/devstoreaccount1)") from None


def _entries(value: str | None) -> list[str]:
    return [] if value is None else [h.strip().lower() for h in value.split(",")]


class FunctionSettings(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True)
    settings_name: ClassVar[str] = "SLACK_BOT_TOKEN"

    # --- slack ---
    slack_bot_token: SecretStr | None = Field(default=None, alias="SLACK_BOT_TOKEN")
    slack_api_url: str = Field(default=DEFAULT_SLACK_API_URL, alias="SLACK_API_URL")
    slack_response_url_hosts: str | None = Field(default=None, alias="SLACK_RESPONSE_URL_ALLOWED_HOSTS")
    """Comma-separated hosts a `response_url` may name (default hooks.slack.com)."""
    # --- teams ---
    bot_connector_allowed_hosts: str | None = Field(default=None, alias="BOT_CONNECTOR_ALLOWED_HOSTS")
    """Comma-separated hosts a serviceUrl may name (`.suffix` for subdomains); default: Bot Framework hosts."""
    teams: TeamsCredentials | None = None
    """Bot Framework credentials (`TEAMS_*`), when any is set: the same model the worker validates."""
    slack_apps: dict[str, SecretStr | None] = Field(default_factory=dict, exclude=True)
    """Several Slack apps (`RELAYBUS_SLACK_APPS`, `shared.apps`): each app's bot token (`SLACK_BOT_TOKEN__<APP>`, None
    when not set: only `response_url` replies then), by app name; the envelope's `app` picks one."""
    slack_app_api_urls: dict[str, str] = Field(default_factory=dict, exclude=True)
    """Per-app Web API base URLs (`SLACK_API_URL__<APP>`, checked as `SLACK_API_URL` is); an app without one uses
    `SLACK_API_URL`. Only sandboxes need this (every real app answers at slack.com)."""
    teams_bots: dict[str, TeamsCredentials] = Field(default_factory=dict, exclude=True)
    """Several Teams bots (`RELAYBUS_TEAMS_BOTS`): each bot's credentials (`TEAMS_APP_ID__<BOT>`, …), by bot name."""
    # --- state (functions.state) ---
    state_connection: SecretStr | None = Field(default=None, alias="RELAYBUS_STATE_CONNECTION")
    """A Storage connection string for the state table (Azurite: `UseDevelopmentStorage=true`); local only."""
    state_table_endpoint: str | None = Field(default=None, alias="RELAYBUS_STATE_TABLE_ENDPOINT")
    """`https://<account>.table.core.windows.net`: the state table, reached with the managed identity."""
    state_table: str = Field(default=DEFAULT_STATE_TABLE, alias="RELAYBUS_STATE_TABLE")
    """The state table's name (created on first write when missing)."""
    state_client_id: str | None = Field(default=None, alias="RELAYBUS_STATE_CLIENT_ID")
    """Client id of the user-assigned identity that reads and writes the state table (DefaultAzureCredential)."""
    state_path: str | None = Field(default=None, alias="RELAYBUS_STATE_PATH")
    """The embedded store's SQLite file when no table is configured (default `.relaybus/state.db`)."""
    # --- retries that back off (functions.retries) ---
    retry_max_attempts: int = Field(default=5, ge=1, le=MAX_RETRY_ATTEMPTS, alias=RETRY_MAX_ATTEMPTS)
    """Runs of a handler in all (the first included) before its message is dead-lettered (MaxAttemptsExceeded)."""
    retry_base_seconds: float = Field(default=2.0, gt=0, le=MAX_RETRY_SECONDS, alias=RETRY_BASE_SECONDS)
    """The first retry waits up to this long; each next one up to twice as long (full jitter)."""
    retry_max_seconds: float = Field(default=300.0, gt=0, le=MAX_RETRY_SECONDS, alias=RETRY_MAX_SECONDS)
    """No retry waits longer than this (unless the handler raised `Retry(after=...)`)."""
    retry_routes: dict[str, RouteRetry] = Field(default_factory=dict, exclude=True)
    """Per route overrides, by route name: `RELAYBUS_RETRY_MAX_ATTEMPTS__slack_events=3` (and the like)."""
    queue_names: dict[str, str] = Field(default_factory=dict, exclude=True)
    """Queue names in effect by route name (the route settings, e.g. SLACK_EVENTS_QUEUE): where retries go."""
    reply_queue: str = Field(default=REPLIES.queue, min_length=1, max_length=260, alias=REPLIES.setting)
    """The reply queue: the only queue a synchronous answer is sent to (an envelope naming another is refused)."""
    # --- Service Bus (the trigger's connection; the outbox sends answers and scheduled retries with it) ---
    service_bus_connection: SecretStr | None = Field(default=None, alias="ServiceBusConnection")
    """A connection string (the emulator's, or a SAS one); in Azure the identity settings below instead."""
    service_bus_namespace: str | None = Field(default=None, alias="ServiceBusConnection__fullyQualifiedNamespace")
    service_bus_client_id: str | None = Field(default=None, alias="ServiceBusConnection__clientId")
    """The user-assigned managed identity the function app uses (DefaultAzureCredential pinned to it)."""
    # --- live updates (functions.live: Azure SignalR Service in serverless mode; checked by functions.live) ---
    signalr_connection: SecretStr | None = Field(default=None, alias="AzureSignalRConnectionString")
    """`Endpoint=…;AccessKey=…;Version=1.0;`: the dev stack's local SignalR Service; in Azure the identity below."""
    signalr_service_uri: str | None = Field(default=None, alias="AzureSignalRConnectionString__serviceUri")
    """`https://<name>.service.signalr.net`: SignalR Service reached with the managed identity (no access key)."""
    signalr_credential: str | None = Field(default=None, alias="AzureSignalRConnectionString__credential")
    """`managedidentity` (what the SignalR extension's identity-based connection reads)."""
    signalr_client_id: str | None = Field(default=None, alias="AzureSignalRConnectionString__clientId")
    """Client id of the user-assigned identity that negotiates and pushes."""
    live_hub: str = Field(default="relaybus", alias="RELAYBUS_LIVE_HUB")
    """The SignalR hub the live page connects to and handlers push through."""
    live_audience: str | None = Field(default=None, alias="RELAYBUS_LIVE_AUDIENCE")
    """Comma-separated audiences a page's bearer token may be issued for (the app's client id, `api://…`)."""
    live_issuers: str | None = Field(default=None, alias="RELAYBUS_LIVE_ISSUERS")
    """Comma-separated issuers, `{tid}` standing for the token's tenant (default: Entra ID v2 and v1)."""
    live_jwks_url: str | None = Field(default=None, alias="RELAYBUS_LIVE_JWKS_URL")
    """Where the issuers' signing keys are (default: Entra ID's common JWKS)."""
    live_tenants: str | None = Field(default=None, alias="RELAYBUS_LIVE_TENANTS")
    """Comma-separated tenant ids allowed to negotiate (default: any tenant whose token validates)."""
    live_tenant_aliases: str | None = Field(default=None, alias="RELAYBUS_LIVE_TENANT_ALIASES")
    """`<slack team id>=<tenant id>,…`: pushes of a Slack workspace go to that tenant's group."""
    live_client_js: str | None = Field(default=None, alias="RELAYBUS_LIVE_CLIENT_JS")
    """The `@microsoft/signalr` browser bundle the live page loads (default functions/static/vendor/signalr.min.js)."""

    @field_validator("slack_bot_token")
    @classmethod
    def _bot_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        token = value.get_secret_value()
        if token.startswith("xoxb-"):
            return value
        if token.startswith("xapp-"):
            raise ValueError(
                "is an app-level token (xapp-…): that one is the worker's SLACK_APP_TOKEN (Socket Mode); the "
                "function app replies with the bot token (xoxb-…, OAuth & Permissions → Bot User OAuth Token)"
            )
        if token.startswith("xoxp-"):
            raise ValueError(
                "is a user token (xoxp-…): the function app replies as the bot, with the bot token "
                "(xoxb-…, OAuth & Permissions → Bot User OAuth Token)"
            )
        raise ValueError("must be a bot token (starts with xoxb-, OAuth & Permissions → Bot User OAuth Token)")

    @field_validator("slack_api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        check_https_url(value, DEFAULT_SLACK_API_URL)
        return value if value.endswith("/") else value + "/"

    @field_validator("slack_response_url_hosts")
    @classmethod
    def _response_hosts(cls, value: str | None) -> str | None:
        for host in _entries(value):
            if not plain_host(host):
                raise ValueError(f"lists host names separated by commas (no scheme, port or path): {host!r} is not one")
        return value

    @field_validator("bot_connector_allowed_hosts")
    @classmethod
    def _service_hosts(cls, value: str | None) -> str | None:
        for host in _entries(value):
            if not plain_host(host.removeprefix("*.").removeprefix(".")):
                raise ValueError(
                    "lists host names separated by commas (no scheme, port or path; `.example.com` for any "
                    f"subdomain): {host!r} is not one"
                )
        return value

    @field_validator("service_bus_namespace")
    @classmethod
    def _namespace(cls, value: str | None) -> str | None:
        if value is not None and not plain_host(value.lower()):
            raise ValueError("is the namespace's host name, like <name>.servicebus.windows.net (no scheme or path)")
        return value

    @model_validator(mode="after")
    def _retry_bounds(self) -> FunctionSettings:
        if self.retry_max_seconds < self.retry_base_seconds:
            raise ValueError(
                f"{RETRY_MAX_SECONDS} must be at least {RETRY_BASE_SECONDS} "
                f"({self.retry_max_seconds:g} < {self.retry_base_seconds:g})"
            )
        return self

    @field_validator("state_connection")
    @classmethod
    def _state_connection(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_storage_connection(value.get_secret_value())
        return value

    @field_validator("state_table_endpoint")
    @classmethod
    def _state_endpoint(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if info.data.get("state_connection") is not None:
            raise ValueError(
                "is set together with RELAYBUS_STATE_CONNECTION: set the endpoint in Azure (managed identity) "
                "or the connection string locally (Azurite), not both"
            )
        check_https_url(value, DEFAULT_STATE_ENDPOINT)
        return value.rstrip("/")

    @field_validator("state_table")
    @classmethod
    def _state_table(cls, value: str) -> str:
        if not _TABLE_NAME.fullmatch(value) or value.lower() == "tables":
            raise ValueError("must be 3-63 letters and digits, starting with a letter (a Table Storage table name)")
        return value

    # --- derived ---

    @property
    def sandbox(self) -> bool:
        """Slack points at a loopback Slack (the sandbox): loopback response_urls are allowed then."""
        parts = split(self.slack_api_url)
        return parts is not None and parts.loopback

    @property
    def response_url_hosts(self) -> tuple[str, ...]:
        return parse_hosts(self.slack_response_url_hosts, DEFAULT_RESPONSE_URL_HOSTS)

    @property
    def service_url_hosts(self) -> tuple[str, ...]:
        return parse_hosts(self.bot_connector_allowed_hosts, DEFAULT_BOT_CONNECTOR_HOSTS)

    @classmethod
    def setting_names(cls) -> set[str]:
        """Every app setting these settings read."""
        return aliases(cls) | aliases(TeamsCredentials)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> FunctionSettings:
        source = os.environ if env is None else env
        teams = None
        if any(source.get(name) for name in _TEAMS_TRIGGERS):
            teams = load_section(TeamsCredentials, source)
        settings = load_section(
            cls,
            source,
            teams=teams,
            retry_routes=_route_retries(source),
            queue_names=_queue_names(source),
            slack_apps=_slack_apps(source),
            slack_app_api_urls=_slack_api_urls(source),
            teams_bots=_teams_bots(source),
        )
        for route, override in settings.retry_routes.items():
            base = override.base_seconds or settings.retry_base_seconds
            cap = override.max_seconds or settings.retry_max_seconds
            if cap < base:
                if override.max_seconds is None:
                    raise ConfigurationError(
                        f"{RETRY_BASE_SECONDS}__{route}", f"must be at most {RETRY_MAX_SECONDS} ({base:g} > {cap:g})"
                    )
                raise ConfigurationError(
                    f"{RETRY_MAX_SECONDS}__{route}", f"must be at least the route's base delay ({cap:g} < {base:g})"
                )
        for app, credentials in [(None, teams), *settings.teams_bots.items()]:
            if credentials is None:
                continue
            try:
                check_static_token(credentials, settings.service_url_hosts, "BOT_CONNECTOR_ALLOWED_HOSTS")
            except ValueError as exc:
                problem = str(exc).removeprefix("TEAMS_STATIC_TOKEN ")
                raise ConfigurationError(setting_for("TEAMS_STATIC_TOKEN", app), problem) from None
        return settings


_TEAMS_SECRETS = (*_TEAMS_TRIGGERS, "TEAMS_MANAGED_IDENTITY_CLIENT_ID")
"""What each named bot must have of its own (`shared.apps`: never taken from the unsuffixed settings)."""


def _slack_apps(source: Mapping[str, str]) -> dict[str, SecretStr | None]:
    """`RELAYBUS_SLACK_APPS` and each app's `SLACK_BOT_TOKEN__<APP>` (validated as `SLACK_BOT_TOKEN` is)."""
    names = app_names(source, SLACK_APPS)
    if not names:
        return {}
    if source.get("SLACK_BOT_TOKEN"):
        raise ConfigurationError(
            "SLACK_BOT_TOKEN",
            f"is set together with {SLACK_APPS}: give each app its own (SLACK_BOT_TOKEN{suffix(names[0])})",
        )
    apps: dict[str, SecretStr | None] = {}
    for name in names:
        setting = setting_for("SLACK_BOT_TOKEN", name)
        token = source.get(setting, "")
        if not token:
            apps[name] = None
            continue
        try:
            apps[name] = FunctionSettings._bot_token(SecretStr(token))
        except ValueError as exc:
            raise ConfigurationError(setting, str(exc)) from None
    return apps


def _slack_api_urls(source: Mapping[str, str]) -> dict[str, str]:
    """`SLACK_API_URL__<APP>` of the apps that set one (validated as `SLACK_API_URL` is)."""
    urls: dict[str, str] = {}
    for name in app_names(source, SLACK_APPS):
        setting = setting_for("SLACK_API_URL", name)
        url = source.get(setting, "")
        if url:
            try:
                urls[name] = FunctionSettings._api_url(url)
            except ValueError as exc:
                raise ConfigurationError(setting, str(exc)) from None
    return urls


def _teams_bots(source: Mapping[str, str]) -> dict[str, TeamsCredentials]:
    """`RELAYBUS_TEAMS_BOTS` and each bot's `TEAMS_APP_ID__<BOT>`, `TEAMS_APP_PASSWORD__<BOT>`, …"""
    names = app_names(source, TEAMS_BOTS)
    if not names:
        return {}
    for secret in _TEAMS_SECRETS:
        if source.get(secret):
            raise ConfigurationError(
                secret, f"is set together with {TEAMS_BOTS}: give each bot its own ({secret}{suffix(names[0])})"
            )
    bots: dict[str, TeamsCredentials] = {}
    for name in names:
        section = app_section(source, name, aliases(TeamsCredentials), _TEAMS_SECRETS)
        try:
            bots[name] = TeamsCredentials.model_validate(section)
        except ValidationError as exc:
            error = configuration_error(exc, TeamsCredentials)
            raise ConfigurationError(setting_for(error.setting, name), error.problem) from None
    return bots


_RETRY_FIELDS = {
    RETRY_MAX_ATTEMPTS: "max_attempts",
    RETRY_BASE_SECONDS: "base_seconds",
    RETRY_MAX_SECONDS: "max_seconds",
}


def _route_retries(source: Mapping[str, str]) -> dict[str, RouteRetry]:
    """`RELAYBUS_RETRY_<X>__<route name>` settings, by route (a name that is no route is a setting error)."""
    routes = {route.name.lower(): route.name for route in ROUTES}
    found: dict[str, dict[str, float | int]] = {}
    for key, value in source.items():
        prefix, separator, route_name = key.partition("__")
        if not separator or prefix not in _RETRY_FIELDS or value == "":
            continue
        route = routes.get(route_name.lower())
        if route is None:
            raise ConfigurationError(key, f"names no route (the routes: {', '.join(sorted(routes.values()))})")
        found.setdefault(route, {})[_RETRY_FIELDS[prefix]] = _retry_number(key, prefix, value)
    return {route: RouteRetry.model_validate(values) for route, values in found.items()}


def _retry_number(key: str, prefix: str, value: str) -> float | int:
    try:
        number: float | int = int(value) if prefix == RETRY_MAX_ATTEMPTS else float(value)
    except ValueError:
        kind = "a whole number" if prefix == RETRY_MAX_ATTEMPTS else "a number of seconds"
        raise ConfigurationError(key, f"must be {kind} (got {value!r})") from None
    if prefix == RETRY_MAX_ATTEMPTS:
        if not 1 <= number <= MAX_RETRY_ATTEMPTS:
            raise ConfigurationError(key, f"must be 1 to {MAX_RETRY_ATTEMPTS} (got {value!r})")
    elif not 0 < number <= MAX_RETRY_SECONDS:  # NaN fails this too
        raise ConfigurationError(key, f"must be more than 0 and at most {MAX_RETRY_SECONDS:g} seconds (got {value!r})")
    return number


def _queue_names(source: Mapping[str, str]) -> dict[str, str]:
    """The queue name in effect per route (its app setting, else the route table's default)."""
    return {route.name: route.queue_name(source) for route in ROUTES}
