"""The Bot Connector client functions use to answer Teams: reply, send, update, delete, typing.

`BotConnectorClient(tokens, allowed_hosts=…)` over httpx:

- the Bot Framework token comes from a `TokenProvider` (azure-identity, cached until near expiry; a
  401 drops the cached token and retries once);
- 429, 412, 502, 503 and 504 (and network errors) are retried with exponential backoff and full jitter,
  honouring `Retry-After`; 403 `MessageWritesBlocked` (the user blocked or removed the bot) is never
  retried;
- the activity's `serviceUrl` must name an allowed Bot Framework host over https, so a forged queue
  message cannot make the function send the bot's token elsewhere.

Exception tree (all `RelaybusError`):

    BotConnectorError              an HTTP error from the Bot Connector (status, code)
    ├── MessageWritesBlocked       403 MessageWritesBlocked: never retried; also a `RecipientGone`, so the
    │                              function completes its message with a warning
    └── ServiceUrlNotAllowed       the serviceUrl's host is not on the allowlist; also an
                                   `UnsafeReplyTarget`, so the message is dead-lettered with the reason
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from functions.reply_urls import parse_target, shown
from functions.settings import DEFAULT_BOT_CONNECTOR_HOSTS, FunctionSettings
from shared.errors import ConfigurationError, RecipientGone, RelaybusError, UnsafeReplyTarget
from shared.teams_auth import TokenProvider, token_provider

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({412, 429, 502, 503, 504})


class BotConnectorError(RelaybusError):
    """`retry_after`: the service's Retry-After (seconds) on the last answer, when it sent one (429)."""

    def __init__(
        self, message: str, status: int | None = None, code: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.retry_after = retry_after


class MessageWritesBlocked(BotConnectorError, RecipientGone):
    """403 MessageWritesBlocked: the user blocked the bot or removed it; retrying cannot help."""


class ServiceUrlNotAllowed(BotConnectorError, UnsafeReplyTarget):
    """The activity's serviceUrl is not a Bot Framework host on the allowlist."""

    reason = "ServiceUrlNotAllowed"


def host_allowed(host: str, allowed: Iterable[str]) -> bool:
    host = host.lower().rstrip(".")
    for entry in allowed:
        if entry.startswith("*."):
            entry = entry[1:]
        if entry.startswith("."):
            if host.endswith(entry) and len(host) > len(entry):
                return True
        elif host == entry:
            return True
    return False


def check_service_url(service_url: object, allowed: Iterable[str]) -> str:
    """The service URL (stripped) with a trailing slash, or `ServiceUrlNotAllowed`.

    https on an allowed host with the default port and no user info; http (any port) only for loopback
    hosts on the list (the sandbox). Anything that cannot be parsed is refused, never retried; nothing
    else is ever raised, whatever `service_url` is."""
    target = parse_target(service_url)
    if target is None:
        raise ServiceUrlNotAllowed(f"serviceUrl {shown(service_url)} is not a URL that can be used")
    url, parts = target
    local = parts.loopback
    scheme_ok = parts.scheme == "https" or (parts.scheme == "http" and local)
    port_ok = local or parts.port in (None, 443)
    if not scheme_ok or not port_ok or parts.has_credentials or not host_allowed(parts.host, allowed):
        where = f"{parts.scheme}://{parts.host}" + (f":{parts.port}" if parts.port is not None else "")
        raise ServiceUrlNotAllowed(f"serviceUrl {where} is not an allowed Bot Framework host")
    return url if url.endswith("/") else url + "/"


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        import email.utils
        import time

        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _error_code(response: httpx.Response) -> str | None:
    try:
        data = response.json()
    except ValueError:
        return None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("code"), str):
            return str(error["code"])
    return None


