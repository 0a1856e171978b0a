"""`apps.connections.open`: the one Slack Web API call the worker makes (httpx).

Errors, translated at this boundary:

    SlackOpenError                 the call failed; worth retrying with backoff
    ├── SlackOpenRateLimited       HTTP 429 or `ratelimited`: wait `retry_after` seconds (Tier 1)
    └── SlackAuthError             a final error (invalid_auth, token_revoked, ...): never retry
"""

from __future__ import annotations

import logging
from typing import Final

import httpx

from shared.errors import RelaybusError
from worker import tls

log = logging.getLogger(__name__)

FINAL_ERRORS: Final = frozenset(
    {
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "token_expired",
        "team_disabled",
        "user_removed_from_team",
        "not_allowed_token_type",
        "missing_scope",
    }
)
DEFAULT_RETRY_AFTER: Final = 60.0


class SlackOpenError(RelaybusError):
    """apps.connections.open failed; `error` is Slack's error code or a transport description."""

    def __init__(self, error: str, detail: str = "") -> None:
        super().__init__(f"apps.connections.open: {error}{f' ({detail})' if detail else ''}")
        self.error = error


class SlackOpenRateLimited(SlackOpenError):
    def __init__(self, retry_after: float) -> None:
        super().__init__("ratelimited", f"retry after {retry_after:g} s")
        self.retry_after = retry_after


class SlackAuthError(SlackOpenError):
    """The app-level token is unusable: stop instead of retrying."""


class ConnectionOpener:
    """Calls apps.connections.open with the app-level token; one httpx client reused."""

    def __init__(self, api_url: str, app_token: str, *, timeout: float = 15.0, client: httpx.AsyncClient | None = None):
        self._url = api_url.rstrip("/") + "/apps.connections.open"
        self._token = app_token
        self._client = client or httpx.AsyncClient(timeout=timeout, verify=tls.client_context())
        self._owns_client = client is None

    async def open(self) -> str:
        """Return a single-use websocket URL, or raise a `SlackOpenError`."""
        try:
            response = await self._client.post(self._url, headers={"Authorization": f"Bearer {self._token}"})
        except httpx.HTTPError as exc:
            raise SlackOpenError("transport_error", type(exc).__name__) from exc
        if response.status_code == 429:
            raise SlackOpenRateLimited(_retry_after(response))
        try:
            body = response.json()
        except ValueError:
            raise SlackOpenError(f"http_{response.status_code}", "response is not JSON") from None
        if not isinstance(body, dict):
            raise SlackOpenError(f"http_{response.status_code}", "response is not a JSON object")
        if body.get("ok") is True and isinstance(body.get("url"), str):
            return str(body["url"])
        error = str(body.get("error") or f"http_{response.status_code}")
        if error == "ratelimited":
            raise SlackOpenRateLimited(_retry_after(response))
        if error in FINAL_ERRORS:
            raise SlackAuthError(error)
        raise SlackOpenError(error)

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()


def _retry_after(response: httpx.Response) -> float:
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else DEFAULT_RETRY_AFTER
    except ValueError:
        return DEFAULT_RETRY_AFTER
