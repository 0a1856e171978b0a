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
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from shared.config import aliases, load_section
from shared.errors import ConfigurationError
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

_TEAMS_TRIGGERS = ("TEAMS_APP_ID", "TEAMS_APP_PASSWORD", "TEAMS_CERTIFICATE_PATH", "TEAMS_STATIC_TOKEN")


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
        settings = load_section(cls, source, teams=teams)
        if teams is not None:
            try:
                check_static_token(teams, settings.service_url_hosts, "BOT_CONNECTOR_ALLOWED_HOSTS")
            except ValueError as exc:
                raise ConfigurationError("TEAMS_STATIC_TOKEN", str(exc).removeprefix("TEAMS_STATIC_TOKEN ")) from None
        return settings
