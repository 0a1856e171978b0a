"""The Direct Line 3.0 REST calls the connector makes (httpx), errors translated at this boundary.

    api = DirectLineApi(base_url, secret)
    grant = await api.resume(conversation_id, watermark, token=None)   # with the secret: a fresh token
    token = await api.refresh(grant.token)
    activity_set = await api.activities(conversation_id, watermark, token=grant.token)

Every call authenticates with `Authorization: Bearer <token>`, or the secret when no token is given (only the
secret mints a token for a conversation once its token expired). Exception tree:

    DirectLineApiError (RelaybusError)   any failure; `status`, `code` (the ErrorResponse code) when known
    ├── TokenExpired                     403 (`TokenExpired`, or any 403 on a token): the token is dead
    ├── ConversationNotFound             404: the service no longer knows the conversation
    ├── DirectLineBusy                   429, 502, 503, 504 (and network errors): try again after `retry_after`
    │                                    (the service's Retry-After, when it sent one)
    └── DirectLineRejected               any other 4xx (400 `MissingProperty` with Enhanced authentication,
                                         401 a wrong secret): retrying the same call cannot help

Nothing secret reaches a message: tokens and the secret never appear in exceptions or logs.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from shared.errors import RelaybusError
from worker.directline.protocol import ActivitySet, Malformed, parse_activity_set

BUSY_STATUSES = frozenset({429, 502, 503, 504})


class DirectLineApiError(RelaybusError):
    def __init__(
        self, message: str, status: int | None = None, code: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.retry_after = retry_after


class TokenExpired(DirectLineApiError):
    """403: the token expired (or was never valid for this conversation); only the secret mints a new one."""


class ConversationNotFound(DirectLineApiError):
    """404: the conversation is unknown to the service (expired, ended, or from another bot)."""


class DirectLineBusy(DirectLineApiError):
    """429 / 5xx / a network failure: the same call may succeed later (`retry_after` when the service said)."""


class DirectLineRejected(DirectLineApiError):
    """Another 4xx: the request cannot succeed as it is (wrong secret, MissingProperty, bad argument)."""


@dataclass(frozen=True, slots=True)
class Grant:
    """What starting or resuming a conversation answers: a token for it and a fresh `streamUrl` (60 s)."""

    conversation_id: str
    token: str
    expires_in: float
    stream_url: str | None
    issued_at: float
    """Wall-clock time (epoch seconds) the answer arrived: expiry is counted from here."""

    @property
    def expires_at(self) -> float:
        return self.issued_at + self.expires_in


@dataclass(frozen=True, slots=True)
class RefreshedToken:
    token: str
    expires_in: float
    issued_at: float

    @property
    def expires_at(self) -> float:
        return self.issued_at + self.expires_in


class DirectLineApi:
    def __init__(
        self,
        base_url: str,
        secret: str,
        *,
        client: httpx.AsyncClient | None = None,
        timeout: float = 20.0,
        clock: Any = time.time,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._secret = secret
        self._client = client or httpx.AsyncClient(timeout=timeout)
        self._owns_client = client is None
        self._clock = clock
        self.calls = 0

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    # --- the calls -------------------------------------------------------------------------------------

    async def start(self, *, user_id: str | None = None) -> Grant:
        """POST /conversations with the secret: a new conversation (tests and benchmarks; the functions start
        the bridge's conversations)."""
        body: dict[str, Any] = {"user": {"id": user_id}} if user_id else {}
        data = await self._call("POST", "/conversations", None, json=body)
        return self._grant(data, None)

    async def resume(self, conversation_id: str, watermark: str | None, *, token: str | None) -> Grant:
        """GET /conversations/{id}?watermark=: a new token and `streamUrl` that replays after `watermark`."""
        path = f"/conversations/{quote(conversation_id, safe='')}"
        params = {"watermark": watermark or ""}
        data = await self._call("GET", path, token, params=params)
        return self._grant(data, conversation_id)

    async def refresh(self, token: str) -> RefreshedToken:
        """POST /tokens/refresh: a later expiry for a token that has not expired (else `TokenExpired`)."""
        data = await self._call("POST", "/tokens/refresh", token)
        new = data.get("token")
        if not isinstance(new, str) or not new:
            raise DirectLineApiError("tokens/refresh answered without a token", 200)
        return RefreshedToken(new, _expires_in(data), self._clock())

    async def activities(self, conversation_id: str, watermark: str | None, *, token: str | None) -> ActivitySet:
        """GET /conversations/{id}/activities?watermark=: what arrived after `watermark` (polling)."""
        path = f"/conversations/{quote(conversation_id, safe='')}/activities"
        data = await self._call("GET", path, token, params={"watermark": watermark or ""})
        parsed = parse_activity_set(data)
        if isinstance(parsed, Malformed):
            raise DirectLineApiError(f"GET activities answered a malformed set: {parsed.reason}", 200, parsed.reason)
        return parsed

    async def post(self, conversation_id: str, activity: Mapping[str, Any], *, token: str | None) -> str:
        """POST /conversations/{id}/activities; returns the activity id."""
        path = f"/conversations/{quote(conversation_id, safe='')}/activities"
        data = await self._call("POST", path, token, json=dict(activity))
        activity_id = data.get("id")
        return activity_id if isinstance(activity_id, str) else ""

    # --- transport -------------------------------------------------------------------------------------

    def _grant(self, data: dict[str, Any], conversation_id: str | None) -> Grant:
        token = data.get("token")
        cid = data.get("conversationId") or conversation_id
        if not isinstance(cid, str) or not cid:
            raise DirectLineApiError("the answer names no conversationId", 200)
        stream = data.get("streamUrl")
        return Grant(
            cid,
            token if isinstance(token, str) and token else self._secret,
            _expires_in(data) if isinstance(token, str) and token else float("inf"),
            stream if isinstance(stream, str) and stream else None,
            self._clock(),
        )

    async def _call(
        self,
        method: str,
        path: str,
        token: str | None,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        self.calls += 1
        headers = {"Authorization": f"Bearer {token or self._secret}", "Accept": "application/json"}
        what = f"{method} {path.split('?')[0]}"
        try:
            response = await self._client.request(
                method, self.base_url + path, headers=headers, json=json, params=params
            )
        except httpx.HTTPError as exc:
            raise DirectLineBusy(f"direct line {what}: {type(exc).__name__}") from None
        status = response.status_code
        if status < 300:
            try:
                data = response.json() if response.content else {}
            except ValueError:
                raise DirectLineApiError(f"direct line {what}: the answer is not JSON", status) from None
            return data if isinstance(data, dict) else {}
        code = _error_code(response)
        message = f"direct line {what}: HTTP {status}" + (f" {code}" if code else "")
        if status == 403:
            raise TokenExpired(message, status, code)
        if status == 404:
            raise ConversationNotFound(message, status, code)
        if status in BUSY_STATUSES or status >= 500:
            raise DirectLineBusy(message, status, code, _retry_after(response, self._clock))
        raise DirectLineRejected(message, status, code)


def _expires_in(data: Mapping[str, Any]) -> float:
    value = data.get("expires_in")
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return 1800.0
    return float(value)


def _error_code(response: httpx.Response) -> str | None:
    try:
        data = response.json()
    except ValueError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code[:60] if isinstance(code, str) else None


def _retry_after(response: httpx.Response, clock: Any) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - float(clock()))
        except (TypeError, ValueError):
            return None
