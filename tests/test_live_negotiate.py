"""The negotiate function (`functions.live`), served by the local functions host against the local SignalR
Service and validated against the local token issuer's real JWKS: what `func start` indexes, who gets a
connection, and who is refused (401 with a reason, never a connection, never a group)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest

from devstack.signalr_service import NegotiateRefused
from functions import Bot, FunctionSettings
from functions.live import CONNECTION_SETTING, USER_ID_HEADER, register_live
from functions.triggers import indexed_functions
from tests.live_helpers import TENANT_A, TENANT_B, LiveStack, live_stack


def indexed(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    app = func.FunctionApp()
    assert register_live(app, Bot(remember_conversations=False), FunctionSettings.from_env(env))
    return {str(f.get_function_name()): json.loads(f.get_function_json()) for f in indexed_functions(app)}


ENV = {
    "AzureSignalRConnectionString__serviceUri": "https://relaybus-live.service.signalr.net",
    "RELAYBUS_LIVE_AUDIENCE": "api://relaybus",
    "RELAYBUS_LIVE_HUB": "relaybus",
}


def test_the_bindings_func_start_indexes() -> None:
    docs = indexed(ENV)
    assert set(docs) == {"live_negotiate", "live_page", "live_assets"}
    negotiate = {b["type"]: b for b in docs["live_negotiate"]["bindings"]}
    assert set(negotiate) == {"httpTrigger", "http", "signalRConnectionInfo", "signalR"}
    trigger = negotiate["httpTrigger"]
    assert trigger["direction"] == "IN" and trigger["route"] == "live/negotiate"
    assert trigger["methods"] == ["POST"] and trigger["authLevel"] == "ANONYMOUS"
    info = negotiate["signalRConnectionInfo"]
    assert info == {
        "type": "signalRConnectionInfo",
        "direction": "IN",
        "name": "connectionInfo",
        "hubName": "relaybus",
        "connectionStringSetting": CONNECTION_SETTING,
        "userId": "{headers.x-ms-signalr-userid}",
    }
    out = negotiate["signalR"]
    assert out == {
        "type": "signalR",
        "direction": "OUT",
        "name": "signalRActions",
        "hubName": "relaybus",
        "connectionStringSetting": CONNECTION_SETTING,
    }
    # identity-based connection: <connectionStringSetting>__serviceUri is the setting the extension reads
    assert f"{out['connectionStringSetting']}__serviceUri" in ENV
    for name, route in (("live_page", "live"), ("live_assets", "live/assets/{name}")):
        [trigger] = [b for b in docs[name]["bindings"] if b["type"] == "httpTrigger"]
        assert trigger["route"] == route and trigger["methods"] == ["GET"]
        assert {b["type"] for b in docs[name]["bindings"]} == {"httpTrigger", "http"}  # no SignalR binding


def test_the_hub_is_a_setting_and_live_is_off_without_a_service() -> None:
    docs = indexed({**ENV, "RELAYBUS_LIVE_HUB": "support"})
    assert {b.get("hubName") for b in docs["live_negotiate"]["bindings"]} >= {"support"}
    app = func.FunctionApp()
    assert not register_live(app, Bot(), FunctionSettings.from_env({}))
    assert indexed_functions(app) == []


async def test_a_signed_in_user_gets_a_connection_and_joins_their_tenant_group(tmp_path: Path) -> None:
    async with live_stack(tmp_path) as stack:
        status, body = await stack.negotiate(stack.issuer.mint(TENANT_A, "alice"), stack.headers(TENANT_A))
        assert status == 200, body
        assert body["url"] == f"{stack.service.endpoint}/client/?hub=relaybus"
        assert isinstance(body["accessToken"], str) and body["accessToken"].count(".") == 2
        alice = stack.issuer.user_id(TENANT_A, "alice")
        assert stack.service.users_in(f"tenant:{TENANT_A}") == {alice}
        assert stack.service.users_in(f"tenant:{TENANT_B}") == set()
        connection = await stack.connect(TENANT_A, "alice")
        await stack.service.wait_connections(1)
        assert [c.user for c in stack.service.ready_connections()] == [alice]
        assert connection is not None


def _refusals(stack: LiveStack) -> list[tuple[str, str | None, str]]:
    issuer = stack.issuer
    return [
        ("no token", None, "no_token"),
        ("another key", issuer.mint(TENANT_A, other_key=True), "bad_signature"),
        ("wrong audience", issuer.mint(TENANT_A, audience="api://another-app"), "wrong_audience"),
        ("expired", issuer.mint(TENANT_A, issued_at=1_700_000_000, lifetime=3600), "expired"),
        ("not yet valid", issuer.mint(TENANT_A, not_before=2_000_000_000 + 10**9), "not_yet_valid"),
        ("tenant not allowed", issuer.mint("northwind"), "tenant_not_allowed"),
        ("garbage", "not.a.token", "malformed_token"),
    ]


async def test_refusals_are_401_with_a_reason_and_never_a_connection(tmp_path: Path) -> None:
    async with live_stack(tmp_path, RELAYBUS_LIVE_TENANTS=f"{TENANT_A},{TENANT_B}") as stack:
        for what, token, reason in _refusals(stack):
            tenant = "northwind" if reason == "tenant_not_allowed" else TENANT_A
            status, body = await stack.negotiate(token, stack.headers(tenant))
            assert (status, body.get("error")) == (401, reason), what
            assert "url" not in body and "accessToken" not in body, what
        # the same through a SignalR client: the negotiate redirect never comes
        for tenant, mint, reason in (
            (TENANT_A, {"other_key": True}, "bad_signature"),
            (TENANT_A, {"audience": "api://another-app"}, "wrong_audience"),
            ("northwind", {}, "tenant_not_allowed"),
        ):
            with pytest.raises(NegotiateRefused) as refused:
                await stack.connect(tenant, **mint)
            assert (refused.value.status, refused.value.reason) == (401, reason)
        assert stack.service.stats["group_adds"] == 0
        assert stack.service.user_groups == {}
        assert stack.service.stats["negotiates"] == 0  # nobody even reached the service


async def test_no_parameter_joins_another_tenants_group(tmp_path: Path) -> None:
    async with live_stack(tmp_path) as stack:
        mallory = stack.issuer.mint(TENANT_A, "mallory")
        victim = stack.issuer.user_id(TENANT_B, "bob")
        attempts: list[tuple[dict[str, str], dict[str, str]]] = [
            ({USER_ID_HEADER: victim}, {}),  # claim another tenant's user id
            ({USER_ID_HEADER: f"{TENANT_B}:{stack.issuer.object_id(TENANT_A, 'mallory')}"}, {}),
            ({USER_ID_HEADER: stack.issuer.user_id(TENANT_A, "mallory") + "x"}, {}),
            ({}, {}),  # no user id at all: the binding fails before the function runs
        ]
        for headers, params in attempts:
            status, body = await stack.negotiate(mallory, headers, params)
            if headers:
                assert (status, body["error"]) == (401, "user_mismatch"), headers
            else:  # the binding expression names a header the request lacks: 500 before the function runs
                assert status == 500 and "accessToken" not in str(body)
        assert stack.host.http_stats["binding_errors"] == 1
        # with her own user id, every parameter that could name a group or tenant is ignored
        own = stack.headers(TENANT_A, "mallory")
        sneaky = {"group": f"tenant:{TENANT_B}", "groupName": f"tenant:{TENANT_B}", "tenant": TENANT_B, "tid": TENANT_B}
        status, body = await stack.negotiate(
            mallory, {**own, "x-ms-client-principal-id": victim, "x-relaybus-tenant": TENANT_B}, sneaky
        )
        assert status == 200, body
        assert stack.service.users_in(f"tenant:{TENANT_B}") == set()
        assert stack.service.users_in(f"tenant:{TENANT_A}") == {stack.issuer.user_id(TENANT_A, "mallory")}
        # nor can a token of tenant A claim tenant B's issuer, nor a forged tid with A's issuer
        forged = stack.issuer.mint(TENANT_B, "mallory", iss=stack.issuer.issuer(TENANT_A))
        status, body = await stack.negotiate(forged, stack.headers(TENANT_B, "mallory"))
        assert (status, body["error"]) == (401, "wrong_issuer")
        # a connection of tenant A gets nothing pushed to tenant B's group
        connection = await stack.connect(TENANT_A, "mallory")
        await stack.service.wait_connections(1)
        from functions.live import LiveService, SignalRAction

        service = LiveService(stack.service.endpoint, "relaybus", access_key=stack.service.access_key)
        try:
            await service.perform(SignalRAction("activity", ({"n": 1},), group_name=f"tenant:{TENANT_B}"))
            await service.perform(SignalRAction("activity", ({"n": 2},), group_name=f"tenant:{TENANT_A}"))
        finally:
            await service.aclose()
        invocation = await connection.invocation()
        assert invocation.arguments == [{"n": 2}]


async def test_the_page_and_its_assets_are_served(tmp_path: Path) -> None:
    async with live_stack(tmp_path) as stack:
        async with stack.http.get(stack.host.url_of("live")) as response:
            assert response.status == 200
            assert response.content_type == "text/html"
            policy = response.headers["Content-Security-Policy"]
            assert "script-src 'self'" in policy and stack.service.endpoint in policy
            assert "/api/live/assets/signalr.min.js" in await response.text()
        async with stack.http.get(stack.host.url_of("live/assets/live.js")) as response:
            assert response.status == 200 and "negotiate" in await response.text()
        for name in ("../auth.py", "live.py", "..%2Fauth.py"):
            async with stack.http.get(stack.host.url_of(f"live/assets/{name}")) as response:
                assert response.status == 404, name


async def test_a_group_add_that_fails_fails_the_negotiate(tmp_path: Path) -> None:
    """The signalR output binding runs after the function: if the service refuses the group add, the invocation
    fails (500) and the connection info is not handed out, so nobody connects outside their tenant group."""
    async with live_stack(tmp_path) as stack:
        stack.service.fail(503)
        status, body = await stack.negotiate(stack.issuer.mint(TENANT_A), stack.headers(TENANT_A))
        assert status == 500 and "accessToken" not in str(body)
        assert stack.host.http_stats["output_binding_errors"] == 1
        status, body = await stack.negotiate(stack.issuer.mint(TENANT_A), stack.headers(TENANT_A))
        assert status == 200 and body["accessToken"]


def test_the_local_host_refuses_an_identity_only_signalr_connection(tmp_path: Path) -> None:
    """The local functions host signs with an access key: given only `…__serviceUri` (Azure's identity form) it
    says which setting to set, at construction, rather than serving a negotiate that cannot work."""
    from devstack.funchost import LocalFunctionsHost
    from shared.errors import ConfigurationError

    app = func.FunctionApp()
    register_live(app, Bot(remember_conversations=False), FunctionSettings.from_env(ENV))
    with pytest.raises(ConfigurationError) as refused:
        LocalFunctionsHost(app, tmp_path / "q.db", None, ENV)
    assert CONNECTION_SETTING in str(refused.value) and "__serviceUri" in str(refused.value)
