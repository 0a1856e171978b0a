"""The Slack reply client against the sandbox Slack's Web API."""

from __future__ import annotations

import pytest

from devstack.sandbox.slack import SlackSandbox
from functions.settings import FunctionSettings
from functions.slack_api import SlackApiError, SlackRateLimitedError, SlackWebClient
from shared.errors import ConfigurationError


def client_for(slack: SlackSandbox, **options: object) -> SlackWebClient:
    settings = FunctionSettings.from_env({"SLACK_BOT_TOKEN": slack.bot_token, "SLACK_API_URL": slack.api_url})
    client = SlackWebClient.from_settings(settings)
    for name, value in options.items():
        setattr(client, name, value)
    return client


async def test_post_update_and_views() -> None:
    async with SlackSandbox() as slack:
        client = client_for(slack)
        try:
            posted = await client.post_message("C1", "hello", thread_ts="1.000")
            assert posted["ok"] is True
            updated = await client.update_message("C1", posted["ts"], "edited")
            assert updated["ts"] == posted["ts"]
            opened = await client.open_view(
                "trigger-1", {"type": "modal", "title": {"type": "plain_text", "text": "T"}}
            )
            view_id = opened["view"]["id"]
            await client.update_view({"type": "modal"}, view_id=view_id)
        finally:
            await client.aclose()
        methods = [r.method for r in slack.replies]
        assert methods == ["chat.postMessage", "chat.update", "views.open", "views.update"]
        assert slack.replies[0].body == {"channel": "C1", "text": "hello", "thread_ts": "1.000"}
        assert slack.replies[0].token == slack.bot_token


async def test_ok_false_raises_a_typed_error() -> None:
    async with SlackSandbox() as slack:
        client = client_for(slack)
        try:
            with pytest.raises(SlackApiError) as info:
                await client.update_message("C1", "", "x")
            assert info.value.error == "message_not_found"
            assert info.value.method == "chat.update"
        finally:
            await client.aclose()
        bad = SlackWebClient("xoxb-wrong", api_url=slack.api_url)
        try:
            with pytest.raises(SlackApiError, match="invalid_auth"):
                await bad.post_message("C1", "x")
        finally:
            await bad.aclose()


async def test_429_honours_retry_after_then_gives_up() -> None:
    waits: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waits.append(seconds)

    async with SlackSandbox() as slack:
        client = client_for(slack, _sleep=fake_sleep, max_retries=2)
        try:
            slack.rate_limit_web(2, retry_after=3)
            await client.post_message("C1", "after two 429s")
            assert waits == [3.0, 3.0]
            assert [r.method for r in slack.replies] == ["chat.postMessage"]
            slack.rate_limit_web(3, retry_after=1)
            with pytest.raises(SlackRateLimitedError):
                await client.post_message("C1", "gives up")
        finally:
            await client.aclose()


async def test_real_retry_after_wait() -> None:
    async with SlackSandbox() as slack:
        client = client_for(slack)
        try:
            slack.rate_limit_web(1, retry_after=0.2)
            await client.post_message("C1", "waited")
        finally:
            await client.aclose()
        assert len(slack.replies) == 1


async def test_response_url_posts_and_their_limit() -> None:
    async with SlackSandbox() as slack:
        injected = await slack.send_slash_command("/ticket", "x")
        assert injected.response_url is not None
        client = client_for(slack)
        try:
            for n in range(5):
                await client.respond(injected.response_url, f"answer {n}", response_type="ephemeral")
            with pytest.raises(SlackApiError, match="used_url"):
                await client.respond(injected.response_url, "one too many")
        finally:
            await client.aclose()
        assert slack.replies[0].method == "response_url"
        assert slack.replies[0].token is None
        assert slack.replies[0].body == {"text": "answer 0", "response_type": "ephemeral"}


async def test_without_a_bot_token_only_response_url_replies_work() -> None:
    async with SlackSandbox() as slack:
        injected = await slack.send_slash_command("/ticket", "x")
        assert injected.response_url is not None
        client = SlackWebClient.from_settings(FunctionSettings.from_env({"SLACK_API_URL": slack.api_url}))
        try:
            with pytest.raises(ConfigurationError, match=r"setting SLACK_BOT_TOKEN: is required to call chat\.post"):
                await client.post_message("C1", "needs the token")
            await client.respond(injected.response_url, "no token needed")
        finally:
            await client.aclose()
        assert [r.method for r in slack.replies] == ["response_url"]
