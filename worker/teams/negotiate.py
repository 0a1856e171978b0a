"""Getting a Teams socket: the service negotiate, then the SignalR negotiate (with redirects).

- `connect_url(settings, slot)`: where to POST (shipped `{base}/{geo}/v3/websockets/connect`; draft
  `{base}[/{cloud}[/{tenant}]]/v3/websockets/connect`). Pure.
- `service_negotiate(client, url, token)`: Bearer Bot Framework token, no body → `ServiceGrant`.
  401/403 raise `NegotiateRejected` (terminal); a 503 whose body says "Socket mode is not available"
  (the draft contract's answer for bots without socket mode) raises `ServiceUnavailable`; every other
  429/5xx and network failure raises `NegotiateTransient`; each carries `retry_after` when the service
  sent one (seconds or an HTTP date).
- `signalr_negotiate(client, grant)`: `POST …/negotiate?…&negotiateVersion=1`, follows `{url, accessToken}`
  redirects (up to 10), returns the websocket URL with `id` and `access_token`.
URLs are logged through `shared.redact.redact_url` (tokens travel in query strings).

Exception tree (all `NegotiateError`, a `RelaybusError`):

    NegotiateError
    ├── NegotiateRejected     401/403: the credential is wrong; do not retry
    ├── ServiceUnavailable    503 "Socket mode is not available.": retry slowly (draft fallback)
    └── NegotiateTransient    429, other 5xx, timeouts, bad replies: retry after Retry-After or backoff
"""

from __future__ import annotations

import email.utils
import math
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx

from shared.errors import RelaybusError
from shared.redact import redact, redact_url
from worker.teams.settings import TeamsSettings

MAX_REDIRECTS = 10


class NegotiateError(RelaybusError):
    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class NegotiateRejected(NegotiateError):
    """401/403: the Bot Framework token was refused."""


class ServiceUnavailable(NegotiateError):
    """503 "Socket mode is not available.": not for this bot or base URL (yet); ask again slowly."""


NOT_AVAILABLE = "socket mode is not available"


class NegotiateTransient(NegotiateError):
    """Worth retrying: throttling, server errors, timeouts, malformed replies."""


@dataclass(frozen=True, slots=True)
class ServiceGrant:
    url: str
    access_token: str
    expires_in: float
    session_id: str | None = None

    def __repr__(self) -> str:  # never print the token
        return (
            f"ServiceGrant(url={redact_url(self.url)!r}, expires_in={self.expires_in}, session_id={self.session_id!r})"
        )


def connect_url(settings: TeamsSettings, slot: str) -> str:
    base = settings.base_url
    if settings.contract == "shipped":
        return f"{base}/{slot}/v3/websockets/connect"
    prefix = ""
    if settings.cloud:
        prefix = f"/{settings.cloud}"
        if settings.draft_tenant_path and settings.tenant_id:
            prefix += f"/{settings.tenant_id}"
    return f"{base}{prefix}/v3/websockets/connect"


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _json(response: httpx.Response, what: str) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError as exc:
        raise NegotiateTransient(f"{what}: reply is not JSON", response.status_code) from exc
    if not isinstance(data, dict):
        raise NegotiateTransient(f"{what}: reply is not an object", response.status_code)
    return data


def _raise_for_status(response: httpx.Response, what: str, credential_hint: str) -> None:
    status = response.status_code
    if status < 400:
        return
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    reason = redact(response.text[:200].strip())
    if status in (401, 403):
        raise NegotiateRejected(f"{what} answered {status}: {credential_hint}", status)
    if status == 503 and NOT_AVAILABLE in reason.lower():
        raise ServiceUnavailable(f"{what} answered 503 ({reason})", status, retry_after)
    raise NegotiateTransient(f"{what} answered {status} ({reason})", status, retry_after)


async def service_negotiate(
    client: httpx.AsyncClient,
    url: str,
    token: str,
    request_timeout: float = 15.0,
    credential_hint: str = "check the bot's credentials",
) -> ServiceGrant:
    try:
        response = await client.post(url, headers={"Authorization": f"Bearer {token}"}, timeout=request_timeout)
    except httpx.HTTPError as exc:
        raise NegotiateTransient(f"service negotiate {redact_url(url)} failed: {type(exc).__name__}") from exc
    _raise_for_status(response, f"service negotiate {redact_url(url)}", credential_hint)
    data = _json(response, "service negotiate")
    ws_url, access = data.get("url"), data.get("accessToken")
    if not isinstance(ws_url, str) or not ws_url:
        raise NegotiateTransient("service negotiate: reply has no url", response.status_code)
    expires = data.get("expiresIn", 3600)
    session = data.get("sessionId")
    return ServiceGrant(
        url=ws_url,
        access_token=access if isinstance(access, str) else "",
        expires_in=_expires(expires),
        session_id=session if isinstance(session, str) else None,
    )


def _expires(value: object) -> float:
    """expiresIn in seconds, bounded to something a rotation schedule can use (default an hour)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        return 3600.0
    return float(min(value, 7 * 24 * 3600))


def _with_query(url: str, **extra: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in extra]
    query.extend(extra.items())
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


def _negotiate_url(url: str) -> str:
    parts = urlsplit(url)
    path = parts.path.rstrip("/") + "/negotiate"
    return _with_query(urlunsplit((parts.scheme, parts.netloc, path, parts.query, "")), negotiateVersion="1")


def _ws_scheme(url: str) -> str:
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, parts.path, parts.query, parts.fragment))


async def signalr_negotiate(
    client: httpx.AsyncClient, grant: ServiceGrant, request_timeout: float = 15.0, max_redirects: int = MAX_REDIRECTS
) -> str:
    """The websocket URL to open (with `id` and `access_token` in its query)."""
    url, token = grant.url, grant.access_token
    if url.startswith(("ws://", "wss://")):
        return _with_query(url, access_token=token) if token else url
    for _ in range(max_redirects + 1):
        target = _negotiate_url(url)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            response = await client.post(target, headers=headers, timeout=request_timeout)
        except httpx.HTTPError as exc:
            raise NegotiateTransient(f"SignalR negotiate {redact_url(target)} failed: {type(exc).__name__}") from exc
        _raise_for_status(response, f"SignalR negotiate {redact_url(target)}", "the service's access token was refused")
        data = _json(response, "SignalR negotiate")
        if data.get("error"):
            raise NegotiateTransient(f"SignalR negotiate: {data['error']}", response.status_code)
        redirect = data.get("url")
        if isinstance(redirect, str) and redirect:
            url = redirect
            new_token = data.get("accessToken")
            if isinstance(new_token, str) and new_token:
                token = new_token
            continue
        connection_token = data.get("connectionToken") or data.get("connectionId")
        if not isinstance(connection_token, str) or not connection_token:
            raise NegotiateTransient("SignalR negotiate: reply has neither url nor connectionToken")
        transports = data.get("availableTransports") or []
        if transports and not any(
            isinstance(t, dict) and t.get("transport") == "WebSockets" and "Text" in (t.get("transferFormats") or [])
            for t in transports
        ):
            raise NegotiateTransient("SignalR negotiate: WebSockets with text frames not offered")
        extra = {"id": connection_token}
        if token:
            extra["access_token"] = token
        return _ws_scheme(_with_query(url, **extra))
    raise NegotiateTransient(f"SignalR negotiate: more than {max_redirects} redirects")
