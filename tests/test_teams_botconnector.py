"""The functions' Bot Connector client and the example Teams handlers, against the sandbox's Bot Connector."""

from __future__ import annotations

import time
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError

from devstack.sandbox.teams import TeamsSandbox
from functions import Context, ReplyClients
from functions.settings import FunctionSettings
from functions.teams_api import (
    BotConnectorClient,
    BotConnectorError,
    MessageWritesBlocked,
    ServiceUrlNotAllowed,
    check_service_url,
)
from handlers import bot
from shared.envelope import Envelope
from shared.teams_auth import CredentialTokenProvider, StaticTokenProvider, TokenError
from worker.teams.protocol import parse_delivery


class Sleeps:
    """A sleep that records delays instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def client_for(sandbox: TeamsSandbox, sleeps: Sleeps | None = None, **kw: Any) -> BotConnectorClient:
    return BotConnectorClient(
        StaticTokenProvider(sandbox.bot_token), allowed_hosts=("127.0.0.1",), sleep=sleeps or Sleeps(), **kw
    )


async def test_reply_send_update_delete_typing() -> None:
    async with TeamsSandbox() as sandbox:
        client = client_for(sandbox)
        activity = sandbox.new_activity("hi", conversation_id="19:abc@thread.tacv2;messageid=42")
        answer = await client.reply(activity, "hello back")
        assert answer["id"].startswith("reply-")
        await client.send(sandbox.service_url, "a:conv", {"type": "message", "text": "proactive"})
        await client.update(sandbox.service_url, "a:conv", "act-1", "edited")
        await client.delete(sandbox.service_url, "a:conv", "act-1")
        await client.typing(sandbox.service_url, "a:conv")
        await client.aclose()
        replies = sandbox.replies
        assert [(r.method, r.activity_id) for r in replies] == [
            ("POST", activity["id"]),
            ("POST", None),
            ("PUT", "act-1"),
            ("DELETE", "act-1"),
            ("POST", None),
        ]
        first = replies[0]
        assert first.conversation_id == "19:abc@thread.tacv2;messageid=42"
        assert first.body is not None and first.body["text"] == "hello back"
        assert first.body["replyToId"] == activity["id"] and first.body["recipient"]["id"] == "29:sandbox-user"
        assert replies[4].body == {"type": "typing"}


@pytest.mark.parametrize("status", [429, 412, 502, 504])
async def test_throttling_and_gateway_errors_are_retried(status: int) -> None:
    async with TeamsSandbox() as sandbox:
        sleeps = Sleeps()
        client = client_for(sandbox, sleeps)
        sandbox.fail_replies(status, times=2, headers={"Retry-After": "3"} if status == 429 else {})
        await client.reply(sandbox.new_activity(), "eventually")
        await client.aclose()
        assert len(sandbox.replies) == 1 and sandbox.stats[f"reply_{status}"] == 2
        assert len(sleeps.delays) == 2
        if status == 429:
            assert sleeps.delays == [3.0, 3.0]
        else:
            assert sleeps.delays[0] <= 0.5 and sleeps.delays[1] <= 1.0  # full jitter, growing cap


async def test_retries_give_up_after_the_limit() -> None:
    async with TeamsSandbox() as sandbox:
        client = client_for(sandbox, max_retries=2)
        sandbox.fail_replies(502, times=5)
        with pytest.raises(BotConnectorError) as raised:
            await client.send(sandbox.service_url, "a:conv", "never")
        await client.aclose()
        assert raised.value.status == 502 and sandbox.stats["reply_502"] == 3


async def test_message_writes_blocked_is_not_retried() -> None:
    async with TeamsSandbox() as sandbox:
        sleeps = Sleeps()
        client = client_for(sandbox, sleeps)
        sandbox.fail_replies(403, times=3, body={"error": {"code": "MessageWritesBlocked", "message": "blocked"}})
        with pytest.raises(MessageWritesBlocked):
            await client.reply(sandbox.new_activity(), "anyone there?")
        await client.aclose()
        assert sandbox.stats["reply_403"] == 1 and not sleeps.delays


async def test_a_401_refreshes_the_token_once() -> None:
    async with TeamsSandbox() as sandbox:
        tokens = StaticTokenProvider(sandbox.bot_token)
        client = BotConnectorClient(tokens, allowed_hosts=("127.0.0.1",))
        sandbox.fail_replies(401, times=1)
        await client.send(sandbox.service_url, "a:conv", "after refresh")
        await client.aclose()
        assert tokens.invalidations == 1 and len(sandbox.replies) == 1


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example.com/teams/",
        "https://smba.trafficmanager.net.evil.com/teams/",
        "http://smba.trafficmanager.net/teams/",
        "https://user:pw@smba.trafficmanager.net/teams/",
        "http://127.0.0.1:1/botconnector/",  # local hosts only when configured
    ],
)
async def test_forged_service_urls_never_see_the_token(url: str) -> None:
    tokens = StaticTokenProvider("secret")
    client = BotConnectorClient(tokens)
    with pytest.raises(ServiceUrlNotAllowed):
        await client.send(url, "a:conv", "leak?")
    await client.aclose()
    assert tokens.calls == 0


def test_default_allowlist_accepts_bot_framework_hosts() -> None:
    hosts = FunctionSettings.from_env({}).service_url_hosts
    for url in (
        "https://smba.trafficmanager.net/teams/",
        "https://smba.trafficmanager.net/amer/",
        "https://smba.infra.gcc.teams.microsoft.com/teams",
        "https://europe.webchat.botframework.com/",
    ):
        assert check_service_url(url, hosts).endswith("/")
    custom = FunctionSettings.from_env({"BOT_CONNECTOR_ALLOWED_HOSTS": " 127.0.0.1 , .example.org"})
    assert custom.service_url_hosts == ("127.0.0.1", ".example.org")


class FakeCredential:
    """A real implementation of azure-identity's async credential interface, counting requests."""

    def __init__(self, lifetime: float, fail: bool = False) -> None:
        self.lifetime = lifetime
        self.fail = fail
        self.calls = 0
        self.scopes: list[str] = []

    async def get_token(self, *scopes: str, **_kw: Any) -> AccessToken:
        self.calls += 1
        self.scopes.extend(scopes)
        if self.fail:
            raise ClientAuthenticationError("AADSTS7000215: invalid client secret")
        return AccessToken(f"token-{self.calls}", int(time.time() + self.lifetime))

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> FakeCredential:
        return self

    async def __aexit__(self, *_: object) -> None:
        return None


