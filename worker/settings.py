"""Worker settings: read once at start from the environment (and an optional `.env`), validated.

A missing or wrong setting stops the process with a `ConfigurationError` naming the setting and the
problem (`setting NAME: problem`, exit 2, no traceback). Nothing below the entry point reads
`os.environ`. The loader is `shared.config`, the same one the function app uses.

Each connector owns its settings model (`worker.slack.settings`, `worker.teams.settings`); a
connector is enabled when its credential setting is present (`SLACK_APP_TOKEN`, `TEAMS_APP_ID`).

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
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from shared.config import configuration_error, environment, load_section, section_data
from shared.errors import ConfigurationError
from shared.routes import REPLIES, ROUTES
from worker.slack.settings import SlackSettings
from worker.teams.settings import TeamsSettings

__all__ = ["ServiceBusSettings", "WorkerSettings", "environment", "load_settings"]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


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
    def platforms(self) -> set[str]:
        out = set()
        if self.slack:
            out.add("slack")
        if self.teams:
            out.add("teams")
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


def load_settings(env: Mapping[str, str]) -> WorkerSettings:
    """Build and validate the settings; raise `ConfigurationError` naming the first bad setting."""
    queue_names = {r.setting: env[r.setting] for r in ROUTES if env.get(r.setting)}
    if env.get(REPLIES.setting):
        queue_names[REPLIES.setting] = env[REPLIES.setting].strip()
    sections: dict[str, Any] = {"queue_names": queue_names}
    if any(env.get(k) for k in _SERVICEBUS_KEYS) or env.get("RELAYBUS_QUEUE_BACKEND") == "servicebus":
        sections["servicebus"] = load_section(ServiceBusSettings, env)
    if env.get("SLACK_APP_TOKEN"):
        sections["slack"] = load_section(SlackSettings, env)
    if env.get("TEAMS_APP_ID"):
        sections["teams"] = load_section(TeamsSettings, env)
    elif env.get("TEAMS_APP_PASSWORD") or env.get("TEAMS_STATIC_TOKEN"):
        raise ConfigurationError("TEAMS_APP_ID", "is required when Teams credentials are set (the bot's app id)")
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
