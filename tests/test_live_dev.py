"""`make dev` with live updates: the banner prints the live page's URL and a sign-in link per tenant; signing in
with the sandbox tenant's link shows the sandbox conversation's activity, the other tenant's shows none. The
local token issuer and SignalR Service listen on loopback only."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from devstack.signalr_service import LiveHubClient, LocalSignalRService, connect_hub
from devstack.tokens import LocalTokenIssuer
from functions.live import USER_ID_HEADER

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(120)


def test_the_issuer_and_the_service_refuse_anything_but_loopback() -> None:
    for host in ("0.0.0.0", "10.1.2.3", "example.com"):
        with pytest.raises(ValueError, match="loopback"):
            LocalTokenIssuer(host=host)
        with pytest.raises(ValueError, match="loopback"):
            LocalSignalRService(host=host)


async def test_a_sign_in_link_redirects_only_to_a_loopback_page() -> None:
    async with LocalTokenIssuer() as issuer, aiohttp.ClientSession() as http:
        for redirect in ("https://attacker.example/steal", "http://user:pw@127.0.0.1/x", "javascript:alert(1)"):
            async with http.get(issuer.sign_in_url(redirect, "contoso"), allow_redirects=False) as response:
                assert response.status == 400, redirect
        async with http.get(issuer.sign_in_url("http://127.0.0.1:1/p", "nowhere"), allow_redirects=False) as response:
            assert response.status == 400  # not a tenant it issues for


def _token_of(location: str) -> str:
    fragment = urlsplit(location).fragment
    return parse_qs(fragment)["access_token"][0]


def _user_id(token: str) -> str:
    part = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return f"{claims['tid']}:{claims['oid']}"


async def _banner(stream: asyncio.StreamReader) -> list[str]:
    lines: list[str] = []
    async with asyncio.timeout(60):
        while True:
            raw = await stream.readline()
            if not raw:
                raise AssertionError("dev exited before its banner:\n" + "\n".join(lines))
            lines.append(raw.decode().rstrip())
            if lines[-1].strip().startswith("logs:"):
                return lines


async def _signed_in(http: aiohttp.ClientSession, link: str, page: str) -> LiveHubClient:
    async with http.get(link, allow_redirects=False) as response:
        assert response.status == 302
        location = response.headers["Location"]
    assert location.startswith(page + "#access_token=")
    token = _token_of(location)
    return await connect_hub(http, page, token=token, headers={USER_ID_HEADER: _user_id(token)})


async def test_make_dev_serves_the_live_page_with_sign_in_links_for_two_tenants(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "TEAMS_", "RELAYBUS_", "Azure"))}
    env["PYTHONPATH"] = str(ROOT)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "devstack",
        "--env-file",
        str(tmp_path / "none.env"),
        "dev",
        "--quiet",
        "--messages",
        "0",
        "--queue-path",
        str(tmp_path / "dev.db"),
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        lines = await _banner(process.stdout)
        text = "\n".join(lines)
        page_match = re.search(r"live page: (http://127\.0\.0\.1:\d+/api/live) ", text)
        assert page_match, text
        page = page_match[1]
        links = dict(re.findall(r"sign in as \w+ of ([\w-]+) \([^)]*\): (http://127\.0\.0\.1:\d+/sign-in\?\S+)", text))
        assert set(links) == {"sandbox-tenant", "other-tenant"}, text
        teams_match = re.search(r"curl -X POST (http://127\.0\.0\.1:\d+)/_sandbox/messages", text)
        assert teams_match, text
        async with aiohttp.ClientSession() as http:
            async with http.get(page) as response:
                assert response.status == 200 and "relaybus live" in await response.text()
            async with http.get(page + "/assets/signalr.min.js") as response:
                assert response.status == 200  # the @microsoft/signalr bundle dev installed
            sandbox_user = await _signed_in(http, links["sandbox-tenant"], page)
            other_user = await _signed_in(http, links["other-tenant"], page)
            async with http.post(f"{teams_match[1]}/_sandbox/messages", json={"text": "live from dev"}) as response:
                assert response.status < 300
            events: list[dict[str, Any]] = []
            while len(events) < 3:
                invocation = await sandbox_user.invocation(within=15)
                events.append(invocation.arguments[0])
            assert [e["event"] for e in events] == ["received", "reply", "outcome"]
            assert events[0]["text"] == "live from dev" and events[0]["platform"] == "teams"
            with pytest.raises(TimeoutError):
                await other_user.invocation(within=0.5)
            await sandbox_user.close()
            await other_user.close()
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()
