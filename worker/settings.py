"""Worker settings: read once at start from the environment (and an optional `.env`), validated.

A missing or wrong setting stops the process with a `ConfigurationError` naming the setting and the
problem (`setting NAME: problem`, exit 2, no traceback). Nothing below the entry point reads
`os.environ`. The loader is `shared.config`, the same one the function app uses.

Each connector owns its settings model (`worker.slack.settings`, `worker.teams.settings`); a
connector is enabled when its credential setting is present (`SLACK_APP_TOKEN`, `TEAMS_APP_ID`,
`DIRECTLINE_SECRET`).

Several apps in one worker (`shared.apps`): `RELAYBUS_SLACK_APPS=sales,hr` with `SLACK_APP_TOKEN__SALES`,
`SLACK_CONNECTIONS__SALES`, … and `RELAYBUS_TEAMS_BOTS=support` with `TEAMS_APP_ID__SUPPORT`,
`TEAMS_APP_PASSWORD__SUPPORT`, …: one connector per app (`slack_apps`, `teams_bots`). Credentials are per app
only; other settings fall back to the unsuffixed value. The single-app form (`settings.slack`, `settings.teams`)
is unchanged; the two forms do not mix for one platform.

What is checked beyond types and ranges, so that the process says it at start instead of failing later:
the local queue path (not a directory, its parent not a file, the location writable) and that
`RELAYBUS_HTTP_HOST` resolves to an address this machine can listen on.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from shared.apps import SLACK_APPS, TEAMS_BOTS, app_names, app_section, setting_for, suffix, unknown_suffixed
from shared.config import aliases, configuration_error, environment, load_section, section_data
from shared.errors import ConfigurationError
from shared.routes import REPLIES, ROUTES
from worker.directline.settings import DirectLineSettings
from worker.slack.settings import SlackSettings
from worker.teams.settings import TeamsSettings

__all__ = ["ServiceBusSettings", "WorkerSettings", "environment", "load_settings"]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
M = TypeVar("M", bound=BaseModel)


class ServiceBusSettings(BaseModel):
    """How to reach Service Bus: a fully qualified namespace with an identity, or a connection string."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)
    settings_name: ClassVar[str] = "ServiceBusConnection__fullyQualifiedNamespace"

    connection_string: SecretStr | None = Field(default=None, alias="ServiceBusConnection")
    fully_qualified_namespace: str | None = Field(default=None, alias="ServiceBusConnection__fullyQualifiedNamespace")
    client_id: str | None = Field(default=None, alias="ServiceBusConnection__clientId")
    max_batch_bytes: int = Field(default=256 * 1024, ge=1024, alias="RELAYBUS_SERVICEBUS_MAX_BATCH_BYTES")
    linger_ms: float = Field(default=2.0, ge=0, le=1000, alias="RELAYBUS_SERVICEBUS_LINGER_MS")

    @field_validator("connection_string")
    @classmethod
    def _connection_string(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and "Endpoint=" not in value.get_secret_value():
            raise ValueError("is not a Service Bus connection string (Endpoint=sb://…;SharedAccessKeyName=…)")
        return value

    @model_validator(mode="after")
    def _one_way_to_connect(self) -> ServiceBusSettings:
        if not self.connection_string and not self.fully_qualified_namespace:
            raise ValueError(
                "set ServiceBusConnection__fullyQualifiedNamespace (identity) or ServiceBusConnection "
                "(connection string) when RELAYBUS_QUEUE_BACKEND=servicebus"
            )
        return self


class WorkerSettings(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True)
    settings_name: ClassVar[str] = "RELAYBUS_QUEUE_BACKEND"

    queue_backend: Literal["local", "servicebus"] = Field(default="local", alias="RELAYBUS_QUEUE_BACKEND")
    local_queue_path: Path = Field(default=Path(".relaybus/queue.db"), alias="RELAYBUS_LOCAL_QUEUE_PATH")
    local_queue_commit_interval_ms: float = Field(
        default=5.0, ge=0, le=1000, alias="RELAYBUS_LOCAL_QUEUE_COMMIT_INTERVAL_MS"
    )
    """Local queue: a commit starts no sooner than this after the previous one (0: at once; see localqueue)."""
    http_host: str = Field(default="127.0.0.1", alias="RELAYBUS_HTTP_HOST")
    http_port: int = Field(default=8080, ge=0, le=65535, alias="RELAYBUS_HTTP_PORT")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        default="INFO", alias="RELAYBUS_LOG_LEVEL"
    )
    dedupe_ttl_seconds: float = Field(default=900.0, ge=600.0, alias="RELAYBUS_DEDUPE_TTL_SECONDS")
    shutdown_timeout_seconds: float = Field(default=20.0, gt=0, le=3600, alias="RELAYBUS_SHUTDOWN_TIMEOUT_SECONDS")
    publish_retry_buffer: int = Field(default=10_000, ge=0, le=1_000_000, alias="RELAYBUS_PUBLISH_RETRY_BUFFER")
    """Envelopes a platform cannot redeliver (the Teams draft contract) kept in memory until durable."""
    breaker_threshold: int = Field(default=5, ge=1, le=10_000, alias="RELAYBUS_BREAKER_FAILURES")
    """Consecutive failed publishes after which the worker stops trying for a while (circuit breaker)."""
    breaker_max_pause: float = Field(default=5.0, gt=0, le=300, alias="RELAYBUS_BREAKER_MAX_PAUSE_SECONDS")
    """Longest pause between probes while the queue backend keeps failing (backoff doubles up to this)."""

    reply_queue: str = Field(default=REPLIES.queue, min_length=1, max_length=260, alias=REPLIES.setting)
    """The session-enabled queue functions send synchronous answers to (each worker process reads its own session)."""

    queue_names: dict[str, str] = Field(default_factory=dict)
    """Queue-name overrides keyed by app setting (SLACK_EVENTS_QUEUE, …, RELAYBUS_REPLY_QUEUE)."""
    servicebus: ServiceBusSettings | None = None
    slack: SlackSettings | None = None
    teams: TeamsSettings | None = None
    slack_apps: tuple[SlackSettings, ...] = ()
    """Named Slack apps (`RELAYBUS_SLACK_APPS`); empty with the single-app settings."""
    teams_bots: tuple[TeamsSettings, ...] = ()
    """Named Teams bots (`RELAYBUS_TEAMS_BOTS`); empty with the single-bot settings."""
    directline: DirectLineSettings | None = None
    """The Direct Line connector (`DIRECTLINE_SECRET` enables it; `worker.directline.settings`)."""

    @field_validator("log_level", mode="before")
    @classmethod
    def _level(cls, value: Any) -> Any:
        if isinstance(value, str):
            upper = value.strip().upper()
            return "WARNING" if upper == "WARN" else upper
        return value

    @field_validator("http_host")
    @classmethod
    def _http_host(cls, value: str) -> str:
        host = value.strip()
        if not host:
            raise ValueError("is empty: name an address to listen on, such as 127.0.0.1 or 0.0.0.0")
        try:
            socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except (OSError, UnicodeError) as exc:
            raise ValueError(f"cannot be resolved to an address to listen on ({exc})") from None
        return host

    @model_validator(mode="after")
    def _backend_configured(self) -> WorkerSettings:
        if self.queue_backend == "servicebus" and self.servicebus is None:
            raise ValueError("RELAYBUS_QUEUE_BACKEND=servicebus needs Service Bus settings")
        return self

    @field_validator("reply_queue")
    @classmethod
    def _reply_queue(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("is empty: name the reply queue (default relaybus-replies)")
        return value

    @property
    def all_slack(self) -> tuple[SlackSettings, ...]:
        """Every Slack app this worker holds: the single app, or the named ones."""
        return (self.slack,) if self.slack is not None else self.slack_apps

    @property
    def all_teams(self) -> tuple[TeamsSettings, ...]:
        """Every Teams bot this worker holds: the single bot, or the named ones."""
        return (self.teams,) if self.teams is not None else self.teams_bots

    @property
    def platforms(self) -> set[str]:
        out = set()
        if self.all_slack:
            out.add("slack")
        if self.all_teams:
            out.add("teams")
        if self.directline is not None:
            out.add("directline")
        return out


def check_queue_path(path: Path) -> None:
    """A usable place for the local queue file, or `ValueError` saying what is wrong (no side effects)."""
    if path.exists() and path.is_dir():
        raise ValueError(f"{path} is a directory: name the queue file, e.g. {path / 'queue.db'}")
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise ValueError(f"{path} is not readable and writable by this user")
    ancestor = path.parent
    while not ancestor.exists():
        if ancestor == ancestor.parent:
            break
        ancestor = ancestor.parent
    if ancestor.exists() and not ancestor.is_dir():
        raise ValueError(f"{ancestor} is a file, so {path} cannot be created below it")
    if not path.exists() and not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"cannot create {path}: {ancestor} is not writable by this user")
    if not path.exists():
        # os.access says yes to root everywhere, even on read-only file systems and /proc: try for real
        try:
            with tempfile.TemporaryFile(dir=ancestor):  # O_TMPFILE where there is one: no name ever appears
                pass
        except OSError as exc:
            raise ValueError(f"cannot create {path}: {ancestor} does not accept new files ({exc.strerror})") from None


