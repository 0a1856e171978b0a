"""Headless Chromium driven over the Chrome DevTools Protocol (tests only): Debian's `chromium` package,
installed with apt when it is missing and the test runs as root where apt-get exists; otherwise the test is
skipped with the reason shown.

    async with Chromium.launch(tmp_path) as browser:
        page = await browser.new_page(url)
        await page.evaluate("document.title")
        await page.screenshot(path)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

ARTIFACTS = Path(__file__).resolve().parent.parent / ".relaybus" / "artifacts"
"""Where browser tests keep their screenshots (kept after the run)."""


def chromium_binary() -> str:
    """The chromium executable; installs Debian's package when possible, else `pytest.skip` with the reason."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    apt = shutil.which("apt-get")
    if apt is None:
        pytest.skip("no chromium, and no apt-get to install Debian's chromium package: the browser test cannot run")
    if os.geteuid() != 0:
        pytest.skip("no chromium, and not root: install Debian's chromium package (apt-get install chromium)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    result = subprocess.run(
        [apt, "install", "-y", "--no-install-recommends", "chromium"],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    if result.returncode != 0:
        update = subprocess.run([apt, "update"], capture_output=True, text=True, timeout=300, env=env)
        if update.returncode == 0:
            result = subprocess.run(
                [apt, "install", "-y", "--no-install-recommends", "chromium"],
                capture_output=True,
                text=True,
                timeout=900,
                env=env,
            )
    found = shutil.which("chromium")
    if result.returncode != 0 or found is None:
        tail = " ".join((result.stderr or result.stdout).strip().splitlines()[-3:])[:300]
        pytest.skip(f"apt-get install chromium failed (exit {result.returncode}): {tail}")
    return found


class Page:
    """One tab, over its own DevTools WebSocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, target_id: str) -> None:
        self.ws = ws
        self.target_id = target_id
        self._ids = itertools.count(1)
        self.console: list[str] = []

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        await self.ws.send_str(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = await self.ws.receive(timeout=30)
            if message.type != aiohttp.WSMsgType.TEXT:
                raise ConnectionError(f"DevTools connection ended ({message.type.name})")
            data = json.loads(message.data)
            if data.get("method") == "Runtime.consoleAPICalled":
                args = data["params"].get("args", [])
                self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
            if data.get("id") == call_id:
                if "error" in data:
                    raise RuntimeError(f"{method}: {data['error']}")
                result: dict[str, Any] = data.get("result", {})
                return result

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, *, within: float = 10.0, every: float = 0.02) -> Any:
        """Until `expression` is truthy in the page (its value), `TimeoutError` otherwise. A script error counts as
        not yet (the page may still be loading: no `document.body` yet); the last one is in the timeout's text."""
        last_error: RuntimeError | None = None
        try:
            async with asyncio.timeout(within):
                while True:
                    try:
                        value = await self.evaluate(expression)
                    except RuntimeError as exc:
                        last_error, value = exc, None
                    if value:
                        return value
                    await asyncio.sleep(every)
        except TimeoutError:
            raise TimeoutError(f"{expression!r} not true within {within} s (last script error: {last_error})") from None

    async def screenshot(self, path: Path) -> Path:
        data = await self.send("Page.captureScreenshot", format="png")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data["data"]))
        return path


class Chromium:
    def __init__(self, process: asyncio.subprocess.Process, port: int, http: aiohttp.ClientSession) -> None:
        self.process = process
        self.port = port
        self.http = http
        self.pages: list[Page] = []

    @classmethod
    @contextlib.asynccontextmanager
    async def launch(cls, profile: Path) -> AsyncIterator[Chromium]:
        binary = chromium_binary()
        profile.mkdir(parents=True, exist_ok=True)
        process = await asyncio.create_subprocess_exec(
            binary,
            "--headless=new",
            "--no-sandbox",  # root in a container: the sandbox cannot start
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--window-size=1100,800",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "about:blank",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            port_file = profile / "DevToolsActivePort"
            async with asyncio.timeout(30):
                while not port_file.is_file() or not port_file.read_text().strip():
                    if process.returncode is not None:
                        raise RuntimeError(f"chromium exited with {process.returncode}")
                    await asyncio.sleep(0.05)
            port = int(port_file.read_text().splitlines()[0])
            async with aiohttp.ClientSession() as http:
                browser = cls(process, port, http)
                try:
                    yield browser
                finally:
                    for page in browser.pages:
                        with contextlib.suppress(Exception):
                            await page.ws.close()
        finally:
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), 10)
                except TimeoutError:
                    process.kill()
                    await process.wait()

    async def new_page(self, url: str = "about:blank") -> Page:
        async with self.http.put(f"http://127.0.0.1:{self.port}/json/new?about:blank") as response:
            target = await response.json(content_type=None)
        ws = await self.http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=64 * 1024 * 1024)
        page = Page(ws, target["id"])
        self.pages.append(page)
        await page.send("Page.enable")
        await page.send("Runtime.enable")
        if url != "about:blank":
            await page.send("Page.navigate", url=url)
        return page


__all__ = ["ARTIFACTS", "Chromium", "Page", "chromium_binary"]
