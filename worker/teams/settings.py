"""Teams connector settings (environment variables).

Contract (`TEAMS_CONTRACT`): `shipped` (per-geo negotiate, `Activity` invocations answered with
completions) or `draft` (one-way `activity`, every session receives every event, 1-10 slots).

Credentials, in order of precedence: `TEAMS_STATIC_TOKEN` (sandbox only: refused unless
`TEAMS_BASE_URL` points at localhost), `TEAMS_APP_PASSWORD` (client secret) or
`TEAMS_CERTIFICATE_PATH` (both need `TEAMS_TENANT_ID`), else the managed identity
`TEAMS_MANAGED_IDENTITY_CLIENT_ID` (defaults to `TEAMS_APP_ID`).
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

RING_BASE_URLS = {
    "production": "https://botapi.skype.com",
    "canary": "https://canary.botapi.skype.com",
    "pilot": "https://pilot1.botapi.skype.com",
}
GEOS = ("amer", "emea", "apac")
_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


class TeamsSettings(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True)

    app_id: str = Field(alias="TEAMS_APP_ID")
    tenant_id: str | None = Field(default=None, alias="TEAMS_TENANT_ID")
    app_password: SecretStr | None = Field(default=None, alias="TEAMS_APP_PASSWORD")
    certificate_path: str | None = Field(default=None, alias="TEAMS_CERTIFICATE_PATH")
    managed_identity_client_id: str | None = Field(default=None, alias="TEAMS_MANAGED_IDENTITY_CLIENT_ID")
    static_token: SecretStr | None = Field(default=None, alias="TEAMS_STATIC_TOKEN")
    """Sandbox only: a fixed bearer token instead of azure-identity."""

    contract: Literal["shipped", "draft"] = Field(default="shipped", alias="TEAMS_CONTRACT")
    ring: Literal["production", "canary", "pilot"] = Field(default="production", alias="TEAMS_RING")
    base_url_override: str | None = Field(default=None, alias="TEAMS_BASE_URL")
    geos: str = Field(default="amer", alias="TEAMS_GEOS")
    """Shipped contract: comma-separated geos, one socket each (amer, emea, apac)."""
    connections: int = Field(default=1, ge=1, le=10, alias="TEAMS_CONNECTIONS")
    """Draft contract: number of slots (every slot receives every event)."""
    cloud: str | None = Field(default=None, alias="TEAMS_CLOUD")
    """Draft contract: `/{cloud}/v3/websockets/connect` (with `TEAMS_DRAFT_TENANT_PATH`, `/{cloud}/{tenant}/…`)."""
    draft_tenant_path: bool = Field(default=False, alias="TEAMS_DRAFT_TENANT_PATH")
    fallback_on_503: bool = Field(default=True, alias="TEAMS_FALLBACK_ON_503")
    max_in_flight: int = Field(default=1000, ge=1, le=100_000, alias="TEAMS_MAX_IN_FLIGHT")

    @property
    def base_url(self) -> str:
        return (self.base_url_override or RING_BASE_URLS[self.ring]).rstrip("/")

    @property
    def geo_list(self) -> tuple[str, ...]:
        return tuple(g.strip() for g in self.geos.split(",") if g.strip())

    @property
    def slot_names(self) -> tuple[str, ...]:
        """One name per connection the connector holds: geos (shipped) or slot1..N (draft)."""
        if self.contract == "shipped":
            return self.geo_list
        return tuple(f"slot{i}" for i in range(1, self.connections + 1))

    @field_validator("geos")
    @classmethod
    def _geos(cls, value: str) -> str:
        geos = [g.strip() for g in value.split(",") if g.strip()]
        if not geos:
            raise ValueError("name at least one geo (amer, emea, apac)")
        if len(set(geos)) != len(geos):
            raise ValueError("geos repeat")
        return value

    @field_validator("base_url_override")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL such as https://canary.botapi.skype.com")
        return value or None

    @model_validator(mode="after")
    def _static_token_only_locally(self) -> TeamsSettings:
        if self.static_token is not None:
            host = urlsplit(self.base_url).hostname or ""
            if host not in _LOCAL_HOSTS:
                raise ValueError("TEAMS_STATIC_TOKEN is for the local sandbox only (TEAMS_BASE_URL on localhost)")
        if (self.app_password or self.certificate_path) and not self.tenant_id and self.static_token is None:
            raise ValueError("TEAMS_TENANT_ID is required with TEAMS_APP_PASSWORD or TEAMS_CERTIFICATE_PATH")
        return self