_SERVICEBUS_KEYS = ("ServiceBusConnection", "ServiceBusConnection__fullyQualifiedNamespace")


SLACK_SECRETS = ("SLACK_APP_TOKEN",)
TEAMS_SECRETS = (
    "TEAMS_APP_ID",
    "TEAMS_APP_PASSWORD",
    "TEAMS_CERTIFICATE_PATH",
    "TEAMS_MANAGED_IDENTITY_CLIENT_ID",
    "TEAMS_STATIC_TOKEN",
)
"""What each named app must have of its own (credentials, and the bot's identity)."""


def _slack_apps(env: Mapping[str, str], names: tuple[str, ...]) -> tuple[SlackSettings, ...]:
    names_read = aliases(SlackSettings)
    _refuse_mixed(env, SLACK_APPS, SLACK_SECRETS, names_read, names)
    apps: list[SlackSettings] = []
    tokens: dict[str, str] = {}
    for name in names:
        section = app_section(env, name, names_read, SLACK_SECRETS)
        if "SLACK_APP_TOKEN" not in section:
            raise ConfigurationError(
                setting_for("SLACK_APP_TOKEN", name), f"is required: the app-level token of {name!r} ({SLACK_APPS})"
            )
        app = _per_app(SlackSettings, section, name)
        token = app.app_token.get_secret_value()
        if token in tokens:
            raise ConfigurationError(
                setting_for("SLACK_APP_TOKEN", name),
                f"is the same token as {setting_for('SLACK_APP_TOKEN', tokens[token])}",
            )
        tokens[token] = name
        apps.append(app)
    return tuple(apps)


