"""The live stack the live tests share: a local SignalR Service, a local token issuer, a function app with the
live functions (and, when asked, the Service Bus routes) served by the local functions host."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import azure.functions as func

from devstack.funchost import LocalFunctionsHost
from devstack.signalr_service import LiveHubClient, LocalSignalRService, connect_hub
from devstack.tokens import LocalTokenIssuer
from functions import Bot, FunctionSettings
from functions import live as function_live
from functions.live import USER_ID_HEADER, register_live
from functions.triggers import register_routes

ROOT = Path(__file__).resolve().parent.parent
TENANT_A = "contoso"
TENANT_B = "fabrikam"


@dataclass
class LiveStack:
    service: LocalSignalRService
    issuer: LocalTokenIssuer
    host: LocalFunctionsHost
    app: func.FunctionApp
    bot: Bot
    settings: FunctionSettings
    env: dict[str, str]
    http: aiohttp.ClientSession
    queue_path: Path
    connections: list[LiveHubClient] = field(default_factory=list)

    @property
    def hub_url(self) -> str:
        """The URL a SignalR client is given: it negotiates at `<hub_url>/negotiate` (the function)."""
        return self.host.url_of("live")

    @property
    def negotiate_url(self) -> str:
        return self.host.url_of("live/negotiate")

    def headers(self, tenant: str, user: str = "alice") -> dict[str, str]:
        return {USER_ID_HEADER: self.issuer.user_id(tenant, user)}

    async def connect(self, tenant: str, user: str = "alice", **mint: Any) -> LiveHubClient:
        """A client signed in as `user` of `tenant`, through the negotiate function."""
        token = self.issuer.mint(tenant, user, **mint)
        connection = await connect_hub(self.http, self.hub_url, token=token, headers=self.headers(tenant, user))
        self.connections.append(connection)
        return connection

    async def negotiate(
        self, token: str | None, headers: Mapping[str, str] | None = None, params: Mapping[str, str] | None = None
    ) -> tuple[int, Any]:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        async with self.http.post(self.negotiate_url, headers=sent, params=params or {}) as response:
            try:
                body = await response.json(content_type=None)
            except ValueError:
                body = await response.text()
            return response.status, body


def live_env(service: LocalSignalRService, issuer: LocalTokenIssuer, **extra: str) -> dict[str, str]:
    return {"AzureSignalRConnectionString": service.connection_string, **issuer.settings(), **extra}


@contextlib.asynccontextmanager
async def live_stack(
    tmp_path: Path, *, bot: Bot | None = None, routes: bool = False, **extra: str
) -> AsyncIterator[LiveStack]:
    async with (
        LocalSignalRService() as service,
        LocalTokenIssuer(tenants=(TENANT_A, TENANT_B, "northwind")) as issuer,
        aiohttp.ClientSession() as http,
    ):
        env = live_env(service, issuer, **extra)
        settings = FunctionSettings.from_env(env)
        app = func.FunctionApp()
        bot = bot or Bot(remember_conversations=False)
        if routes:
            register_routes(app, bot, settings)
        register_live(app, bot, settings)
        queue_path = tmp_path / "queue.db"
        host = LocalFunctionsHost(app, queue_path, ROOT / "host.json", env, poll_interval=0.02)
        stopping = asyncio.Event()
        task = asyncio.create_task(host.run(stopping))
        stack = LiveStack(service, issuer, host, app, bot, settings, env, http, queue_path)
        try:
            await host.wait_http()
            yield stack
        finally:
            for connection in stack.connections:
                with contextlib.suppress(Exception):
                    await connection.close()
            stopping.set()
            await asyncio.wait_for(task, 10)
            await function_live.aclose()
