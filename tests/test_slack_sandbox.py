"""The sandbox Slack speaks the real Socket Mode protocol: slack_sdk's own clients work against it, and it
behaves like Slack on tickets, retries, the 20 KB limit and the connection cap."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import aiohttp
import httpx
import pytest
import websockets
from slack_sdk.socket_mode.aiohttp import SocketModeClient as AiohttpSocketModeClient
from slack_sdk.socket_mode.async_client import AsyncBaseSocketModeClient
from slack_sdk.socket_mode.builtin import SocketModeClient as BuiltinSocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web import WebClient
from slack_sdk.web.async_client import AsyncWebClient

from devstack.sandbox.slack import SlackSandbox


async def open_url(slack: SlackSandbox, token: str | None = None) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.post(
            slack.api_url + "apps.connections.open", headers={"Authorization": f"Bearer {token or slack.app_token}"}
        )


async def test_slack_sdk_aiohttp_client_receives_and_acks() -> None:
    async with SlackSandbox(ack_deadline=2.0) as slack:
        received: list[SocketModeRequest] = []

        async def listener(client: AsyncBaseSocketModeClient, request: SocketModeRequest) -> None:
            received.append(request)
            await client.send_socket_mode_response(SocketModeResponse(envelope_id=request.envelope_id))

        web = AsyncWebClient(base_url=slack.api_url)
        client = AiohttpSocketModeClient(app_token=slack.app_token, web_client=web, ping_interval=1)
        client.socket_mode_request_listeners.append(listener)
        try:
            await client.connect()
            await slack.wait_connections(1)
            event_id = await slack.send_user_message("hi from the sandbox")
            await slack.wait_acked_keys({event_id}, within=5)
        finally:
            await client.close()
        assert received[0].type == "events_api"
        assert received[0].payload["event"]["type"] == "app_mention"
        assert received[0].payload["event_id"] == event_id
        assert slack.stats.redelivered == 0


async def test_slack_sdk_builtin_client_receives_and_acks() -> None:
    async with SlackSandbox(ack_deadline=2.0) as slack:
        received: list[str] = []
        done = threading.Event()

        def listener(client: Any, request: SocketModeRequest) -> None:
            client.send_socket_mode_response(SocketModeResponse(envelope_id=request.envelope_id))
            received.append(request.type)
            done.set()

        client = BuiltinSocketModeClient(
            app_token=slack.app_token,
            web_client=WebClient(base_url=slack.api_url),
            auto_reconnect_enabled=False,
            ping_interval=0.5,
        )
        client.socket_mode_request_listeners.append(listener)
        try:
            await asyncio.to_thread(client.connect)
            await slack.wait_connections(1)
            command = await slack.send_slash_command("/ticket", "from the builtin client")
            await slack.wait_acked_keys({command.key}, within=5)
        finally:
            await asyncio.to_thread(client.close)
        assert received == ["slash_commands"]


async def test_open_needs_the_app_token_and_tickets_are_single_use() -> None:
    async with SlackSandbox() as slack:
        bad = (await open_url(slack, "xapp-1-nope")).json()
        assert bad == {"ok": False, "error": "invalid_auth"}
        good = (await open_url(slack)).json()
        assert good["ok"] is True and good["url"].startswith("ws://127.0.0.1:")
        async with websockets.connect(good["url"]) as ws:
            hello = json.loads(await ws.recv())
            assert hello["type"] == "hello"
            assert hello["num_connections"] == 1
            assert hello["connection_info"]["app_id"] == slack.app_id
            assert "approximate_connection_time" in hello["debug_info"]
        with pytest.raises(websockets.InvalidStatus):
            async with websockets.connect(good["url"]):
                pass


async def test_open_is_rate_limited_with_retry_after() -> None:
    async with SlackSandbox(open_rate_limit=2, open_rate_window=60) as slack:
        assert (await open_url(slack)).status_code == 200
        assert (await open_url(slack)).status_code == 200
        limited = await open_url(slack)
        assert limited.status_code == 429
        assert limited.json()["error"] == "ratelimited"
        assert 55 <= int(limited.headers["Retry-After"]) <= 61


async def test_unacked_event_is_retried_with_a_new_envelope_id_then_given_up() -> None:
    async with SlackSandbox(ack_deadline=0.2, retry_delays=(0.0, 0.1, 0.1)) as slack:
        url = (await open_url(slack)).json()["url"]
        async with websockets.connect(url) as ws:
            await ws.recv()  # hello
            event_id = await slack.send_user_message("nobody acks me")
            frames = [json.loads(await ws.recv()) for _ in range(4)]
            assert [f["retry_attempt"] for f in frames] == [0, 1, 2, 3]
            assert [f["retry_reason"] for f in frames] == ["", "timeout", "timeout", "timeout"]
            assert len({f["envelope_id"] for f in frames}) == 4
            assert {f["payload"]["event_id"] for f in frames} == {event_id}
            await slack.wait_for(lambda: slack.stats.expired == 1, within=2)
            # slash commands are not retried
            await slack.send_slash_command("/ticket")
            await slack.wait_for(lambda: slack.stats.expired == 2, within=2)
            assert slack.stats.delivered == 5


async def test_frames_of_20_kb_close_the_socket_with_1009() -> None:
    async with SlackSandbox() as slack:
        url = (await open_url(slack)).json()["url"]
        async with websockets.connect(url) as ws:
            await ws.recv()
            await ws.send(json.dumps({"envelope_id": "x", "payload": {"text": "a" * 20480}}))
            with pytest.raises(websockets.ConnectionClosed) as info:
                while True:
                    await ws.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009
        assert slack.stats.oversized_frames == 1


async def test_the_eleventh_socket_is_refused_with_too_many_websockets() -> None:
    async with SlackSandbox(max_connections=2) as slack:
        sockets = []
        for _ in range(2):
            ws = await websockets.connect((await open_url(slack)).json()["url"])
            assert json.loads(await ws.recv())["type"] == "hello"
            sockets.append(ws)
        async with websockets.connect((await open_url(slack)).json()["url"]) as extra:
            frame = json.loads(await extra.recv())
            assert frame == {"type": "disconnect", "reason": "too_many_websockets"}
        for ws in sockets:
            await ws.close()


async def test_http_injection_endpoint_and_web_api_recording() -> None:
    async with SlackSandbox() as slack, aiohttp.ClientSession() as http:
        async with http.post(slack.api_url + "_sandbox/events", json={"kind": "message", "text": "hi"}) as r:
            injected = await r.json()
        assert injected["ok"] is True and injected["key"].startswith("Ev")
        async with http.post(
            slack.api_url + "chat.postMessage",
            json={"channel": "C1", "text": "hello"},
            headers={"Authorization": f"Bearer {slack.bot_token}"},
        ) as r:
            posted = await r.json()
        assert posted["ok"] is True and posted["channel"] == "C1"
        async with http.post(slack.api_url + "chat.postMessage", json={"channel": "C1", "text": "x"}) as r:
            assert (await r.json())["error"] == "not_authed"
        reply = await slack.wait_for_reply(lambda r: r.method == "chat.postMessage")
        assert reply.body == {"channel": "C1", "text": "hello"}
        async with http.get(slack.api_url + "_sandbox/stats") as r:
            stats = await r.json()
        assert stats["delivered"] == 0 and stats["outstanding"] == 1  # waiting for a socket
