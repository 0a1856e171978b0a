"""Slack connector settings (environment variables).

Timing knobs have production defaults; tests shrink them (construct `SlackSettings` by field name).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from shared.urls import check_https_url


class SlackSettings(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True)

    app: str | None = None
    """The app's name when the deployment serves several (`RELAYBUS_SLACK_APPS`, `shared.apps`); None: the one app
    of the unsuffixed settings. Prefixes its connections (`slack/<app>/<slot>`) and becomes `Envelope.app`."""
    app_token: SecretStr = Field(alias="SLACK_APP_TOKEN")
    api_url: str = Field(default="https://slack.com/api/", alias="SLACK_API_URL")
    connections: int = Field(default=2, ge=1, le=10, alias="SLACK_CONNECTIONS")
    replicas: int = Field(default=1, ge=1, le=10, alias="SLACK_REPLICAS")
    """How many worker replicas hold this app (the deployment's replica count): Slack's `num_connections` above
    `replicas × SLACK_CONNECTIONS` (plus one per replica rotating a socket) is reported as ghost connections."""
    max_in_flight: int = Field(default=512, ge=1, le=100_000, alias="SLACK_MAX_IN_FLIGHT")
    """Envelopes being handed off at once, per connection (the reader pauses beyond this)."""
    max_frame_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024, alias="SLACK_MAX_FRAME_BYTES")
    """Inbound frames larger than this many bytes (UTF-8) are rejected (counted as invalid `oversized`) and the
    socket stays up; frames beyond 4x this are refused by the websocket itself (close 1009, reconnect)."""
    ping_interval: float = Field(default=5.0, gt=0, alias="SLACK_PING_INTERVAL_SECONDS")
    """Client pings; their pongs count as inbound traffic for the liveness watchdog."""
    liveness_timeout: float = Field(default=20.0, gt=0, alias="SLACK_LIVENESS_TIMEOUT_SECONDS")
    """A socket with no inbound traffic (frames, pongs) for this long is half-open: it is replaced."""
    hello_timeout: float = Field(default=15.0, gt=0, alias="SLACK_HELLO_TIMEOUT_SECONDS")
    open_timeout: float = Field(default=15.0, gt=0, alias="SLACK_OPEN_TIMEOUT_SECONDS")
    """HTTP timeout of apps.connections.open and of the websocket opening handshake."""
    close_timeout: float = Field(default=2.0, gt=0, alias="SLACK_CLOSE_TIMEOUT_SECONDS")
    drain_timeout: float = Field(default=10.0, gt=0, alias="SLACK_DRAIN_TIMEOUT_SECONDS")
    """How long a retiring socket may take to finish its in-flight publishes and acks."""
    backoff_base: float = Field(default=1.0, gt=0, alias="SLACK_BACKOFF_BASE_SECONDS")
    backoff_cap: float = Field(default=30.0, gt=0, alias="SLACK_BACKOFF_CAP_SECONDS")
    max_retry_after: float = Field(default=120.0, gt=0, alias="SLACK_MAX_RETRY_AFTER_SECONDS")
    """Upper bound on a Retry-After honoured from apps.connections.open."""
    answer_margin_ms: int = Field(default=300, ge=0, le=2900, alias="SLACK_ANSWER_MARGIN_MS")
    """Synchronous answers: the worker waits for a function's answer until 3 s after the envelope arrived minus
    this, then sends the plain ack (so the ack reaches Slack within its 3 s)."""

    def label(self, slot: str) -> str:
        """A connection slot's name on the status board, in /readyz and the logs: `0`, or `sales/0`."""
        return slot if self.app is None else f"{self.app}/{slot}"

    @field_validator("app_token")
    @classmethod
    def _app_level_token(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith("xapp-"):
            raise ValueError("must be an app-level token (starts with xapp-, scope connections:write)")
        return value

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        check_https_url(value, "https://slack.com/api/")
        return value if value.endswith("/") else value + "/"

    @model_validator(mode="after")
    def _timings(self) -> SlackSettings:
        if self.liveness_timeout <= self.ping_interval:
            raise ValueError("SLACK_LIVENESS_TIMEOUT_SECONDS must be longer than SLACK_PING_INTERVAL_SECONDS")
        return self