def _teams_bots(env: Mapping[str, str], names: tuple[str, ...]) -> tuple[TeamsSettings, ...]:
    names_read = aliases(TeamsSettings)
    _refuse_mixed(env, TEAMS_BOTS, TEAMS_SECRETS, names_read, names)
    bots: list[TeamsSettings] = []
    ids: dict[str, str] = {}
    for name in names:
        section = app_section(env, name, names_read, TEAMS_SECRETS)
        if "TEAMS_APP_ID" not in section:
            raise ConfigurationError(
                setting_for("TEAMS_APP_ID", name), f"is required: the app id of bot {name!r} ({TEAMS_BOTS})"
            )
        bot = _per_app(TeamsSettings, section, name)
        if bot.app_id in ids:
            raise ConfigurationError(
                setting_for("TEAMS_APP_ID", name), f"is the same bot as {setting_for('TEAMS_APP_ID', ids[bot.app_id])}"
            )
        ids[bot.app_id] = name
        bots.append(bot)
    return tuple(bots)


def _refuse_mixed(
    env: Mapping[str, str], list_setting: str, secrets: tuple[str, ...], names_read: set[str], apps: tuple[str, ...]
) -> None:
    for secret in secrets:
        if env.get(secret):
            raise ConfigurationError(
                secret,
                f"is set together with {list_setting}: give each listed app its own ({secret}{suffix(apps[0])}, …)",
            )
    typo = unknown_suffixed(env, names_read, apps)
    if typo is not None:
        raise ConfigurationError(typo, f"names no app of {list_setting} ({', '.join(apps)})")


def _per_app(model: type[M], section: dict[str, str], app: str) -> M:
    """Validate one app's section; an error names the app's own setting (`SLACK_CONNECTIONS__SALES`)."""
    try:
        return model.model_validate({**section, "app": app})
    except ValidationError as exc:
        error = configuration_error(exc, model)
        raise ConfigurationError(setting_for(error.setting, app), error.problem) from None


def load_settings(env: Mapping[str, str]) -> WorkerSettings:
    """Build and validate the settings; raise `ConfigurationError` naming the first bad setting."""
    queue_names = {r.setting: env[r.setting] for r in ROUTES if env.get(r.setting)}
    if env.get(REPLIES.setting):
        queue_names[REPLIES.setting] = env[REPLIES.setting].strip()
    sections: dict[str, Any] = {"queue_names": queue_names}
    if any(env.get(k) for k in _SERVICEBUS_KEYS) or env.get("RELAYBUS_QUEUE_BACKEND") == "servicebus":
        sections["servicebus"] = load_section(ServiceBusSettings, env)
    slack_apps, teams_bots = app_names(env, SLACK_APPS), app_names(env, TEAMS_BOTS)
    if slack_apps:
        sections["slack_apps"] = _slack_apps(env, slack_apps)
    elif env.get("SLACK_APP_TOKEN"):
        sections["slack"] = load_section(SlackSettings, env)
    if teams_bots:
        sections["teams_bots"] = _teams_bots(env, teams_bots)
    elif env.get("TEAMS_APP_ID"):
        sections["teams"] = load_section(TeamsSettings, env)
    elif env.get("TEAMS_APP_PASSWORD") or env.get("TEAMS_STATIC_TOKEN"):
        raise ConfigurationError("TEAMS_APP_ID", "is required when Teams credentials are set (the bot's app id)")
    if env.get("DIRECTLINE_SECRET"):
        sections["directline"] = load_section(DirectLineSettings, env)
    try:
        settings = WorkerSettings.model_validate({**section_data(WorkerSettings, env), **sections})
    except ValidationError as exc:
        raise configuration_error(exc, WorkerSettings) from None
    taken = {route.queue_name(settings.queue_names): route.setting for route in ROUTES}
    if settings.reply_queue in taken:
        raise ConfigurationError(
            REPLIES.setting,
            f"is {settings.reply_queue!r}, the queue of {taken[settings.reply_queue]}: name another queue",
        )
    if settings.queue_backend == "local":
        try:
            check_queue_path(settings.local_queue_path)
        except ValueError as exc:
            raise ConfigurationError("RELAYBUS_LOCAL_QUEUE_PATH", str(exc)) from None
    return settings
