"""Teams connector settings (environment variables).

Contract (`TEAMS_CONTRACT`): `shipped` (per-geo negotiate, `Activity` invocations answered with
completions) or `draft` (one-way `activity`, every session receives every event, 1-10 slots).

Credentials are the shared `TeamsCredentials` model (`shared.teams_auth`), the same the function app
validates: `TEAMS_STATIC_TOKEN` (sandbox only: refused unless `TEAMS_BASE_URL` is on loopback),
`TEAMS_APP_PASSWORD` (client secret) or `TEAMS_CERTIFICATE_PATH` (both need `TEAMS_TENANT_ID`), else the
managed identity `TEAMS_MANAGED_IDENTITY_CLIENT_ID` (defaults to `TEAMS_APP_ID`).
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from shared.teams_auth import TeamsCredentials, check_static_token
from shared.urls import check_https_url

RING_BASE_URLS = {
    "production": "https://botapi.skype.com",
    "canary": "https://canary.botapi.skype.com",
    "pilot": "https://pilot1.botapi.skype.com",
}
GEOS = ("amer", "emea", "apac")


class TeamsSettings(TeamsCredentials):
    app_id: str = Field(alias="TEAMS_APP_ID")  # required on the worker
    app: str | None = None
    """The bot's name when the deployment serves several (`RELAYBUS_TEAMS_BOTS`, `shared.apps`); None: the one bot
    of the unsuffixed settings. Prefixes its connections (`teams/<bot>/<geo>`) and becomes `Envelope.app`."""

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
    """Draft contract: a 503 "Socket mode is not available." keeps the slot down and asks again slowly."""
    max_in_flight: int = Field(default=1000, ge=1, le=100_000, alias="TEAMS_MAX_IN_FLIGHT")
    max_retry_after: float = Field(default=60.0, gt=0, le=3600, alias="TEAMS_MAX_RETRY_AFTER_SECONDS")
    """Upper bound on a `Retry-After` honoured from the service negotiate (429, 503)."""
    answer_margin_ms: int = Field(default=300, ge=0, le=10_000, alias="TEAMS_ANSWER_MARGIN_MS")
    """Invokes: the worker waits for a function's answer until the envelope's `deadlineMs` (5 s when absent) after
    it arrived minus this, then completes with status 500 and an error body."""

    @property
    def base_url(self) -> str:
        return (self.base_url_override or RING_BASE_URLS[self.ring]).rstrip("/")

    @property
    def geo_list(self) -> tuple[str, ...]:
        return tuple(g.strip().lower() for g in self.geos.split(",") if g.strip())

    @property
    def slot_names(self) -> tuple[str, ...]:
        """One name per connection the connector holds: geos (shipped) or slot1..N (draft)."""
        if self.contract == "shipped":
            return self.geo_list
        return tuple(f"slot{i}" for i in range(1, self.connections + 1))

    def label(self, slot: str) -> str:
        """A slot's name on the status board, in /readyz and the logs: `amer`, or `support/amer`."""
        return slot if self.app is None else f"{self.app}/{slot}"

    @field_validator("geos")
    @classmethod
    def _geos(cls, value: str) -> str:
        geos = [g.strip().lower() for g in value.split(",") if g.strip()]
        if not geos:
            raise ValueError(f"name at least one geo ({', '.join(GEOS)})")
        unknown = [g for g in geos if g not in GEOS]
        if unknown:
            raise ValueError(f"unknown geo {unknown[0]!r}: use {', '.join(GEOS)}")
        if len(set(geos)) != len(geos):
            raise ValueError("geos repeat")
        return value

    @field_validator("base_url_override")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if value:
            check_https_url(value, "https://canary.botapi.skype.com")
        return value or None

    @model_validator(mode="after")
    def _static_token_only_locally(self) -> TeamsSettings:
        check_static_token(self, [urlsplit(self.base_url).hostname or ""], "TEAMS_BASE_URL")
        return self
