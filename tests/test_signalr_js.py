"""The official `@microsoft/signalr` JavaScript client against the sandbox hub: proof it speaks real SignalR.

The client (tests/js, pinned by package-lock.json) is installed with `npm ci` on first use; the test is
skipped, with the reason shown, only where node or npm is missing.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from devstack.sandbox.teams import TeamsSandbox

JS_DIR = Path(__file__).parent / "js"


def js_client() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node/npm not found: the @microsoft/signalr reference client cannot run here")
    if not (JS_DIR / "node_modules" / "@microsoft" / "signalr").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS_DIR, check=True, timeout=300, capture_output=True)
    return JS_DIR / "client.mjs"


async def _line(stream: asyncio.StreamReader) -> dict[str, object]:
    raw = await asyncio.wait_for(stream.readline(), 20)
    if not raw:
        raise AssertionError("the JS client exited early")
    data = json.loads(raw)
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize("url_mode", ["negotiate", "redirect"])
async def test_official_js_client_answers_activity_invocations(url_mode: str) -> None:
    script = js_client()
    async with TeamsSandbox(url_mode=url_mode) as sandbox, httpx.AsyncClient() as http:  # type: ignore[arg-type]
        grant = (
            await http.post(
                f"{sandbox.base_url}/amer/v3/websockets/connect",
                headers={"Authorization": f"Bearer {sandbox.bot_token}"},
            )
        ).json()
        process = await asyncio.create_subprocess_exec(
            "node",
            str(script),
            grant["url"],
            grant["accessToken"],
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert process.stdin is not None and process.stdout is not None
        try:
            started = await _line(process.stdout)
            assert started["event"] == "started"
            await sandbox.wait_sessions(1)
            ids = [await sandbox.send_activity(sandbox.new_activity(f"js {i}")) for i in range(20)]
            await sandbox.wait_acked(20, within=10)
            assert set(sandbox.acked) == set(ids)
            result = sandbox.acked[ids[0]]
            assert result["status"] == 200 and result["protocolVersion"] == 1 and result["botKey"] == sandbox.bot_key
            assert sandbox.handshake_versions == [1]
            process.stdin.close()
            stats = await _line(process.stdout)
            assert stats["event"] == "stats" and stats["received"] == 20
            assert isinstance(stats["ready"], str)  # SocketReady reached the client's handler
        finally:
            if process.returncode is None:
                process.kill()
            await process.wait()
        assert sandbox.stats["redirects"] == (1 if url_mode == "redirect" else 0)