async def test_credential_tokens_are_cached_until_near_expiry() -> None:
    long = FakeCredential(3600)
    provider = CredentialTokenProvider(long)  # type: ignore[arg-type]
    assert await provider.token() == await provider.token() == "token-1"
    assert long.calls == 1 and long.scopes == ["https://api.botframework.com/.default"]
    short = FakeCredential(120)  # inside the 300 s refresh margin: fetched every time
    provider = CredentialTokenProvider(short)  # type: ignore[arg-type]
    await provider.token()
    await provider.token()
    assert short.calls == 2
    failing = CredentialTokenProvider(FakeCredential(3600, fail=True), description="client secret")  # type: ignore[arg-type]
    with pytest.raises(TokenError, match="client secret"):
        await failing.token()


def test_from_settings_refuses_a_static_token_for_real_hosts() -> None:
    from shared.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="sandbox only") as err:
        FunctionSettings.from_env({"TEAMS_STATIC_TOKEN": "x"})
    assert err.value.setting == "TEAMS_STATIC_TOKEN"
    client = BotConnectorClient.from_settings(
        FunctionSettings.from_env({"TEAMS_STATIC_TOKEN": "x", "BOT_CONNECTOR_ALLOWED_HOSTS": "127.0.0.1"})
    )
    assert client.allowed_hosts == ("127.0.0.1",)


async def _run_handler(sandbox: TeamsSandbox, activity: dict[str, Any], kind: str) -> None:
    delivery = parse_delivery([{"envelopeId": "e" * 32, "type": kind, "payload": activity}])
    envelope = Envelope.model_validate(delivery.to_envelope().model_dump())
    settings = FunctionSettings.from_env(
        {"TEAMS_STATIC_TOKEN": sandbox.bot_token, "BOT_CONNECTOR_ALLOWED_HOSTS": "127.0.0.1"}
    )
    clients = ReplyClients(settings)
    try:
        assert await bot.dispatch(Context(envelope, settings, clients))
    finally:
        await clients.aclose()


async def test_example_message_handler_replies() -> None:
    async with TeamsSandbox() as sandbox:
        await _run_handler(sandbox, sandbox.new_activity("ping"), "activity")
        [reply] = sandbox.replies
        assert reply.body is not None and reply.body["text"] == "You said: ping"


async def test_example_card_action_handler_answers() -> None:
    async with TeamsSandbox() as sandbox:
        activity = sandbox.new_activity("", activity_type="invoke")
        activity["name"] = "adaptiveCard/action"
        activity["value"] = {"action": {"type": "Action.Execute", "verb": "approve", "data": {"id": 1}}}
        await _run_handler(sandbox, activity, "invoke")
        [reply] = sandbox.replies
        assert reply.body is not None and "approve" in reply.body["text"]
