"""Direct Line connector settings (environment variables `DIRECTLINE_*`).

The connector is enabled when `DIRECTLINE_SECRET` is set (in Azure a Key Vault reference). Timing knobs have
production defaults; tests shrink them (construct `DirectLineSettings` by field name).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ConfigDict, Field, SecretStr, field_validator, model_validator

from shared.directline import DEFAULT_BASE_URL, DEFAULT_STORE_PATH
from shared.directline_table import DirectoryStoreSettings
from shared.urls import check_https_url


class DirectLineSettings(DirectoryStoreSettings):
    """`DIRECTLINE_STORE` and `DIRECTLINE_TABLE*` (the directory in Table Storage) come from the base class."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    secret: SecretStr = Field(alias="DIRECTLINE_SECRET")
    """The Direct Line channel secret (Azure Bot → Channels → Direct Line; Copilot Studio → Web channel security)."""
    base_url: str = Field(default=DEFAULT_BASE_URL, alias="DIRECTLINE_BASE_URL")
    """`https://<region>.directline.botframework.com/v3/directline` for regional bots; http only on loopback."""
    store_path: Path = Field(default=Path(DEFAULT_STORE_PATH), alias="DIRECTLINE_STORE_PATH")
    """With `DIRECTLINE_STORE=sqlite` (the default) the conversation directory (watermarks, leases): an SQLite file
    both the worker and the functions open (one machine)."""
    refresh_fraction: float = Field(default=0.5, gt=0.0, le=0.5, alias="DIRECTLINE_REFRESH_FRACTION")
    """Tokens are refreshed after this fraction of their lifetime (`expires_in`), at most half, never after expiry."""
    idle_park_seconds: float = Field(default=900.0, gt=0, alias="DIRECTLINE_IDLE_PARK_SECONDS")
    """A conversation without activity for this long is parked: socket closed, watermark and lease kept."""
    park_poll_seconds: float = Field(default=300.0, gt=0, alias="DIRECTLINE_PARK_POLL_SECONDS")
    """A parked conversation is polled (GET activities) this often: a late or proactive answer resumes it."""
    lease_seconds: float = Field(default=30.0, gt=0, le=3600, alias="DIRECTLINE_LEASE_SECONDS")
    """How long a replica's hold on a conversation lasts without renewal: a dead replica's lapse after this."""
    scan_seconds: float = Field(default=2.0, gt=0, le=300, alias="DIRECTLINE_SCAN_SECONDS")
    """How often the directory is read for new or orphaned conversations (wake-ups come with the lease renewal)."""
    max_conversations: int = Field(default=5000, ge=1, le=1_000_000, alias="DIRECTLINE_MAX_CONVERSATIONS")
    """Conversations one replica holds at most (open and parked); others are left to other replicas."""
    websocket: bool = Field(default=True, alias="DIRECTLINE_WEBSOCKET")
    """False: poll only (GET activities), for networks that refuse websockets."""
    poll_seconds: float = Field(default=1.0, gt=0, le=600, alias="DIRECTLINE_POLL_SECONDS")
    """The polling fallback's interval."""
    websocket_failures_before_polling: int = Field(default=3, ge=1, le=100, alias="DIRECTLINE_WEBSOCKET_FAILURES")
    """Consecutive websocket failures after which a conversation polls (it tries the socket again later)."""
    websocket_retry_seconds: float = Field(default=300.0, gt=0, alias="DIRECTLINE_WEBSOCKET_RETRY_SECONDS")
    """How long a conversation that fell back to polling polls before it tries a websocket again."""
    reconnect_min_seconds: float = Field(default=3.0, ge=0, alias="DIRECTLINE_RECONNECT_MIN_SECONDS")
    reconnect_max_seconds: float = Field(default=15.0, gt=0, alias="DIRECTLINE_RECONNECT_MAX_SECONDS")
    """The random wait before a reconnect (botframework-directlinejs waits 3-15 s); failures double it up to
    `backoff_cap_seconds`."""
    backoff_cap_seconds: float = Field(default=120.0, gt=0, alias="DIRECTLINE_BACKOFF_CAP_SECONDS")
    ping_interval: float = Field(default=20.0, gt=0, alias="DIRECTLINE_PING_SECONDS")
    liveness_timeout: float = Field(default=65.0, gt=0, alias="DIRECTLINE_LIVENESS_TIMEOUT_SECONDS")
    """A socket with nothing inbound (frames, keep-alives, pongs) for this long is dead (a laptop that slept):
    it is replaced."""
    open_timeout: float = Field(default=15.0, gt=0, alias="DIRECTLINE_OPEN_TIMEOUT_SECONDS")
    http_timeout: float = Field(default=20.0, gt=0, alias="DIRECTLINE_HTTP_TIMEOUT_SECONDS")
    max_retry_after: float = Field(default=300.0, gt=0, alias="DIRECTLINE_MAX_RETRY_AFTER_SECONDS")
    max_activity_bytes: int = Field(
        default=200_000, ge=1024, le=100 * 1024 * 1024, alias="DIRECTLINE_MAX_ACTIVITY_BYTES"
    )
    """Activities larger than this (JSON) are not published (counted as invalid `oversized`, logged)."""
    max_frame_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, alias="DIRECTLINE_MAX_FRAME_BYTES")
    flush_seconds: float = Field(default=0.2, gt=0, le=60, alias="DIRECTLINE_FLUSH_SECONDS")
    """Durable watermarks are written this often (one transaction for every conversation that advanced)."""
    publish_attempts: int = Field(default=5, ge=1, le=1000, alias="DIRECTLINE_PUBLISH_ATTEMPTS")
    """Tries to publish one activity while the queue backend is otherwise healthy; then it is skipped and logged."""
    tick_seconds: float = Field(default=5.0, gt=0, le=60)
    """How often a conversation looks at the wall clock (token refresh, expiry, a sleep of the machine)."""

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        check_https_url(value, DEFAULT_BASE_URL)
        return value.rstrip("/")

    @model_validator(mode="after")
    def _timings(self) -> DirectLineSettings:
        if self.reconnect_max_seconds < self.reconnect_min_seconds:
            raise ValueError("DIRECTLINE_RECONNECT_MAX_SECONDS must be at least DIRECTLINE_RECONNECT_MIN_SECONDS")
        if self.liveness_timeout <= self.ping_interval:
            raise ValueError("DIRECTLINE_LIVENESS_TIMEOUT_SECONDS must be longer than DIRECTLINE_PING_SECONDS")
        return self
