"""Worker settings: read once at start from the environment (and an optional `.env`), validated.

A missing or wrong setting stops the process with a `ConfigurationError` naming the setting and the
problem. Nothing below the entry point reads `os.environ`.

Each connector owns its settings model (`worker.slack.settings`, `worker.teams.settings`); a
connector is enabled when its credential setting is present (`SLACK_APP_TOKEN`, `TEAMS_APP_ID`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from shared.errors import ConfigurationError
from shared.routes import ROUTES
from worker.slack.settings import SlackSettings
from worker.teams.settings import TeamsSettings


class ServiceBusSettings(BaseModel):
    """How to reach Service Bus: a fully qualified namespace with an identity, or a connection string."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)
    settings_name: ClassVar[str] = "ServiceBusConnection__fullyQualifiedNamespace"

    connection_string: SecretStr | None = Field(default=None, alias="ServiceBusConnection")
    fully_qualified_namespace: str | None = Field(default=None, alias="ServiceBusConnection__fullyQualifiedNamespace")
    client_id: str | None = Field(default=None, alias="ServiceBusConnection__clientId")
    max_batch_bytes: int = Field(default=256 * 1024, ge=1024, alias="RELAYBUS_SERVICEBUS_MAX_BATCH_BYTES")
    linger_ms: float = Field(default=2.0, ge=0, le=1000, alias="RELAYBUS_SERVICEBUS_LINGER_MS")

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
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", alias="RELAYBUS_LOG_LEVEL")
    dedupe_ttl_seconds: float = Field(default=900.0, ge=600.0, alias="RELAYBUS_DEDUPE_TTL_SECONDS")
    shutdown_timeout_seconds: float = Field(default=20.0, gt=0, alias="RELAYBUS_SHUTDOWN_TIMEOUT_SECONDS")

    queue_names: dict[str, str] = Field(default_factory=dict)
    """Queue-name overrides keyed by app setting (SLACK_EVENTS_QUEUE, …)."""
    servicebus: ServiceBusSettings | None = None
    slack: SlackSettings | None = None
    teams: TeamsSettings | None = None

    @model_validator(mode="after")
    def _backend_configured(self) -> WorkerSettings:
        if self.queue_backend == "servicebus" and self.servicebus is None:
            raise ValueError("RELAYBUS_QUEUE_BACKEND=servicebus needs Service Bus settings")
        return self

    @property
    def platforms(self) -> set[str]:
        out = set()
        if self.slack:
            out.add("slack")
        if self.teams:
            out.add("teams")
        return out


def load_dotenv(path: Path) -> dict[str, str]:
    """Read KEY=VALUE lines (comments and blank lines ignored, optional quotes stripped)."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :]
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ConfigurationError(str(path), f"line {number} is not KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def environment(env: Mapping[str, str] | None = None, dotenv: Path | None = Path(".env")) -> dict[str, str]:
    """The process environment over an optional .env file (the environment wins)."""
    merged = load_dotenv(dotenv) if dotenv is not None else {}
    merged.update(os.environ if env is None else env)
    return merged


_SERVICEBUS_KEYS = ("ServiceBusConnection", "ServiceBusConnection__fullyQualifiedNamespace")


def load_settings(env: Mapping[str, str]) -> WorkerSettings:
    """Build and validate the settings; raise `ConfigurationError` naming the first bad setting."""
    data: dict[str, Any] = {k: v for k, v in env.items() if k in _worker_aliases()}
    data["queue_names"] = {r.setting: env[r.setting] for r in ROUTES if env.get(r.setting)}
    if any(env.get(k) for k in _SERVICEBUS_KEYS) or env.get("RELAYBUS_QUEUE_BACKEND") == "servicebus":
        data["servicebus"] = _section(ServiceBusSettings, env)
    if env.get("SLACK_APP_TOKEN"):
        data["slack"] = _section(SlackSettings, env)
    if env.get("TEAMS_APP_ID"):
        data["teams"] = _section(TeamsSettings, env)
    try:
        return WorkerSettings.model_validate(data)
    except ValidationError as exc:
        raise _configuration_error(exc, WorkerSettings) from None


def _section(model: type[BaseModel], env: Mapping[str, str]) -> BaseModel:
    aliases = {f.alias for f in model.model_fields.values() if f.alias}
    try:
        return model.model_validate({k: v for k, v in env.items() if k in aliases})
    except ValidationError as exc:
        raise _configuration_error(exc, model) from None


def _worker_aliases() -> set[str]:
    return {f.alias for f in WorkerSettings.model_fields.values() if f.alias}


def _configuration_error(exc: ValidationError, model: type[BaseModel]) -> ConfigurationError:
    err = exc.errors(include_url=False)[0]
    loc = err["loc"]
    setting = str(loc[0]) if loc else model.__name__
    # model-level validators have no location: name the model's main setting
    if not loc:
        setting = str(getattr(model, "settings_name", model.__name__))
    problem = err["msg"].removeprefix("Value error, ")
    if err["type"] == "missing":
        problem = "is required"
    elif "input" in err and loc and not _is_secret(setting):
        problem = f"{problem} (got {err['input']!r})"
    return ConfigurationError(setting, problem)


def _is_secret(setting: str) -> bool:
    return any(word in setting.upper() for word in ("TOKEN", "PASSWORD", "SECRET", "CONNECTION"))
