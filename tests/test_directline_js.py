"""The sandbox Direct Line against the official `botframework-directlinejs` client (npm, run in node): proof that
it speaks Direct Line 3.0 the way the reference client expects (start, stream, post, replay after a watermark,
polling, 403 TokenExpired → ExpiredToken, end).

The client (devstack/npm/directline, pinned by its package-lock.json) is installed with `npm ci` on first use
(`devstack.directlinejs`); the tests are skipped, with the reason shown, only where node or npm is missing.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.azurite import NodeMissing, node_tools
from devstack.directlinejs import install
from devstack.sandbox.directline import DirectLineSandbox

USER = {"id": "relaybus-u-js", "name": "Ada", "role": "user"}


@pytest.fixture(scope="module")
def client_script() -> Path:
    try:
        node_tools()
    except NodeMissing as exc:
        pytest.skip(f"botframework-directlinejs cannot run here: {exc}")
    return install()


class JsClient:
    """One `node client.cjs` process: its JSON lines collected, commands written to its stdin."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(json.loads(raw))

    @property
    def statuses(self) -> list[str]:
        return [line["status"] for line in self.lines if "status" in line]

    @property
    def activities(self) -> list[dict[str, Any]]:
        return [line["activity"] for line in self.lines if "activity" in line]

    def texts(self, role: str = "bot") -> list[str]:
        return [str(a.get("text")) for a in self.activities if a["from"].get("role") == role and a.get("text")]

    async def send(self, command: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        await self.proc.stdin.drain()

    async def post(self, text: str | None = None, **extra: Any) -> None:
        activity = {"type": "message", "from": USER, **extra}
        if text is not None:
            activity["text"] = text
        await self.send({"post": activity})

    async def until(self, predicate: Any, within: float = 10.0, what: str = "the client") -> None:
        async with asyncio.timeout(within):
            while not predicate():
                if self._reader.done():
                    raise AssertionError(f"the client exited before {what}: {self.lines[-5:]}")
                await asyncio.sleep(0.02)

    async def end(self) -> None:
        await self.send({"end": True})
        await asyncio.wait_for(self.proc.wait(), 10)
        await self._reader


async def js_client(script: Path, base_url: str, credential: str, mode: str, *resume: str) -> JsClient:
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(script),
        base_url,
        credential,
        mode,
        *resume,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    return JsClient(proc)


async def test_the_official_client_goes_online_posts_and_receives_over_the_websocket(client_script: Path) -> None:
    async with DirectLineSandbox() as sandbox:
        client = await js_client(client_script, sandbox.base_url, sandbox.secret, "websocket")
        try:
            await client.until(lambda: "Online" in client.statuses, what="Online")
            assert client.statuses[:3] == ["Uninitialized", "Connecting", "Online"]
            await client.post("hello")
            await client.until(lambda: "Echo: hello" in client.texts(), what="the echo")
            await client.post("card")
            await client.until(lambda: any(a.get("attachments") for a in client.activities), what="the card")
            card = next(a for a in client.activities if a.get("attachments"))
            assert card["attachments"][0]["contentType"] == "application/vnd.microsoft.card.adaptive"
            await client.post(value={"choice": "a"})
            await client.until(lambda: any(t.startswith("You chose") for t in client.texts()), what="the submit")
            posted = [line["posted"] for line in client.lines if "posted" in line]
            assert len(posted) == 3 and all("|" in p for p in posted)
            ids = [a["id"] for a in client.activities]
            assert len(ids) == len(set(ids))  # each activity once, with its id
            assert client.texts("user") == ["hello", "card"]  # Direct Line echoes the user's own messages too
            assert sandbox.stats.sockets_opened == 1 and sandbox.stats.conversations_started == 1
        finally:
            await client.end()
        assert client.statuses[-1] == "Ended"


async def test_the_official_client_resumes_after_a_watermark_and_gets_only_what_came_later(
    client_script: Path,
) -> None:
    async with DirectLineSandbox() as sandbox:
        cid = await sandbox.start_conversation()
        for i in range(5):
            await sandbox.say(cid, f"m {i}")
        client = await js_client(client_script, sandbox.base_url, sandbox.secret, "websocket", cid, "2")
        try:
            await client.until(lambda: len(client.texts()) == 3, what="the replay")
            assert client.texts() == ["m 2", "m 3", "m 4"]  # watermark 2: the first two were seen already
            assert sandbox.stats.resumes == 1
            await sandbox.say(cid, "live")
            await client.until(lambda: client.texts()[-1:] == ["live"], what="a live activity after the replay")
        finally:
            await client.end()


async def test_the_official_client_polls_and_reports_expired_token_on_403(client_script: Path) -> None:
    async with DirectLineSandbox() as sandbox, httpx.AsyncClient() as http:
        generated = (
            await http.post(
                f"{sandbox.base_url}/tokens/generate", headers={"Authorization": f"Bearer {sandbox.secret}"}
            )
        ).json()
        client = await js_client(client_script, sandbox.base_url, "token:" + generated["token"], "polling")
        try:
            await client.until(lambda: "Online" in client.statuses, what="Online")
            await client.post("polled")
            await client.until(lambda: "Echo: polled" in client.texts(), what="the echo by polling")
            assert sandbox.stats.polls >= 1 and sandbox.stats.sockets_opened == 0
            assert {a["conversation"]["id"] for a in client.activities} == {generated["conversationId"]}
            sandbox.expire_tokens()
            await client.until(lambda: "ExpiredToken" in client.statuses, what="ExpiredToken")
            assert sandbox.stats.expired_rejections >= 1
        finally:
            await client.end()
