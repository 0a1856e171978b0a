"""The local SignalR Service (`devstack.signalr_service`): the official `@microsoft/signalr` node client negotiates
through the function app and receives pushes, and the data plane the bindings use behaves as Azure's does
(tokens it signs, group membership of users, 401/413, a client that never reads is closed)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from devstack import live as dev_live
from devstack.azurite import NodeMissing
from devstack.signalr_service import LocalSignalRService
from functions.live import LiveService, PushError, SignalRAction, access_key_token
from tests.live_helpers import TENANT_A, TENANT_B, LiveStack, live_stack
from worker.teams import signalr


def node_client() -> Path:
    try:
        dev_live.install()
    except NodeMissing as exc:
        pytest.skip(f"node/npm not found, the @microsoft/signalr client cannot run here: {exc}")
    return dev_live.node_client()


async def _line(stream: asyncio.StreamReader, within: float = 20.0) -> dict[str, Any]:
    raw = await asyncio.wait_for(stream.readline(), within)
    if not raw:
        raise AssertionError("the node client exited early")
    data = json.loads(raw)
    assert isinstance(data, dict)
    return data


async def start_node(stack: LiveStack, script: Path, tenant: str, user: str, **mint: Any) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        "node",
        str(script),
        stack.hub_url,
        stack.issuer.mint(tenant, user, **mint),
        stack.issuer.user_id(tenant, user),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_the_official_node_client_negotiates_through_the_function_and_receives_pushes(tmp_path: Path) -> None:
    script = node_client()
    async with live_stack(tmp_path) as stack:
        alice = await start_node(stack, script, TENANT_A, "alice")
        bob = await start_node(stack, script, TENANT_B, "bob")
        refused = await start_node(stack, script, TENANT_A, "eve", audience="api://another-app")
        try:
            assert alice.stdout and bob.stdout and refused.stdout and alice.stdin and bob.stdin
            assert (await _line(alice.stdout))["event"] == "started"
            assert (await _line(bob.stdout))["event"] == "started"
            error = await _line(refused.stdout)
            assert error["event"] == "error" and "401" in error["message"]
            await stack.service.wait_connections(2)
            service = LiveService(stack.service.endpoint, "relaybus", access_key=stack.service.access_key)
            try:
                for n in range(5):
                    await service.perform(
                        SignalRAction("activity", ({"n": n, "to": "A"},), group_name="tenant:contoso")
                    )
                await service.perform(SignalRAction("activity", ({"n": 99, "to": "B"},), group_name="tenant:fabrikam"))
            finally:
                await service.aclose()
            got = [await _line(alice.stdout) for _ in range(5)]
            assert [g["data"] for g in got] == [{"n": n, "to": "A"} for n in range(5)]
            assert (await _line(bob.stdout))["data"] == {"n": 99, "to": "B"}
            for process in (alice, bob):
                assert process.stdin is not None and process.stdout is not None
                process.stdin.close()
            assert (await _line(alice.stdout))["received"] == 5
            assert (await _line(bob.stdout))["received"] == 1
        finally:
            for process in (alice, bob, refused):
                if process.returncode is None:
                    process.kill()
                await process.wait()
        assert stack.service.stats["negotiates"] == 2  # the refused client never reached the service


async def test_the_data_plane_checks_its_tokens_and_sizes() -> None:
    async with LocalSignalRService() as service, aiohttp.ClientSession() as http:
        url = f"{service.endpoint}/api/v1/hubs/relaybus/groups/tenant:contoso"
        body = {"target": "activity", "arguments": [1]}
        async with http.post(url, json=body) as response:
            assert response.status == 401
        wrong = access_key_token("not-the-key-" + "k" * 32, url)
        async with http.post(url, json=body, headers={"Authorization": f"Bearer {wrong}"}) as response:
            assert response.status == 401
        other_url = access_key_token(service.access_key, f"{service.endpoint}/api/v1/hubs/relaybus/groups/other")
        async with http.post(url, json=body, headers={"Authorization": f"Bearer {other_url}"}) as response:
            assert response.status == 401  # a token is for one URL
        good = access_key_token(service.access_key, url)
        async with http.post(url, json=body, headers={"Authorization": f"Bearer {good}"}) as response:
            assert response.status == 202
        client = LiveService(service.endpoint, "relaybus", access_key=service.access_key)
        try:
            with pytest.raises(PushError) as too_large:
                await client.perform(SignalRAction("activity", ("x" * (1024 * 1024),), group_name="g"))
            assert too_large.value.reason == "too_large"
            await client.perform(SignalRAction(user_id="contoso:u1", group_name="g", action="add"))
            assert service.users_in("g") == {"contoso:u1"}
            await client.perform(SignalRAction(user_id="contoso:u1", group_name="g", action="remove"))
            assert service.users_in("g") == set()
            service.throttle(1, retry_after=7)
            with pytest.raises(PushError) as throttled:
                await client.perform(SignalRAction("activity", (1,), group_name="g"))
            assert (throttled.value.reason, throttled.value.retry_after) == ("throttled", 7.0)
        finally:
            await client.aclose()
        # a client token for one hub does not open another, and a connection token is single-use
        token = access_key_token(service.access_key, f"{service.endpoint}/client/?hub=relaybus", nameid="contoso:u1")
        async with http.post(
            f"{service.endpoint}/client/negotiate?hub=other&negotiateVersion=1",
            headers={"Authorization": f"Bearer {token}"},
        ) as response:
            assert response.status == 401


async def test_a_user_in_a_group_gets_its_pushes_on_every_connection_and_a_client_that_never_reads_is_closed(
    tmp_path: Path,
) -> None:
    async with LocalSignalRService(send_queue=16) as service, aiohttp.ClientSession() as http:
        client_token = access_key_token(service.access_key, f"{service.endpoint}/client/?hub=relaybus", nameid="u1")

        async def open_raw() -> aiohttp.ClientWebSocketResponse:
            async with http.post(
                f"{service.endpoint}/client/negotiate?hub=relaybus&negotiateVersion=1",
                headers={"Authorization": f"Bearer {client_token}"},
            ) as response:
                grant = await response.json()
            ws = await http.ws_connect(
                f"{service.endpoint.replace('http', 'ws')}/client/?hub=relaybus&id={grant['connectionToken']}"
                f"&access_token={client_token}"
            )
            await ws.send_str(signalr.handshake_request())
            assert (await ws.receive(timeout=5)).data.startswith("{}")
            return ws

        reader, frozen = await open_raw(), await open_raw()
        await service.wait_connections(2)
        client = LiveService(service.endpoint, "relaybus", access_key=service.access_key)
        try:
            await client.perform(SignalRAction(user_id="u1", group_name="g", action="add"))
            big = "y" * 200_000  # frames the frozen client's socket buffers fill up with
            started = time.monotonic()
            for n in range(60):
                await client.perform(SignalRAction("activity", ({"n": n, "pad": big},), group_name="g"))
                message = await reader.receive(timeout=5)
                assert f'"n":{n},' in message.data
            assert time.monotonic() - started < 20  # the frozen client never slowed the pushes down
        finally:
            await client.aclose()
        deadline = time.monotonic() + 5
        while service.stats["slow_closed"] == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert service.stats["slow_closed"] == 1
        assert len(service.ready_connections()) == 1
        await reader.close()
        frozen_ws = frozen
        await frozen_ws.close()
