"""The worker's local HTTP endpoints: /healthz (alive), /readyz (every connection Online), /metrics.

Served with aiohttp on `RELAYBUS_HTTP_HOST:RELAYBUS_HTTP_PORT` (port 0 picks a free port).
"""

from __future__ import annotations

import errno
import json

from aiohttp import web

from shared.errors import ConfigurationError
from shared.redact import redact
from worker.metrics import Metrics


class HealthServer:
    def __init__(self, metrics: Metrics, platforms: set[str], host: str = "127.0.0.1", port: int = 8080) -> None:
        self._metrics = metrics
        self._platforms = platforms
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.stopping = False

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_handler)
        return app

    async def start(self) -> None:
        """Listen; a port in use or an address this machine does not have is a `ConfigurationError`."""
        self._runner = web.AppRunner(self._app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            setting = "RELAYBUS_HTTP_PORT" if exc.errno == errno.EADDRINUSE else "RELAYBUS_HTTP_HOST"
            raise ConfigurationError(
                setting, f"cannot listen on {self._host}:{self._port} ({exc.strerror or exc})"
            ) from None
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        status = self._metrics.status
        ready = not self.stopping and status.ready(self._platforms)
        body = {
            "ready": ready,
            "connections": [
                {
                    "platform": c.platform,
                    "connection": c.name,
                    "status": c.status.value,
                    "detail": redact(c.detail),
                    "last_error": redact(c.last_error),
                }
                for c in status.snapshot()
            ],
        }
        return web.Response(status=200 if ready else 503, text=json.dumps(body), content_type="application/json")

    async def _metrics_handler(self, _request: web.Request) -> web.Response:
        return web.Response(body=self._metrics.render(), content_type="text/plain", charset="utf-8")