class _NoCredentials:
    """The token provider when no `TEAMS_*` credential is set: asking it for a token is a setting error."""

    async def token(self) -> str:
        raise ConfigurationError("TEAMS_APP_ID", "is required to reply on Teams (with the bot's credentials)")

    def invalidate(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


class BotConnectorClient:
    def __init__(
        self,
        tokens: TokenProvider,
        *,
        allowed_hosts: Iterable[str] = DEFAULT_BOT_CONNECTOR_HOSTS,
        http: httpx.AsyncClient | None = None,
        max_retries: int = 4,
        backoff_base: float = 0.5,
        backoff_cap: float = 10.0,
        max_retry_after: float = 60.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._tokens = tokens
        self.allowed_hosts = tuple(allowed_hosts)
        self._http = http or httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=10.0))
        self._max_retries = max_retries
        self._base = backoff_base
        self._cap = backoff_cap
        self._max_retry_after = max_retry_after
        self._sleep = sleep
        self._rng = rng or random.Random()

    @classmethod
    def from_settings(cls, settings: FunctionSettings) -> BotConnectorClient:
        """The client the settings describe. Without Teams credentials, a reply still has its serviceUrl
        checked (a forged one is dead-lettered), then raises `ConfigurationError` naming `TEAMS_APP_ID`."""
        tokens: TokenProvider = _NoCredentials()
        if settings.teams is not None:
            tokens, _hint = token_provider(settings.teams)
        return cls(tokens, allowed_hosts=settings.service_url_hosts)

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._tokens.aclose()

    # --- the API ---

    async def reply(self, activity: Mapping[str, Any], reply: str | Mapping[str, Any]) -> dict[str, Any]:
        """Answer `activity` in its conversation (threaded where the channel threads)."""
        body = _as_activity(reply)
        conversation = activity.get("conversation") or {}
        conversation_id = str(conversation.get("id", "")) if isinstance(conversation, dict) else ""
        body.setdefault("conversation", conversation)
        if isinstance(activity.get("recipient"), dict):
            body.setdefault("from", activity["recipient"])
        if isinstance(activity.get("from"), dict):
            body.setdefault("recipient", activity["from"])
        activity_id = activity.get("id")
        if activity_id:
            body.setdefault("replyToId", activity_id)
        service_url = str(activity.get("serviceUrl", ""))
        path = f"v3/conversations/{_q(conversation_id)}/activities"
        if activity_id:
            path += f"/{_q(str(activity_id))}"
        return await self._call("POST", service_url, path, body)

    async def send(self, service_url: str, conversation_id: str, activity: str | Mapping[str, Any]) -> dict[str, Any]:
        return await self._call(
            "POST", service_url, f"v3/conversations/{_q(conversation_id)}/activities", _as_activity(activity)
        )

    async def update(
        self, service_url: str, conversation_id: str, activity_id: str, activity: str | Mapping[str, Any]
    ) -> dict[str, Any]:
        body = _as_activity(activity)
        body.setdefault("id", activity_id)
        path = f"v3/conversations/{_q(conversation_id)}/activities/{_q(activity_id)}"
        return await self._call("PUT", service_url, path, body)

    async def delete(self, service_url: str, conversation_id: str, activity_id: str) -> None:
        path = f"v3/conversations/{_q(conversation_id)}/activities/{_q(activity_id)}"
        await self._call("DELETE", service_url, path, None)

    async def typing(self, service_url: str, conversation_id: str) -> None:
        await self.send(service_url, conversation_id, {"type": "typing"})

    async def create_conversation(self, service_url: str, parameters: Mapping[str, Any]) -> dict[str, Any]:
        """POST /v3/conversations (`ConversationParameters`: bot, members, channelData.tenant, …); returns
        the `ConversationResourceResponse` (`id`, maybe `serviceUrl` and `activityId`). See
        `functions.state.proactive.create_conversation`."""
        return await self._call("POST", service_url, "v3/conversations", dict(parameters))

    # --- transport ---

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self._max_retry_after)
        return self._rng.uniform(0, min(self._cap, self._base * 2**attempt))

    async def _call(self, method: str, service_url: str, path: str, body: Mapping[str, Any] | None) -> dict[str, Any]:
        url = check_service_url(service_url, self.allowed_hosts) + path
        where = f"{method} {urlsplit(url).hostname}{urlsplit(url).path}"
        refreshed = False
        attempt = 0
        while True:
            token = await self._tokens.token()
            headers = {"Authorization": f"Bearer {token}"}
            try:
                response = await self._http.request(method, url, json=body, headers=headers)
            except httpx.TransportError as exc:
                if attempt >= self._max_retries:
                    raise BotConnectorError(f"{where}: {type(exc).__name__}") from exc
                delay = self._delay(attempt, None)
                attempt += 1
                log.warning(
                    "Bot Connector %s failed (%s); retry %d in %.2f s", where, type(exc).__name__, attempt, delay
                )
                await self._sleep(delay)
                continue
            status = response.status_code
            if status < 400:
                if not response.content:
                    return {}
                try:
                    data = response.json()
                except ValueError:
                    return {}
                return data if isinstance(data, dict) else {}
            code = _error_code(response)
            if status == 401 and not refreshed:
                refreshed = True
                self._tokens.invalidate()
                continue
            if status == 403 and code == "MessageWritesBlocked":
                raise MessageWritesBlocked(f"{where}: the user blocked or removed the bot", status, code)
            if status in RETRY_STATUSES and attempt < self._max_retries:
                delay = self._delay(attempt, _retry_after(response))
                attempt += 1
                log.warning("Bot Connector %s answered %d; retry %d in %.2f s", where, status, attempt, delay)
                await self._sleep(delay)
                continue
            raise BotConnectorError(
                f"{where} answered {status}{f' ({code})' if code else ''}", status, code, _retry_after(response)
            )


def _q(value: str) -> str:
    return quote(value, safe="")


def _as_activity(value: str | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(value, str):
        return {"type": "message", "text": value}
    body = dict(value)
    body.setdefault("type", "message")
    return body
