"""EVIDENCE for the SignalR client decision (docs/signalr-client-evaluation.md), run against the sandbox hub.

Every test named `test_evidence_*` asserts the OBSERVED, BAD behaviour of a third-party client
(`signalrcore` 1.0.2, `pysignalr` 1.3.3). If one of these starts failing after an upgrade, the library
fixed that problem: update the evaluation document, then the test. The last test runs the same
decisive cases against relaybus' own client for contrast.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pysignalr.client import SignalRClient
from signalrcore.hub_connection_builder import HubConnectionBuilder

from devstack.sandbox.teams import TeamsSandbox


async def grant(sandbox: TeamsSandbox) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{sandbox.base_url}/amer/v3/websockets/connect", headers={"Authorization": f"Bearer {sandbox.bot_token}"}
        )
    data = response.json()
    assert isinstance(data, dict)
    return data


async def until(predicate: Any, within: float = 3.0) -> None:
    async with asyncio.timeout(within):
        while not predicate():
            await asyncio.sleep(0.02)


class SignalRCore:
    """signalrcore's thread-based hub connection, started and stopped off the event loop."""

    def __init__(self, url: str, token: str) -> None:
        self.calls: list[Any] = []
        self.hub = HubConnectionBuilder().with_url(url, options={"access_token_factory": lambda: token}).build()
        self.hub.on("Activity", self.calls.append)
        self.hub.on("SocketReady", lambda _args: None)

    async def __aenter__(self) -> SignalRCore:
        await asyncio.to_thread(self.hub.start)
        return self

    async def __aexit__(self, *_: object) -> None:
        await asyncio.wait_for(asyncio.to_thread(self.hub.stop), 5)


async def signalrcore_session(sandbox: TeamsSandbox) -> AsyncIterator[SignalRCore]:
    data = await grant(sandbox)
    async with SignalRCore(data["url"], data["accessToken"]) as client:
        yield client


# --- signalrcore 1.0.2 ---


async def test_evidence_signalrcore_uses_connection_id_where_negotiate_v1_wants_the_token() -> None:
    async with TeamsSandbox() as sandbox:  # negotiateVersion 1: the id to connect with is connectionToken
        data = await grant(sandbox)
        client = SignalRCore(data["url"], data["accessToken"])
        with pytest.raises(Exception):  # noqa: B017 - whatever it raises, it never connects
            await asyncio.to_thread(client.hub.start)
            await until(lambda: sandbox.stats["connections"] > 0, within=1.0)
        assert sandbox.stats["rejected_connection_ids"] >= 1 and sandbox.stats["connections"] == 0
        await asyncio.to_thread(client.hub.stop)


async def test_evidence_signalrcore_cannot_answer_invocations_and_sends_handshake_v0(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with TeamsSandbox(negotiate_version=0, deadline_ms=300, keepalive=0.2) as sandbox:
        data = await grant(sandbox)
        async with SignalRCore(data["url"], data["accessToken"]) as client:
            await sandbox.wait_sessions(1)
            await sandbox.send_user_message("needs a completion")
            await until(lambda: sandbox.stats["redeliveries"] >= 2)
            assert sandbox.handshake_versions == [0]  # asks for JSON protocol version 0
            # the handler sees only the arguments list: no invocationId, so no completion can ever be sent
            [arguments, *_] = client.calls  # the handler gets the arguments list, nothing else
            assert isinstance(arguments, list) and set(arguments[0]) >= {"envelopeId", "payload"}
            assert not sandbox.acked and sandbox.stats["deadline_missed"] >= 2
        # and it logs the access token at DEBUG
        assert any(data["accessToken"] in record.getMessage() for record in caplog.records)


async def test_evidence_signalrcore_never_answers_websocket_pings() -> None:
    async with TeamsSandbox(negotiate_version=0, ws_heartbeat=0.4, keepalive=0.2) as sandbox:
        data = await grant(sandbox)
        async with SignalRCore(data["url"], data["accessToken"]):
            await sandbox.wait_sessions(1)
            started = time.monotonic()
            await until(lambda: not sandbox.ready_sessions(), within=3)
            assert time.monotonic() - started < 1.5  # dropped by a server that pings


# --- pysignalr 1.3.3 ---


def pysignalr_client(url: str, **kw: Any) -> tuple[SignalRClient, list[float]]:
    client = SignalRClient(url, retry_sleep=0.01, **kw)
    handled: list[float] = []

    async def on_activity(args: list[dict[str, Any]]) -> dict[str, Any]:
        await asyncio.sleep(0.1)  # stands for the durable publish that must precede the ack
        handled.append(time.perf_counter())
        envelope = args[0]
        return {"protocolVersion": 1, "envelopeId": envelope["envelopeId"], "botKey": envelope["botKey"], "status": 200}

    async def on_ready(_args: list[Any]) -> None:
        return None

    client.on("Activity", on_activity)
    client.on("SocketReady", on_ready)
    return client, handled


async def test_evidence_pysignalr_serialises_callbacks_and_reuses_a_spent_connection_id() -> None:
    async with TeamsSandbox(negotiate_version=0, keepalive=0.2) as sandbox:
        data = await grant(sandbox)
        client, _handled = pysignalr_client(data["url"], headers={"Authorization": f"Bearer {data['accessToken']}"})
        task = asyncio.create_task(client.run())
        try:
            await sandbox.wait_sessions(1)
            started = time.perf_counter()
            for i in range(10):
                await sandbox.send_user_message(f"serial {i}")
            await sandbox.wait_acked(10, within=5)
            assert time.perf_counter() - started >= 0.95  # 10 x 0.1 s, one after the other
            sandbox.drop_all()
            # its first reconnect reuses the old, spent connection id (refused), before it renegotiates
            await until(lambda: sandbox.stats["rejected_connection_ids"] >= 1)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_evidence_pysignalr_applies_the_token_factory_only_after_negotiate() -> None:
    async with TeamsSandbox(keepalive=0.2) as sandbox:
        data = await grant(sandbox)
        client, _ = pysignalr_client(data["url"], access_token_factory=lambda: str(data["accessToken"]), retry_count=1)
        with pytest.raises(Exception) as raised:  # the type is asserted below
            await asyncio.wait_for(client.run(), 5)
        assert type(raised.value).__name__ == "AuthorizationError"
        assert sandbox.stats["signalr_negotiates"] == 1 and sandbox.stats["connections"] == 0


# --- relaybus' own client, the same cases ---


async def test_relaybus_client_passes_the_same_cases() -> None:
    from tests.test_teams_connector import make_sandbox, running
    from worker.publish.memory import MemoryBackend

    backend = MemoryBackend(latency=0.1)
    async with make_sandbox(ws_heartbeat=0.4, redeliver_delay=0.01) as sandbox, running(sandbox, backend=backend):
        started = time.perf_counter()
        for i in range(10):
            await sandbox.send_user_message(f"parallel {i}")
        await sandbox.wait_acked(10, within=5)
        assert time.perf_counter() - started < 0.5  # publishes overlap
        assert sandbox.handshake_versions == [1]
        await asyncio.sleep(0.6)
        assert sandbox.stats["connections"] == 1  # answers websocket pings
        sandbox.drop_all()
        await until(lambda: sandbox.stats["connections"] == 2 and len(sandbox.ready_sessions()) == 1)
        assert sandbox.stats["rejected_connection_ids"] == 0 and sandbox.stats["signalr_negotiates"] == 2
