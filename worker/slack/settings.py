"""Slack connector settings (environment variables)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator


class SlackSettings(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True)

    app_token: SecretStr = Field(alias="SLACK_APP_TOKEN")
    api_url: str = Field(default="https://slack.com/api/", alias="SLACK_API_URL")
    connections: int = Field(default=2, ge=1, le=10, alias="SLACK_CONNECTIONS")

    @field_validator("app_token")
    @classmethod
    def _app_level_token(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith("xapp-"):
            raise ValueError("must be an app-level token (starts with xapp-, scope connections:write)")
        return value

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL such as https://slack.com/api/")
        return value if value.endswith("/") else value + "/"
