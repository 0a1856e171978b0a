"""Reply targets a queue message names (a Slack `response_url`, a Teams `serviceUrl`) are checked before
anything is sent: an unsafe one is dead-lettered at once, never retried, and no request leaves the process.

The end-to-end tests run the registered functions (`function_app.app`, or `register_routes` with the
example bot) in the local functions host over a real local queue file. Every non-loopback request the
function makes goes through a forward proxy (`HTTPS_PROXY`) that refuses and records it, so "nothing was
sent" is observed on the wire, and one allowed target per test shows that the proxy does see requests.
Teams tokens come from a local managed-identity endpoint (the App Service `IDENTITY_ENDPOINT` protocol),
so "the token was never requested" is observed too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import azure.functions as func
import httpx
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import function_app
from devstack.funchost import FunctionRun, LocalFunctionsHost, Settlement
from devstack.sandbox.slack import SlackSandbox
from devstack.sandbox.teams import TeamsSandbox
from functions.settings import DEFAULT_BOT_CONNECTOR_HOSTS, DEFAULT_RESPONSE_URL_HOSTS, FunctionSettings
from functions.slack_api import ResponseUrlNotAllowed, check_response_url
from functions.teams_api import ServiceUrlNotAllowed, check_service_url
from functions.triggers import register_routes
from handlers import bot as example_bot
from localqueue import LocalQueueBackend
from shared.envelope import Envelope, Kind, Platform, utcnow
from shared.urls import is_loopback
from tests.conftest_local import message
from tests.factories import teams_message

ROOT = Path(__file__).resolve().parent.parent

UNSAFE_RESPONSE_URLS = [
    "http://hooks.slack.com/commands/T01/1/abc",
    "https://evil.example/commands/T01/1/abc",
    "https://hooks.slack.com:8443/commands/T01/1/abc",
    "https://user:pw@hooks.slack.com/commands/T01/1/abc",
    "https://[::1",
    "https://hooks.slack.com.evil.example/commands/T01/1/abc",
    "https://evil.example\\@hooks.slack.com/commands/T01/1/abc",
    "https://hooks.slack.com:99999/commands/T01/1/abc",
    "https://:@hooks.slack.com/commands/T01/1/abc",  # an empty user info: found by the fuzz test below
    " http://hooks.slack.com/commands/T01/1/abc",
    "",
]
UNSAFE_SERVICE_URLS = [
    "https://smba.trafficmanager.net:8443/teams/",
    "https://[bad",
    "https://smba.trafficmanager.net:99999/",
    "http://smba.trafficmanager.net/teams/",
    "https://evil.example/teams/",
    "https://evil.example\\.botframework.com/",
    "https://evil.example%5c.botframework.com/",
    "https://user:pw@smba.trafficmanager.net/teams/",
    "https://:@smba.trafficmanager.net/teams/",  # an empty user info: found by the fuzz test below
]


# -- the checks themselves ------------------------------------------------------------------------------


@pytest.mark.parametrize("url", UNSAFE_RESPONSE_URLS)
def test_unsafe_response_urls_are_refused_with_the_reason(url: str) -> None:
    for loopback in (False, True):
        with pytest.raises(ResponseUrlNotAllowed) as refused:
            check_response_url(url, DEFAULT_RESPONSE_URL_HOSTS, allow_loopback=loopback)
        assert refused.value.reason == "UnsafeReplyTarget"
        assert "/commands/T01/1/abc" not in str(refused.value)  # a response_url's path is a credential


def test_response_urls_slack_sends_are_accepted_and_stripped() -> None:
    url = "https://hooks.slack.com/commands/T01/1/abc"
    assert check_response_url(url, DEFAULT_RESPONSE_URL_HOSTS) == url
    assert check_response_url(f" {url}\n", DEFAULT_RESPONSE_URL_HOSTS) == url  # what httpx can send
    assert check_response_url("https://hooks.slack.com:443/x", DEFAULT_RESPONSE_URL_HOSTS)


def test_loopback_response_urls_only_in_sandbox_mode() -> None:
    url = "http://127.0.0.1:3000/response/abc"
    with pytest.raises(ResponseUrlNotAllowed):
        check_response_url(url, DEFAULT_RESPONSE_URL_HOSTS)
    assert check_response_url(url, DEFAULT_RESPONSE_URL_HOSTS, allow_loopback=True) == url
    sandbox = FunctionSettings.from_env({"SLACK_API_URL": "http://127.0.0.1:3000/api/"})
    assert sandbox.sandbox and not FunctionSettings.from_env({}).sandbox


@pytest.mark.parametrize("url", UNSAFE_SERVICE_URLS)
def test_unsafe_service_urls_are_refused_with_the_reason(url: str) -> None:
    with pytest.raises(ServiceUrlNotAllowed) as refused:
        check_service_url(url, DEFAULT_BOT_CONNECTOR_HOSTS)
    assert refused.value.reason == "ServiceUrlNotAllowed"


def test_service_urls_teams_sends_are_accepted() -> None:
    assert check_service_url(" https://smba.trafficmanager.net/amer/ ", DEFAULT_BOT_CONNECTOR_HOSTS) == (
        "https://smba.trafficmanager.net/amer/"
    )
    assert check_service_url("http://127.0.0.1:9/botconnector", ("127.0.0.1",)) == "http://127.0.0.1:9/botconnector/"


# -- fuzz: whatever is accepted is what httpx will connect to, on an allowed host ----------------------

SCHEMES = st.sampled_from(["https", "HTTPS", "http", "ftp", "javascript", "", "https:/", "wss"])
USERINFO = st.sampled_from(["", "user@", "user:pw@", "hooks.slack.com@", ":@", "evil.example\\@", "%40@"])
HOSTS = st.sampled_from(
    [
        *DEFAULT_RESPONSE_URL_HOSTS,
        "smba.trafficmanager.net",
        "europe.webchat.botframework.com",
        "botframework.com",
        "evil.example",
        "hooks.slack.com.evil.example",
        "evil.example\\.botframework.com",
        "evil.example%2e.botframework.com",
        "ｈooks.slack.com",
        "hooks.slack.com。evil.example",
        "xn--bcher-kva.botframework.com",
        "127.0.0.1",
        "[::1]",
        "localhost",
        "[bad",
        "[::1",
        "HOOKS.SLACK.COM",
        "hooks.slack.com.",
    ]
) | st.text(max_size=12)
PORTS = st.sampled_from(["", ":443", ":0443", ":8443", ":99999", ":0", ":", ":-1", ":+443", ": 443", ":80"])
PATHS = st.sampled_from(["", "/", "/commands/T1/1/x", "\\@evil.example/", "#@evil.example/", "?@evil.example/"]) | (
    st.text(max_size=12)
)
URLS = (
    st.tuples(SCHEMES, USERINFO, HOSTS, PORTS, PATHS).map(lambda p: f"{p[0]}://{p[1]}{p[2]}{p[3]}{p[4]}")
    | st.text(max_size=40)
    | st.none()
    | st.integers()
    | st.binary(max_size=20)
)
SERVICE_HOSTS = (*DEFAULT_BOT_CONNECTOR_HOSTS, "127.0.0.1", "::1")


def _on_list(host: str, allowed: tuple[str, ...]) -> bool:
    return any(host == entry or (entry.startswith(".") and host.endswith(entry)) for entry in allowed)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(url=URLS, allow_loopback=st.booleans())
def test_fuzz_response_url_check(url: object, allow_loopback: bool) -> None:
    try:
        accepted = check_response_url(url, DEFAULT_RESPONSE_URL_HOSTS, allow_loopback=allow_loopback)
    except ResponseUrlNotAllowed:
        return
    sent = httpx.URL(accepted)  # the parser that sends the request
    assert not sent.userinfo
    if allow_loopback and is_loopback(sent.host):
        assert sent.scheme in ("http", "https")
    else:
        assert sent.scheme == "https" and sent.port in (None, 443)
        assert sent.host in DEFAULT_RESPONSE_URL_HOSTS


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(url=URLS)
def test_fuzz_service_url_check(url: object) -> None:
    try:
        accepted = check_service_url(url, SERVICE_HOSTS)
    except ServiceUrlNotAllowed:
        return
    sent = httpx.URL(accepted)
    assert not sent.userinfo and accepted.endswith("/")
    assert _on_list(sent.host.rstrip("."), SERVICE_HOSTS)
    if not is_loopback(sent.host):
        assert sent.scheme == "https" and sent.port in (None, 443)


# -- seams: a refusing forward proxy and a managed-identity token endpoint -------------------------------


class RefusingProxy:
    """A forward proxy on 127.0.0.1 that answers 403 to everything and records each request line."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> RefusingProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def targets(self) -> set[str]:
        """`CONNECT host:port` targets and plain request lines, without the HTTP version."""
        return {line.rsplit(" ", 1)[0] for line in self.requests}

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            if line:
                self.requests.append(line.decode("latin-1").strip())
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
def no_direct_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[RefusingProxy], None]]:
    """Route every non-loopback request of the clients created from now on through `proxy`."""
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)

    def use(proxy: RefusingProxy) -> None:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")

    yield use


