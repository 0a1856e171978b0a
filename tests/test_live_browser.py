"""The live page in a real browser (Debian's headless Chromium, over the DevTools protocol): a tenant-A user signs
in with the local token issuer, sees tenant A's bot activity within a second, and a tenant-B page open at the
same time sees none of it. Screenshots are kept in .relaybus/artifacts/ (live-tenant-a.png, live-tenant-b.png).

Skipped, with the reason shown, where chromium is missing and cannot be installed (no apt-get, not root), or
where node/npm cannot install `@microsoft/signalr` (the page's client library)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from devstack import live as dev_live
from devstack.azurite import NodeMissing
from devstack.sandbox.teams import TeamsSandbox
from functions import Bot, Context
from tests.browser import ARTIFACTS, Chromium
from tests.live_helpers import TENANT_A, TENANT_B, live_stack
from tests.test_live_push import envelope_of, run_function, teams_env

pytestmark = pytest.mark.timeout(180)

EVENTS = "document.querySelectorAll('#events li').length"
STATE = "document.body.dataset.state"


def bundle() -> Path:
    try:
        return dev_live.install()
    except NodeMissing as exc:
        pytest.skip(f"node/npm not found, the page's @microsoft/signalr bundle cannot be installed: {exc}")


async def test_a_tenant_sees_its_bots_activity_live_and_another_tenant_sees_none(tmp_path: Path) -> None:
    client_js = bundle()
    bot = Bot(remember_conversations=False)

    @bot.teams.message
    async def echo(ctx: Context) -> None:
        await ctx.reply(f"You said: {ctx.text()}")  # type: ignore[attr-defined]

    async with (
        TeamsSandbox() as sandbox,
        live_stack(
            tmp_path, bot=bot, routes=True, RELAYBUS_LIVE_CLIENT_JS=str(client_js), **teams_env(sandbox)
        ) as stack,
        Chromium.launch(tmp_path / "profile") as browser,
    ):
        page_url = stack.host.url_of("live")
        page_a = await browser.new_page(stack.issuer.sign_in_url(page_url, TENANT_A, "alice"))
        page_b = await browser.new_page(stack.issuer.sign_in_url(page_url, TENANT_B, "bob"))
        for page in (page_a, page_b):
            state = await page.wait_for(f"{STATE} === 'connected' || {STATE} === 'refused' ? {STATE} : ''", within=30)
            assert state == "connected", await page.evaluate("document.getElementById('status').textContent")
            # the token left the URL (it is in sessionStorage only)
            assert "access_token" not in await page.evaluate("window.location.href")
        assert "tenant contoso" in await page_a.evaluate("document.getElementById('who').textContent")
        await stack.service.wait_connections(2)

        started = time.monotonic()
        assert await run_function(stack, envelope_of(TENANT_A, sandbox, "where is my order 1234?")) is None
        await page_a.wait_for(f"{EVENTS} >= 3", within=1.0)  # received, reply, outcome: within a second
        seen_within = time.monotonic() - started
        kinds = await page_a.evaluate("[...document.querySelectorAll('#events li')].map(li => li.dataset.event)")
        assert kinds == ["outcome", "reply", "received"]  # newest first
        text = await page_a.evaluate("document.getElementById('events').innerText")
        assert "where is my order 1234?" in text and "You said: where is my order 1234?" in text
        await page_a.screenshot(ARTIFACTS / "live-tenant-a.png")

        # tenant B saw nothing of it, even some time later; its own bot activity does reach it
        await page_b.evaluate("new Promise(r => setTimeout(r, 500))")
        assert await page_b.evaluate(EVENTS) == 0
        await page_b.screenshot(ARTIFACTS / "live-tenant-b.png")
        assert await run_function(stack, envelope_of(TENANT_B, sandbox, "hello from B", "b1")) is None
        await page_b.wait_for(f"{EVENTS} >= 3", within=1.0)
        assert await page_a.evaluate(EVENTS) == 3
        assert "hello from B" not in await page_a.evaluate("document.body.innerText")
        assert (ARTIFACTS / "live-tenant-a.png").stat().st_size > 1000
        print(f"tenant A's activity on its page within {seen_within * 1000:.0f} ms")


async def test_a_bad_token_in_the_browser_is_refused_with_its_reason(tmp_path: Path) -> None:
    client_js = bundle()
    async with (
        live_stack(tmp_path, RELAYBUS_LIVE_CLIENT_JS=str(client_js), RELAYBUS_LIVE_TENANTS=TENANT_A) as stack,
        Chromium.launch(tmp_path / "profile") as browser,
    ):
        page = await browser.new_page(stack.issuer.sign_in_url(stack.host.url_of("live"), TENANT_B, "bob"))
        await page.wait_for(f"{STATE} === 'refused'", within=30)
        assert "tenant_not_allowed" in await page.evaluate("document.getElementById('status').textContent")
        assert stack.service.stats["negotiates"] == 0
