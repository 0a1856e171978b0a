"""`SlackWebClient`: the Slack Web API reply client functions use (httpx, async, one client per process).

    client = SlackWebClient.from_settings(settings)      # SLACK_BOT_TOKEN, SLACK_API_URL
    await client.post_message("C123", "hi", thread_ts=ts)
    await client.respond(response_url, "done")            # slash commands and actions
    await client.aclose()

Rate limits: HTTP 429 (or `ratelimited`) waits `Retry-After` and retries, at most `max_retries` times and
never longer than `max_retry_after` per wait; then `SlackRateLimitedError`. A reply with `ok: false`
raises `SlackApiError` carrying Slack's error code. The token is never logged.

    SlackApiError (RelaybusError)     ok:false, an HTTP error, or a transport failure
    ├── SlackRateLimitedError         still rate limited after the bounded retries
    └── SlackReplyGone                the reply can never land (channel gone or archived, bot not in the
                                      channel, response_url or trigger expired); also a `RecipientGone`,
                                      so the function completes its message with a warning
    ResponseUrlNotAllowed (UnsafeReplyTarget)
                                      a response_url that is not https on an allowed host: the message is
                                      dead-lettered with reason `UnsafeReplyTarget` (nothing is posted)
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import httpx
from pydantic import SecretStr

from functions.reply_urls import parse_target, shown
from functions.settings import DEFAULT_RESPONSE_URL_HOSTS, FunctionSettings
from shared.errors import ConfigurationError, RecipientGone, RelaybusError, UnsafeReplyTarget

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://slack.com/api/"


class SlackApiError(RelaybusError):
    """A Slack Web API call failed. `error` is Slack's code (`channel_not_found`, ...) or `http_<status>`."""

    def __init__(self, method: str, error: str, response: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"slack {method}: {error}")
        self.method = method
        self.error = error
        self.response: Mapping[str, Any] = response or {}


class SlackReplyGone(SlackApiError, RecipientGone):
    """Slack will never accept this reply: retrying the same message cannot help."""


REPLY_GONE_ERRORS = frozenset(
    {"channel_not_found", "is_archived", "not_in_channel", "expired_url", "used_url", "expired_trigger_id"}
)
"""Slack error codes after which the same reply can never succeed."""


def api_error(method: str, error: str, response: Mapping[str, Any] | None = None) -> SlackApiError:
    cls = SlackReplyGone if error in REPLY_GONE_ERRORS else SlackApiError
    return cls(method, error, response)


class ResponseUrlNotAllowed(UnsafeReplyTarget):
    """A response_url off the allowlist (or not https): never posted to, the message is dead-lettered."""


def check_response_url(url: object, allowed_hosts: Sequence[str], allow_loopback: bool = False) -> str:
    """`url` (stripped) when it is https on an allowed host and the default port, without user info; in
    sandbox mode (`allow_loopback`) also any http(s) URL on a loopback host. Else `ResponseUrlNotAllowed`,
    and nothing is sent. Never raises anything else, whatever `url` is."""
    target = parse_target(url)
    if target is None:
        raise ResponseUrlNotAllowed(f"response_url {shown(url)} is not a URL that can be used")
    text, parts = target
    if parts.has_credentials:
        raise ResponseUrlNotAllowed(f"response_url on {parts.host} carries a user name or password")
    if allow_loopback and parts.loopback and parts.scheme in ("http", "https"):
        return text
    if parts.scheme != "https" or parts.port not in (None, 443):
        where = f"{parts.scheme}://{parts.host}" + (f":{parts.port}" if parts.port is not None else "")
        raise ResponseUrlNotAllowed(f"response_url on {where} is not https on the default port")
    if parts.host not in allowed_hosts:
        allowed = ", ".join(allowed_hosts)
        raise ResponseUrlNotAllowed(
            f"response_url host {parts.host!r} is not allowed (SLACK_RESPONSE_URL_ALLOWED_HOSTS: {allowed})"
        )
    return text


class SlackRateLimitedError(SlackApiError):
    def __init__(self, method: str, retry_after: float) -> None:
        super().__init__(method, "ratelimited")
        self.retry_after = retry_after