class ManagedIdentityEndpoint:
    """App Service's managed identity endpoint (`IDENTITY_ENDPOINT` + `IDENTITY_HEADER`), counting requests."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.requests: list[str] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> ManagedIdentityEndpoint:
        app = web.Application()
        app.router.add_get("/msi/token", self._token)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/msi/token"
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _token(self, request: web.Request) -> web.Response:
        self.requests.append(request.query.get("resource", ""))
        if request.headers.get("X-IDENTITY-HEADER") != "identity-header":
            return web.json_response({"error": "bad header"}, status=400)
        expires = str(int(time.time()) + 3600)
        return web.json_response(
            {"access_token": self.token, "expires_on": expires, "resource": "https://api.botframework.com"}
        )


# -- the local functions host over a real queue file ----------------------------------------------------


@asynccontextmanager
async def hosted(tmp_path: Path, app: func.FunctionApp) -> AsyncIterator[tuple[LocalQueueBackend, Runner]]:
    backend = LocalQueueBackend(tmp_path / "queue.db")
    try:
        yield backend, Runner(app, backend)
    finally:
        await backend.close()


class Runner:
    def __init__(self, app: func.FunctionApp, backend: LocalQueueBackend) -> None:
        self.app = app
        self.backend = backend
        self.outcomes: list[FunctionRun] = []

    async def until(self, done: Callable[[list[FunctionRun]], bool], timeout: float = 8.0) -> dict[str, FunctionRun]:
        """Run the host until `done(outcomes)`; the first outcome of each message, by message id."""
        host = LocalFunctionsHost(
            self.app, self.backend, ROOT / "host.json", {}, on_outcome=self.outcomes.append, poll_interval=0.02
        )
        stopping = asyncio.Event()

        async def watch() -> None:
            deadline = time.monotonic() + timeout
            while not done(self.outcomes) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            stopping.set()

        await asyncio.wait_for(asyncio.gather(host.run(stopping), watch()), timeout + 10)
        assert done(self.outcomes), f"timed out; outcomes: {self.outcomes}"
        first: dict[str, FunctionRun] = {}
        for outcome in self.outcomes:
            first.setdefault(outcome.message_id, outcome)
        return first


def settled(ids: set[str]) -> Callable[[list[FunctionRun]], bool]:
    return lambda outcomes: ids <= {o.message_id for o in outcomes}


def slash_command(key: str, response_url: object) -> Envelope:
    payload = {
        "team_id": "T01",
        "channel_id": "C01",
        "user_id": "U01",
        "command": "/ticket",
        "text": "printer on fire",
        "api_app_id": "A01",
        "response_url": response_url,
        "trigger_id": "1.2.3",
    }
    return Envelope(
        dedupe_key=key,
        platform=Platform.SLACK,
        kind=Kind.SLASH_COMMANDS,
        event_type="/ticket",
        envelope_id=key,
        tenant="T01",
        conversation_key="T01:C01",
        received_at=utcnow(),
        payload=payload,
    )


def teams_activity(activity_id: str, service_url: str) -> Envelope:
    env = teams_message(activity_id)
    return env.model_copy(update={"payload": {**env.payload, "serviceUrl": service_url}})


async def enqueue(backend: LocalQueueBackend, envelope: Envelope, queue: str) -> str:
    session = envelope.conversation_key if queue.startswith("teams-activities") else None
    await backend.send(
        message(envelope.message_id, queue, session, envelope.to_body(), envelope.application_properties())
    )
    return envelope.message_id


async def dead_letters(backend: LocalQueueBackend, queue: str) -> dict[str, tuple[str | None, int]]:
    return {m.message_id: (m.dead_letter_reason, m.delivery_count) for m in await backend.dead_letters(queue)}


# -- Slack ----------------------------------------------------------------------------------------------


async def test_function_app_dead_letters_unsafe_response_urls_at_once_and_sends_nothing(
    tmp_path: Path, no_direct_network: Callable[[RefusingProxy], None]
) -> None:
    assert not function_app.settings.sandbox, "these tests need SLACK_API_URL unset (not the sandbox)"
    async with RefusingProxy() as proxy, hosted(tmp_path, function_app.app) as (backend, runner):
        no_direct_network(proxy)
        unsafe = [*UNSAFE_RESPONSE_URLS, f"http://127.0.0.1:{proxy.port}/response/loopback-outside-sandbox"]
        bad = {await enqueue(backend, slash_command(f"cmd-{n}", url), "slack-commands") for n, url in enumerate(unsafe)}
        control = await enqueue(
            backend, slash_command("cmd-ok", "https://hooks.slack.com/commands/T01/9/x"), "slack-commands"
        )
        first = await runner.until(settled(bad | {control}))

        for message_id in bad:
            assert first[message_id].outcome is Settlement.DEAD_LETTERED, first[message_id]
            assert first[message_id].dead_letter_reason == "UnsafeReplyTarget"
        dead = await dead_letters(backend, "slack-commands")
        assert {dead[m] for m in bad} == {("UnsafeReplyTarget", 1)}
        # the allowed response_url did go out (through the proxy, which refused it: a retry that backs off)
        assert first[control].outcome is Settlement.COMPLETED and first[control].retry is not None
        assert proxy.targets == {"CONNECT hooks.slack.com:443"}


async def test_in_sandbox_mode_a_loopback_response_url_is_answered(
    tmp_path: Path, no_direct_network: Callable[[RefusingProxy], None]
) -> None:
    async with SlackSandbox() as slack, RefusingProxy() as proxy:
        no_direct_network(proxy)
        injected = await slack.send_slash_command("/ticket", "printer on fire")
        settings_ = FunctionSettings.from_env({"SLACK_BOT_TOKEN": slack.bot_token, "SLACK_API_URL": slack.api_url})
        app = func.FunctionApp()
        clients = register_routes(app, example_bot, settings_)
        try:
            async with hosted(tmp_path, app) as (backend, runner):
                good = await enqueue(backend, slash_command("cmd-sandbox", injected.response_url), "slack-commands")
                evil = await enqueue(backend, slash_command("cmd-evil", "https://evil.example/x"), "slack-commands")
                plain = await enqueue(backend, slash_command("cmd-http", "http://hooks.slack.com/x"), "slack-commands")
                first = await runner.until(settled({good, evil, plain}))
        finally:
            await clients.aclose()
    assert first[good].outcome is Settlement.COMPLETED
    [answer] = [r for r in slack.replies if r.method == "response_url"]
    assert answer.url == injected.response_url and "printer on fire" in answer.body["text"]
    assert first[evil].dead_letter_reason == first[plain].dead_letter_reason == "UnsafeReplyTarget"
    assert proxy.requests == []


# -- Teams ----------------------------------------------------------------------------------------------


async def test_function_app_dead_letters_unsafe_service_urls_at_once(tmp_path: Path) -> None:
    # function_app.app has no Teams credentials here: the serviceUrl is refused before they are needed,
    # while an allowed serviceUrl gets as far as asking for them (and is redelivered).
    async with hosted(tmp_path, function_app.app) as (backend, runner):
        bad = {
            await enqueue(backend, teams_activity(f"act-{n}", url), "teams-activities")
            for n, url in enumerate(UNSAFE_SERVICE_URLS)
        }
        control = await enqueue(
            backend, teams_activity("act-ok", "https://smba.trafficmanager.net/teams/"), "teams-activities"
        )
        first = await runner.until(settled(bad | {control}))
        dead = await dead_letters(backend, "teams-activities")
    assert {dead[m] for m in bad} == {("ServiceUrlNotAllowed", 1)}
    assert first[control].outcome is Settlement.COMPLETED and first[control].retry is not None
    retry = first[control].retry
    assert retry is not None and "setting TEAMS_APP_ID" in retry.application_properties["relaybus_last_error"]


async def test_unsafe_service_urls_never_request_a_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_direct_network: Callable[[RefusingProxy], None]
) -> None:
    async with TeamsSandbox() as teams, ManagedIdentityEndpoint(teams.bot_token) as identity, RefusingProxy() as proxy:
        no_direct_network(proxy)
        monkeypatch.setenv("IDENTITY_ENDPOINT", identity.url)
        monkeypatch.setenv("IDENTITY_HEADER", "identity-header")
        settings_ = FunctionSettings.from_env(
            {
                "TEAMS_APP_ID": "00000000-0000-0000-0000-0000000000b1",
                "BOT_CONNECTOR_ALLOWED_HOSTS": "smba.trafficmanager.net,127.0.0.1",
            }
        )
        app = func.FunctionApp()
        clients = register_routes(app, example_bot, settings_)
        try:
            async with hosted(tmp_path, app) as (backend, runner):
                bad = {
                    await enqueue(backend, teams_activity(f"act-{n}", url), "teams-activities")
                    for n, url in enumerate(UNSAFE_SERVICE_URLS)
                }
                await runner.until(settled(bad))
                assert {v for k, v in (await dead_letters(backend, "teams-activities")).items() if k in bad} == {
                    ("ServiceUrlNotAllowed", 1)
                }
                assert identity.requests == [] and proxy.requests == [] and teams.replies == []

                good = await enqueue(backend, teams_activity("act-good", teams.service_url), "teams-activities")
                first = await runner.until(settled(bad | {good}))
        finally:
            await clients.aclose()
    assert first[good].outcome is Settlement.COMPLETED
    assert identity.requests == ["https://api.botframework.com"]  # the token, asked for once, by the good one
    [reply] = teams.replies
    assert reply.body is not None and reply.body["text"] == "You said: hello"
    assert proxy.requests == []
