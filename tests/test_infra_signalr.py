"""Structural checks of the SignalR Service in infra/ (offline, tree-sitter-bicep, as tests/test_infra_bicep.py):
serverless mode, access keys off, the function app's identity with SignalR Service Owner on this resource only,
the identity-based settings the SignalR extension and `functions.live` read, the live page's URL as an output."""

from __future__ import annotations

import json

import azure.functions as func

from functions import Bot, FunctionSettings
from functions.live import CONNECTION_SETTING, LiveConfig, register_live
from functions.triggers import indexed_functions
from tests.bicep_tree import Expr
from tests.test_infra_bicep import ROLE_IDS, _app_settings, _expr, bicep


def test_the_service_is_serverless_with_access_keys_disabled() -> None:
    (service,) = bicep("signalr.bicep").resources_of_type("Microsoft.SignalRService/signalR")
    properties = service.body["properties"]
    assert service.body["kind"] == "SignalR"
    features = {f["flag"]: f["value"] for f in properties["features"]}
    assert features["ServiceMode"] == "Serverless"
    assert properties["disableLocalAuth"] is True  # no access key can sign anything: Entra ID only
    assert properties["disableAadAuth"] is False
    assert properties["tls"] == {"clientCertEnabled": False}
    # TLS: the endpoint the function app is given is https (the service terminates TLS 1.2+ only)
    assert _expr(bicep("signalr.bicep").outputs["serviceUri"].body) == "'https://${signalr.properties.hostName}'"
    assert _expr(service.body["sku"]["name"]) == "sku"


def test_the_function_identity_is_signalr_service_owner_on_this_service_only() -> None:
    file = bicep("signalr.bicep")
    (assignment,) = file.resources_of_type("Microsoft.Authorization/roleAssignments")
    assert _expr(assignment.body["scope"]) == "signalr"  # the one resource, not the group or subscription
    roles = {name: decl.body for name, decl in file.variables.items() if name.endswith("RoleId")}
    assert set(roles.values()) == {ROLE_IDS["signalr-service-owner"]}
    role = _expr(assignment.body["properties"]["roleDefinitionId"])
    assert "signalrServiceOwnerRoleId" in role
    assert _expr(assignment.body["properties"]["principalId"]) == "functionPrincipalId"
    main = bicep("main.bicep")
    module = main.modules["signalr"]
    assert module.condition is not None and "enableLive" in module.condition
    assert _expr(module.body["params"]["functionPrincipalId"]) == "functionIdentity.properties.principalId"
    # nothing else in the templates hands out a SignalR role (the worker never touches the service)
    for name in ("main.bicep", "functionapp.bicep", "worker.bicep", "servicebus.bicep"):
        text = bicep(name).path.read_text().lower()
        assert ROLE_IDS["signalr-service-owner"] not in text, name


def test_the_function_app_gets_the_identity_based_connection_and_never_a_key() -> None:
    fa = bicep("functionapp.bicep")
    settings = _app_settings(fa)
    assert CONNECTION_SETTING not in settings  # a connection string would carry an access key
    assert _expr(settings[f"{CONNECTION_SETTING}__serviceUri"]) == "signalrServiceUri"
    assert settings[f"{CONNECTION_SETTING}__credential"] == "managedidentity"
    assert _expr(settings[f"{CONNECTION_SETTING}__clientId"]) == "identityClientId"
    assert _expr(settings["RELAYBUS_LIVE_AUDIENCE"]) == "liveAudience"
    assert _expr(settings["RELAYBUS_LIVE_TENANTS"]) == "liveTenants"
    live = fa.variables["liveSettings"]
    assert isinstance(live.body, Expr) and live.body.text.startswith("enableLive")
    main = bicep("main.bicep")
    params = main.modules["functionApp"].body["params"]
    assert _expr(params["signalrServiceUri"]) == "enableLive ? signalr!.outputs.serviceUri : ''"
    assert _expr(params["enableLive"]) == "enableLive"
    assert main.params["enableLive"].default is False


def test_those_settings_are_what_the_function_app_accepts() -> None:
    """The settings the Bicep writes, given to the function app: live updates on, with the identity, and the
    negotiate function's bindings naming that connection (the extension reads <setting>__serviceUri)."""
    settings = _app_settings(bicep("functionapp.bicep"))
    env = {
        f"{CONNECTION_SETTING}__serviceUri": "https://sigr-relaybus-abc.service.signalr.net",
        f"{CONNECTION_SETTING}__credential": str(settings[f"{CONNECTION_SETTING}__credential"]),
        f"{CONNECTION_SETTING}__clientId": "00000000-0000-0000-0000-000000000001",
        "RELAYBUS_LIVE_HUB": str(settings["RELAYBUS_LIVE_HUB"]),
        "RELAYBUS_LIVE_AUDIENCE": "api://relaybus",
        "RELAYBUS_LIVE_TENANTS": "contoso",
    }
    config = LiveConfig.from_settings(FunctionSettings.from_env(env))
    assert config is not None and config.identity and config.access_key is None
    assert config.client_id == env[f"{CONNECTION_SETTING}__clientId"]
    app = func.FunctionApp()
    assert register_live(app, Bot(remember_conversations=False), FunctionSettings.from_env(env))
    [negotiate] = [f for f in indexed_functions(app) if f.get_function_name() == "live_negotiate"]
    for binding in json.loads(negotiate.get_function_json())["bindings"]:
        if binding["type"] in ("signalR", "signalRConnectionInfo"):
            assert f"{binding['connectionStringSetting']}__serviceUri" in settings
            assert binding["hubName"] == settings["RELAYBUS_LIVE_HUB"]


def test_the_live_page_url_is_an_output() -> None:
    outputs = bicep("main.bicep").outputs
    assert _expr(outputs["livePageUrl"].body) == (
        "enableLive ? 'https://${functionApp.outputs.defaultHostName}/api/live' : ''"
    )
    assert "signalrServiceUri" in outputs