class SlackWebClient:
    def __init__(
        self,
        token: str | SecretStr | None,
        *,
        api_url: str = DEFAULT_API_URL,
        client: httpx.AsyncClient | None = None,
        timeout: float = 10.0,
        max_retries: int = 3,
        max_retry_after: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        response_url_hosts: Sequence[str] = DEFAULT_RESPONSE_URL_HOSTS,
        allow_loopback_response_urls: bool = False,
    ) -> None:
        self.response_url_hosts = tuple(response_url_hosts)
        self.allow_loopback_response_urls = allow_loopback_response_urls
        self._token = token if isinstance(token, SecretStr) or token is None else SecretStr(token)
        self._api_url = api_url if api_url.endswith("/") else api_url + "/"
        self._client = client or httpx.AsyncClient(timeout=timeout)
        self._owns_client = client is None
        self.max_retries = max_retries
        self.max_retry_after = max_retry_after
        self._sleep = sleep

    @classmethod
    def from_settings(cls, settings: FunctionSettings, client: httpx.AsyncClient | None = None) -> SlackWebClient:
        """The client the settings describe. Without `SLACK_BOT_TOKEN`, `respond` (which needs no token) still
        works and every Web API call raises `ConfigurationError` naming the setting."""
        return cls(
            settings.slack_bot_token,
            api_url=settings.slack_api_url,
            client=client,
            response_url_hosts=settings.response_url_hosts,
            allow_loopback_response_urls=settings.sandbox,
        )

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    # --- methods ---------------------------------------------------------------------------------

    async def post_message(
        self,
        channel: str,
        text: str | None = None,
        *,
        blocks: Sequence[Mapping[str, Any]] | None = None,
        thread_ts: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """chat.postMessage; `thread_ts` answers in a thread."""
        return await self.call(
            "chat.postMessage", channel=channel, text=text, blocks=blocks, thread_ts=thread_ts, **extra
        )

    async def update_message(
        self,
        channel: str,
        ts: str,
        text: str | None = None,
        *,
        blocks: Sequence[Mapping[str, Any]] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """chat.update of the message `ts` in `channel`."""
        return await self.call("chat.update", channel=channel, ts=ts, text=text, blocks=blocks, **extra)

    async def open_view(self, trigger_id: str, view: Mapping[str, Any]) -> dict[str, Any]:
        """views.open (the trigger_id is valid for 3 s after the user's action)."""
        return await self.call("views.open", trigger_id=trigger_id, view=view)

    async def update_view(
        self,
        view: Mapping[str, Any],
        *,
        view_id: str | None = None,
        external_id: str | None = None,
        hash: str | None = None,
    ) -> dict[str, Any]:
        if not view_id and not external_id:
            raise ValueError("views.update needs view_id or external_id")
        return await self.call("views.update", view=view, view_id=view_id, external_id=external_id, hash=hash)

    async def respond(
        self,
        response_url: str,
        text: str | None = None,
        *,
        blocks: Sequence[Mapping[str, Any]] | None = None,
        response_type: str | None = None,
        replace_original: bool | None = None,
        delete_original: bool | None = None,
        **extra: Any,
    ) -> None:
        """POST to a `response_url` (slash commands, actions: 5 posts within 30 minutes). No token.

        The URL must be https on an allowed host (`ResponseUrlNotAllowed` otherwise: nothing is sent)."""
        url = check_response_url(response_url, self.response_url_hosts, self.allow_loopback_response_urls)
        body = _without_none(
            {
                "text": text,
                "blocks": blocks,
                "response_type": response_type,
                "replace_original": replace_original,
                "delete_original": delete_original,
                **extra,
            }
        )
        await self._post("response_url", url, body, authorized=False)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Any Web API method with a JSON body (None values dropped). Returns the reply on `ok: true`."""
        return await self._post(method, self._api_url + method, _without_none(params), authorized=True)

    # --- transport -------------------------------------------------------------------------------

    async def _post(self, method: str, url: str, body: dict[str, Any], *, authorized: bool) -> dict[str, Any]:
        headers = {"Content-Type": "application/json; charset=utf-8"}
        if authorized:
            if self._token is None:
                raise ConfigurationError(
                    "SLACK_BOT_TOKEN",
                    f"is required to call {method} (the bot token, xoxb-…); only response_url replies work without it",
                )
            headers["Authorization"] = f"Bearer {self._token.get_secret_value()}"
        content = json.dumps(body).encode()
        attempt = 0
        while True:
            try:
                response = await self._client.post(url, content=content, headers=headers)
            except httpx.HTTPError as exc:
                raise SlackApiError(method, f"transport_error: {type(exc).__name__}") from exc
            if response.status_code == 429 or _error_of(response) == "ratelimited":
                retry_after = _retry_after(response)
                if attempt >= self.max_retries or retry_after > self.max_retry_after:
                    raise SlackRateLimitedError(method, retry_after)
                attempt += 1
                log.warning("slack %s rate limited: retry %d in %.1f s", method, attempt, retry_after)
                await self._sleep(retry_after)
                continue
            return _result(method, response)


def _result(method: str, response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        data = None
    if method == "response_url":
        if response.is_success and (not isinstance(data, dict) or data.get("ok", True) is not False):
            return data if isinstance(data, dict) else {"ok": True}
        error = data.get("error") if isinstance(data, dict) else None
        raise api_error(method, str(error or f"http_{response.status_code}"), data if isinstance(data, dict) else None)
    if not isinstance(data, dict):
        raise SlackApiError(method, f"http_{response.status_code}")
    if data.get("ok") is not True:
        raise api_error(method, str(data.get("error") or f"http_{response.status_code}"), data)
    for warning in (data.get("response_metadata") or {}).get("warnings", []) or []:
        log.info("slack %s warning: %s", method, warning)
    return data


def _error_of(response: httpx.Response) -> str | None:
    if response.headers.get("content-type", "").startswith("application/json"):
        try:
            data = response.json()
        except ValueError:
            return None
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            return str(data["error"])
    return None


def _retry_after(response: httpx.Response) -> float:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "1")))
    except ValueError:
        return 1.0


def _without_none(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}
