"""Function app settings: read once from the app settings (environment) and validated.

`FunctionSettings.from_env()` raises `ConfigurationError` naming the setting and the problem. In Azure,
secrets (`SLACK_BOT_TOKEN`, `TEAMS_APP_PASSWORD`) are Key Vault references resolved by the platform
before they reach the environment. Locally they come from `local.settings.json` (`func start`) or from
the dev stack.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from shared.errors import ConfigurationError


class FunctionSettings(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True)

    # --- slack ---
    slack_bot_token: SecretStr | None = Field(default=None, alias="SLACK_BOT_TOKEN")
    slack_api_url: str = Field(default="https://slack.com/api/", alias="SLACK_API_URL")
    # --- teams ---
    teams_app_id: str | None = Field(default=None, alias="TEAMS_APP_ID")
    teams_tenant_id: str | None = Field(default=None, alias="TEAMS_TENANT_ID")
    teams_app_password: SecretStr | None = Field(default=None, alias="TEAMS_APP_PASSWORD")
    teams_certificate_path: str | None = Field(default=None, alias="TEAMS_CERTIFICATE_PATH")
    teams_managed_identity_client_id: str | None = Field(default=None, alias="TEAMS_MANAGED_IDENTITY_CLIENT_ID")
    teams_static_token: SecretStr | None = Field(default=None, alias="TEAMS_STATIC_TOKEN")
    """Sandbox only: a fixed Bot Connector token; allowed only when every allowed host is local."""
    bot_connector_allowed_hosts: str | None = Field(default=None, alias="BOT_CONNECTOR_ALLOWED_HOSTS")
    """Comma-separated hosts a serviceUrl may name (`.suffix` for subdomains); default: Bot Framework hosts."""
    # --- end teams ---

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> FunctionSettings:
        source = os.environ if env is None else env
        aliases = {f.alias for f in cls.model_fields.values() if f.alias}
        try:
            return cls.model_validate({k: v for k, v in source.items() if k in aliases and v != ""})
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            setting = str(err["loc"][0]) if err["loc"] else "settings"
            raise ConfigurationError(setting, err["msg"].removeprefix("Value error, ")) from None
