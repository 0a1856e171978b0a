"""Structural checks of infra/*.bicep, offline: tree-sitter-bicep parses, the tests read the trees.

What a Bicep build would catch (syntax, undeclared or unused parameters, module parameters) and what
it would not (the queue list against the route table, least-privilege role assignments, app settings
against the settings models, secrets only as Key Vault references).

Rule for "a setting the code needs in Azure" (`required_in_azure`): a model field without a default;
a credential (`SecretStr`); the bot's app and tenant ids (`*_APP_ID`, `*_TENANT_ID`); every route's
queue setting; the identity-based Service Bus settings. Minus `NOT_IN_AZURE`: settings that must not be
set there (a connection string the identity replaces, sandbox-only or alternative credentials), which
the tests also check are absent.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, SecretStr

from functions.directline import DirectLineBridgeSettings
from functions.settings import FunctionSettings
from shared.apps import SLACK_APPS, TEAMS_BOTS
from shared.routes import REPLIES, ROUTES
from shared.teams_auth import TeamsCredentials
from tests.bicep_tree import BicepFile, Declaration, Expr, body_of, parse, to_python, walk
from worker.directline.settings import DirectLineSettings
from worker.settings import ServiceBusSettings, WorkerSettings
from worker.slack.settings import SlackSettings
from worker.teams.settings import TeamsSettings

INFRA = Path(__file__).resolve().parent.parent / "infra"
BICEP_FILES = sorted(INFRA.rglob("*.bicep"))

ROLE_IDS = {
    "servicebus-data-sender": "69a216fc-b8fb-44d8-bc22-1f3c2cd27a39",
    "servicebus-data-receiver": "4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0",
    "servicebus-data-owner": "090c5cfd-751d-490a-894a-3ce6f1109419",
    "key-vault-secrets-user": "4633458b-17de-408a-b874-0445c86b69e6",
    "acr-pull": "7f951dda-4ed3-4680-a7ca-43fe172d538d",
    "storage-blob-data-owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "storage-table-data-contributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "monitoring-metrics-publisher": "3913510d-42f4-4e42-8a64-420c390055eb",
    "signalr-service-owner": "7e4f1700-ea5a-4f59-8f37-079cfe29dce3",
}
# The only roles each file may assign; files not listed assign none.
ALLOWED_ROLES = {
    "servicebus.bicep": {"servicebus-data-sender", "servicebus-data-receiver", "servicebus-data-owner"},
    "secret.bicep": {"key-vault-secrets-user"},
    "registry.bicep": {"acr-pull"},
    "functionapp.bicep": {"storage-blob-data-owner", "storage-table-data-contributor"},
    "monitoring.bicep": {"monitoring-metrics-publisher"},
    "signalr.bicep": {"signalr-service-owner"},  # negotiate (access key) and sends: tests/test_infra_signalr.py
}
GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
SECRET_WORDS = ("TOKEN", "PASSWORD", "SECRET")

# Settings the platforms read (not relaybus' models).
FUNCTION_PLATFORM_SETTINGS = {
    "AzureWebJobsStorage__accountName",
    "AzureWebJobsStorage__credential",
    "AzureWebJobsStorage__clientId",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
    "ServiceBusConnection__fullyQualifiedNamespace",
    "ServiceBusConnection__credential",
    "ServiceBusConnection__clientId",
}
WORKER_PLATFORM_SETTINGS = {"AZURE_CLIENT_ID", "APPLICATIONINSIGHTS_CONNECTION_STRING"}
APP_LISTS = {SLACK_APPS, TEAMS_BOTS}
"""Several apps in one deployment (`shared.apps`): read by both apps' loaders before their models."""
# Settings that must not be set in Azure: a connection string the managed identity replaces, a
# sandbox-only credential, and an alternative credential (a certificate file the image does not hold).
NOT_IN_AZURE = {
    "ServiceBusConnection",
    "TEAMS_STATIC_TOKEN",
    "TEAMS_CERTIFICATE_PATH",
    "RELAYBUS_STATE_CONNECTION",  # the state table is reached with the identity (RELAYBUS_STATE_TABLE_ENDPOINT)
    "RELAYBUS_STATE_PATH",  # the embedded SQLite store: one machine, never a function app in Azure
    "AzureSignalRConnectionString",  # the SignalR Service is reached with the identity (…__serviceUri)
    "DIRECTLINE_TABLE_CONNECTION",  # the Direct Line directory table is reached with the identity (…_ENDPOINT)
}


@cache
def bicep(name: str) -> BicepFile:
    path = INFRA / name if (INFRA / name).is_file() else INFRA / "modules" / name
    return parse(path)


def _expr(value: Any) -> str:
    assert isinstance(value, Expr), f"expected an expression, got {value!r}"
    return value.text


# --- every file -------------------------------------------------------------------------------------


def test_the_expected_files_exist() -> None:
    names = {p.name for p in BICEP_FILES}
    assert {"main.bicep", "servicebus.bicep", "functionapp.bicep", "worker.bicep", "keyvault.bicep"} <= names


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: p.name)
def test_parses_without_errors(path: Path) -> None:
    assert parse(path).errors() == []


def test_the_parser_does_report_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.bicep"
    broken.write_text("param a string\nresource x 'Microsoft.Foo/bar@2024-01-01' = {\n  name: a\n")
    assert parse(broken).errors()


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: p.name)
def test_every_parameter_is_declared_and_used(path: Path) -> None:
    file = parse(path)
    declared = set(file.params) | set(file.variables) | set(file.resources) | set(file.modules)
    references = file.references()
    assert references - declared - file.local_names() == set(), "undeclared identifiers"
    assert set(file.params) - references == set(), "declared but unused parameters"
    assert set(file.variables) - references == set(), "declared but unused variables"


def test_the_unused_and_undeclared_check_works(tmp_path: Path) -> None:
    path = tmp_path / "t.bicep"
    path.write_text("param used string\nparam unused int\nvar v = [for (x, i) in list: '${used}${x}${i}${missing}']\n")
    file = parse(path)
    assert file.references() - set(file.params) - set(file.variables) - file.local_names() == {"list", "missing"}
    assert set(file.params) - file.references() == {"unused"}


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: p.name)
def test_every_parameter_has_a_description(path: Path) -> None:
    for param in parse(path).params.values():
        assert "description" in param.decorators, f"{path.name}: param {param.name}"


def test_module_calls_pass_exactly_the_declared_parameters() -> None:
    main = bicep("main.bicep")
    assert main.modules
    for module in main.modules.values():
        assert module.type_string is not None
        target = parse(INFRA / module.type_string)
        passed = set(module.body["params"])
        required = {name for name, p in target.params.items() if not p.has_default}
        assert passed <= set(target.params), f"{module.name}: unknown {passed - set(target.params)}"
        assert required <= passed, f"{module.name}: missing {required - passed}"


def test_parameters_file_names_only_declared_non_secret_parameters() -> None:
    document = json.loads((INFRA / "main.parameters.json").read_text())
    params = bicep("main.bicep").params
    assert set(document["parameters"]) <= set(params)
    assert not [name for name in document["parameters"] if params[name].secure], "secrets go on the command line"
    for name, entry in document["parameters"].items():
        if params[name].decorators.get("allowed"):
            assert entry["value"] in params[name].decorators["allowed"][0], name


def test_secure_parameters_have_no_real_default() -> None:
    for path in BICEP_FILES:
        for param in parse(path).params.values():
            if param.secure and param.has_default:
                assert param.default in ("", {}), f"{path.name}: {param.name}"


# --- queues -------------------------------------------------------------------------------------------


def test_main_loads_the_queue_list_generated_from_the_route_table() -> None:
    main = bicep("main.bicep")
    assert _expr(main.variables["queues"].body) == "loadJsonContent('queues.json').queues"
    queues = json.loads((INFRA / "queues.json").read_text())["queues"]
    assert [(q["name"], q["function"], q["appSetting"]) for q in queues] == [
        (r.queue, r.name, r.setting) for r in ROUTES
    ]
    for module in ("serviceBus", "functionApp", "worker"):
        assert _expr(main.modules[module].body["params"]["queues"]) == "queues"
    assert _expr(main.variables["replyQueue"].body) == "loadJsonContent('queues.json').replyQueue"
    assert _expr(main.modules["serviceBus"].body["params"]["replyQueue"]) == "replyQueue"
    reply = json.loads((INFRA / "queues.json").read_text())["replyQueue"]
    assert (reply["name"], reply["appSetting"]) == (REPLIES.queue, REPLIES.setting)
    assert reply["name"] not in {q["name"] for q in queues}


def test_every_queue_property_comes_from_queues_json() -> None:
    sb = bicep("servicebus.bicep")
    queue, reply_queue = sorted(sb.resources_of_type("Microsoft.ServiceBus/namespaces/queues"), key=lambda d: d.name)
    assert (queue.name, reply_queue.name) == ("queueResources", "replyQueueResource")
    loop = queue.loop
    assert loop is not None and (loop.text or b"").decode().startswith("[\n  for queue in queues:")
    body = queue.body
    assert _expr(body["name"]) == "queue.name"
    fields = {
        "requiresSession",
        "maxDeliveryCount",
        "lockDuration",
        "requiresDuplicateDetection",
        "duplicateDetectionHistoryTimeWindow",
        "deadLetteringOnMessageExpiration",
        "defaultMessageTimeToLive",
    }
    assert {k: _expr(v) for k, v in body["properties"].items()} == {f: f"queue.{f}" for f in fields}
    queues = json.loads((INFRA / "queues.json").read_text())["queues"]
    assert all(fields <= set(q) for q in queues)
    # the reply queue: one resource, every property from queues.json's replyQueue (no duplicate detection
    # window: it has none)
    assert reply_queue.loop is None
    assert _expr(reply_queue.body["name"]) == "replyQueue.name"
    reply_fields = fields - {"duplicateDetectionHistoryTimeWindow"}
    props = reply_queue.body["properties"]
    assert {k: _expr(v) for k, v in props.items()} == {f: f"replyQueue.{f}" for f in reply_fields}
    reply = json.loads((INFRA / "queues.json").read_text())["replyQueue"]
    assert reply_fields <= set(reply)


def test_the_reply_queue_has_sessions_a_short_ttl_and_drops_what_expires() -> None:
    reply = json.loads((INFRA / "queues.json").read_text())["replyQueue"]
    assert reply["requiresSession"] is True  # one session per worker process
    assert reply["defaultMessageTimeToLive"] == f"PT{int(REPLIES.time_to_live.total_seconds())}S"
    assert REPLIES.time_to_live.total_seconds() <= 60  # a dead worker's answers vanish quickly
    assert reply["deadLetteringOnMessageExpiration"] is False  # an unclaimed answer is garbage, not a failure
    assert reply["requiresDuplicateDetection"] is False
    assert reply["maxDeliveryCount"] == REPLIES.max_delivery_count


def test_namespace_is_identity_only_with_tls_1_2() -> None:
    sb = bicep("servicebus.bicep")
    (namespace,) = sb.resources_of_type("Microsoft.ServiceBus/namespaces")
    props = namespace.body["properties"]
    assert props["disableLocalAuth"] is True
    assert props["minimumTlsVersion"] == "1.2"
    assert sb.params["sku"].decorators["allowed"] == [["Standard", "Premium"]]
    assert bicep("main.bicep").params["serviceBusSku"].default == "Standard"


# --- role assignments -----------------------------------------------------------------------------------


def _role_assignments(file: BicepFile) -> list[Declaration]:
    return file.resources_of_type("Microsoft.Authorization/roleAssignments")


def _var_guids(file: BicepFile, expression: str) -> set[str]:
    """The role GUIDs an expression can evaluate to (a role-id variable, or a ternary of them)."""
    out: set[str] = set()
    for name in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", expression):
        var = file.variables.get(name)
        if var is None:
            continue
        value = var.body
        if isinstance(value, str):
            out.add(value)
        else:
            out |= _var_guids(file, _expr(value))
    return out


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: p.name)
def test_role_assignments_are_named_by_guid_and_assign_only_declared_roles(path: Path) -> None:
    file = parse(path)
    allowed = {ROLE_IDS[r] for r in ALLOWED_ROLES.get(path.name, set())}
    assigned: set[str] = set()
    for assignment in _role_assignments(file):
        body = assignment.body
        match = re.fullmatch(r"guid\((?P<scope>[^,]+)\.id, (?P<principal>\w+), (?P<role>\w+)\)", _expr(body["name"]))
        assert match, f"{assignment.name}: name must be guid(scope.id, principal, role)"
        scope = _expr(body["scope"])
        assert match["scope"] == scope, f"{assignment.name}: the guid's scope is not the assignment's scope"
        assert scope.split("[")[0] in file.resources, f"{assignment.name}: scope must be a resource, not {scope}"
        props = body["properties"]
        assert _expr(props["principalId"]) == match["principal"]
        assert props["principalType"] == "ServicePrincipal"
        role_expr = _expr(props["roleDefinitionId"])
        assert role_expr == (f"subscriptionResourceId('Microsoft.Authorization/roleDefinitions', {match['role']})"), (
            assignment.name
        )
        roles = _var_guids(file, match["role"])
        assert roles and all(GUID.match(r) for r in roles)
        assigned |= roles
    assert assigned <= allowed, f"{path.name} assigns roles it should not"
    assert assigned == allowed, f"{path.name}: a declared role is never assigned"


def test_no_role_is_assigned_at_resource_group_or_subscription_scope() -> None:
    for path in BICEP_FILES:
        for assignment in _role_assignments(parse(path)):
            assert "scope" in assignment.body, f"{path.name}: {assignment.name} defaults to the resource group"


def _condition(assignment: Declaration) -> str | None:
    """The `if (…)` of a role assignment (inside its loop, or on the resource), as source text."""
    for node in walk(assignment.node):
        if node.type == "if_statement":
            text = (node.text or b"").decode()
            return text[: text.index("{")].strip()
    return None


def _roles_by_principal_and_scope(file: BicepFile) -> dict[tuple[str, str], set[str]]:
    """(principal, scope) -> the role GUIDs assigned there unconditionally (each pair by one resource)."""
    out: dict[tuple[str, str], set[str]] = {}
    for assignment in _role_assignments(file):
        if _condition(assignment) is not None:
            continue
        key = (_expr(assignment.body["properties"]["principalId"]), _expr(assignment.body["scope"]))
        assert key not in out, f"{key} assigned twice"
        out[key] = _var_guids(file, _expr(assignment.body["properties"]["roleDefinitionId"]))
    return out


def test_with_the_receiver_role_functions_may_also_send_retries_to_their_own_queues() -> None:
    """Scheduled retries go back to the trigger's queue: Data Owner includes sending, Data Receiver does not."""
    sb = bicep("servicebus.bicep")
    conditional = [a for a in _role_assignments(sb) if _condition(a) is not None]
    assert [a.name for a in conditional] == ["functionRetrySenders"]
    (retry,) = conditional
    assert _condition(retry) == "if (functionQueueRole == 'Receiver')"
    assert _expr(retry.body["scope"]) == "queueResources[i]"
    assert _expr(retry.body["properties"]["principalId"]) == "functionPrincipalId"
    assert _var_guids(sb, _expr(retry.body["properties"]["roleDefinitionId"])) == {ROLE_IDS["servicebus-data-sender"]}


def test_worker_may_only_send_and_only_to_its_queues() -> None:
    sb = bicep("servicebus.bicep")
    roles = _roles_by_principal_and_scope(sb)
    assert roles[("workerPrincipalId", "queueResources[i]")] == {ROLE_IDS["servicebus-data-sender"]}
    assert roles[("functionPrincipalId", "queueResources[i]")] == {
        ROLE_IDS["servicebus-data-receiver"],
        ROLE_IDS["servicebus-data-owner"],
    }
    assert _expr(sb.variables["functionRoleId"].body) == (
        "functionQueueRole == 'Owner' ? dataOwnerRoleId : dataReceiverRoleId"
    )
    # the route queues' loops run over `queues` only: the reply queue gets none of these roles
    for assignment in _role_assignments(sb):
        if _expr(assignment.body["scope"]) == "queueResources[i]":
            loop = assignment.loop
            assert loop is not None and (loop.text or b"").decode().startswith("[\n  for (queue, i) in queues:")


def test_on_the_reply_queue_functions_may_only_send_and_the_worker_may_only_receive() -> None:
    sb = bicep("servicebus.bicep")
    roles = _roles_by_principal_and_scope(sb)
    on_reply_queue = {principal: guids for (principal, scope), guids in roles.items() if scope == "replyQueueResource"}
    assert on_reply_queue == {
        "functionPrincipalId": {ROLE_IDS["servicebus-data-sender"]},
        "workerPrincipalId": {ROLE_IDS["servicebus-data-receiver"]},
    }
    assert set(scope for _, scope in roles) == {"queueResources[i]", "replyQueueResource"}  # nothing wider
    main = bicep("main.bicep")
    params = main.modules["serviceBus"].body["params"]
    assert _expr(params["workerPrincipalId"]) == "workerIdentity.properties.principalId"
    assert _expr(params["functionPrincipalId"]) == "functionIdentity.properties.principalId"


def test_both_apps_are_told_the_reply_queue() -> None:
    main = bicep("main.bicep")
    params = main.modules["worker"].body["params"]
    assert _expr(params["replyQueueName"]) == "serviceBus.outputs.replyQueueName"  # created before the worker
    assert _expr(bicep("servicebus.bicep").outputs["replyQueueName"].body) == "replyQueueResource.name"
    env = _app_settings(bicep("worker.bicep"))
    assert env[REPLIES.setting] == Expr("replyQueueName")
    assert WorkerSettings.model_fields["reply_queue"].alias == REPLIES.setting
    function_settings = _app_settings(bicep("functionapp.bicep"))
    assert function_settings[REPLIES.setting] == Expr("replyQueueName")  # functions check reply_to against it
    assert _expr(main.modules["functionApp"].body["params"]["replyQueueName"]) == "serviceBus.outputs.replyQueueName"


def _name(value: Any) -> str:
    return _expr(value) if isinstance(value, Expr) else str(value)


def test_each_identity_reads_only_its_own_secrets() -> None:
    main = bicep("main.bicep")
    readers = {
        _name(m.body["params"]["secretName"]): {_expr(p) for p in m.body["params"]["readerPrincipalIds"]}
        for m in main.modules.values()
        if m.type_string == "modules/secret.bicep"
    }
    worker, function = "workerIdentity.properties.principalId", "functionIdentity.properties.principalId"
    assert readers == {
        "slack-app-token": {worker},
        "slack-bot-token": {function},
        "teams-app-password": {worker, function},
        "directline-secret": {worker, function},
        # one per app of slackApps / teamsBots, read by the same identities
        "'slack-app-token-${replace(app.name, '_', '-')}'": {worker},
        "'slack-bot-token-${replace(app.name, '_', '-')}'": {function},
        "'teams-app-password-${replace(bot.name, '_', '-')}'": {worker, function},
    }
    (assignment,) = _role_assignments(bicep("secret.bicep"))
    assert _expr(assignment.body["scope"]) == "secret"  # the secret, not the vault


# --- the function app -------------------------------------------------------------------------------------


def _required_in_azure(*models: type[BaseModel]) -> set[str]:
    required: set[str] = set()
    for model in models:
        for field in model.model_fields.values():
            alias = field.alias
            if not alias or alias in NOT_IN_AZURE:
                continue
            secret = SecretStr in (getattr(field.annotation, "__args__", ()) or (field.annotation,))
            if field.is_required() or secret or alias.endswith(("_APP_ID", "_TENANT_ID")):
                required.add(alias)
    return required


def _model_aliases(*models: type[BaseModel]) -> set[str]:
    return {f.alias for m in models for f in m.model_fields.values() if f.alias}


def _app_settings(file: BicepFile) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for entry in file.name_value_entries():
        assert entry["name"] not in settings, f"{entry['name']} set twice"
        settings[entry["name"]] = entry.get("value", entry.get("secretRef"))
    return settings


def _sets_queue_settings(file: BicepFile) -> bool:
    for var in file.variables.values():
        loop = var.value_node
        if loop.type == "for_statement" and (loop.text or b"").decode().startswith("[\n  for queue in queues:"):
            return bool(to_python(body_of(loop)) == {"name": Expr("queue.appSetting"), "value": Expr("queue.name")})
    return False


def test_function_app_sets_every_setting_the_function_code_reads() -> None:
    fa = bicep("functionapp.bicep")
    settings = _app_settings(fa)
    assert _sets_queue_settings(fa)
    required = _required_in_azure(FunctionSettings, TeamsCredentials) | {
        "ServiceBusConnection__fullyQualifiedNamespace",
        "ServiceBusConnection__credential",
        "ServiceBusConnection__clientId",
    }
    assert required - set(settings) == set()
    directline = _model_aliases(DirectLineBridgeSettings)  # handlers/bridge.py and ctx.directline
    assert (
        set(settings) - FunctionSettings.setting_names() - FUNCTION_PLATFORM_SETTINGS - APP_LISTS - directline == set()
    )
    assert settings["ServiceBusConnection__credential"] == "managedidentity"
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert "AzureWebJobsStorage" not in settings  # no connection string
    assert not NOT_IN_AZURE & set(settings)


def test_function_app_secrets_are_key_vault_references() -> None:
    fa = bicep("functionapp.bicep")
    secret_aliases = {a for a in FunctionSettings.setting_names() if any(w in a for w in SECRET_WORDS)}
    assert secret_aliases
    for name, value in _app_settings(fa).items():
        if any(word in name.upper() for word in SECRET_WORDS) or name in secret_aliases:
            assert re.fullmatch(r"'@Microsoft\.KeyVault\(SecretUri=\$\{\w+\}\)'", _expr(value)), name


def test_function_app_is_flex_consumption_python_311_with_identity_deployment() -> None:
    fa = bicep("functionapp.bicep")
    (plan,) = fa.resources_of_type("Microsoft.Web/serverfarms")
    assert plan.body["sku"] == {"tier": "FlexConsumption", "name": "FC1"}
    (site,) = fa.resources_of_type("Microsoft.Web/sites")
    body = site.body
    assert body["identity"]["type"] == "UserAssigned"
    props = body["properties"]
    assert _expr(props["keyVaultReferenceIdentity"]) == "identityId"
    config = props["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "3.11"}
    assert config["deployment"]["storage"]["authentication"]["type"] == "UserAssignedIdentity"
    scale = config["scaleAndConcurrency"]
    assert {k: _expr(v) for k, v in scale.items()} == {
        "instanceMemoryMB": "instanceMemoryMB",
        "maximumInstanceCount": "maximumInstanceCount",
        "alwaysReady": "alwaysReady",
    }
    always_ready = fa.variables["alwaysReady"].value_node
    assert (always_ready.text or b"").decode().startswith("[\n  for item in items(alwaysReadyInstances):")
    assert to_python(body_of(always_ready)) == {
        "name": Expr("'function:${item.key}'"),
        "instanceCount": Expr("item.value"),
    }
    (storage,) = fa.resources_of_type("Microsoft.Storage/storageAccounts")
    assert storage.body["properties"]["allowSharedKeyAccess"] is False


def test_state_table_exists_and_only_the_function_app_may_use_its_entities() -> None:
    fa = bicep("functionapp.bicep")
    (table_service,) = fa.resources_of_type("Microsoft.Storage/storageAccounts/tableServices")
    assert _expr(table_service.body["parent"]) == "storage" and table_service.body["name"] == "default"
    tables = fa.resources_of_type("Microsoft.Storage/storageAccounts/tableServices/tables")
    (table,) = [t for t in tables if _expr(t.body["name"]) == "stateTableName"]  # (and the Direct Line directory)
    assert _expr(table.body["parent"]) == table_service.name
    # the narrowest data role (entities of this table: read, write, delete), scoped to the table itself
    contributor = {ROLE_IDS["storage-table-data-contributor"]}
    (assignment,) = [
        a
        for a in _role_assignments(fa)
        if _var_guids(fa, _expr(a.body["properties"]["roleDefinitionId"])) == contributor
        and _expr(a.body["scope"]) == table.name
    ]
    assert _expr(assignment.body["scope"]) == table.name
    assert _expr(assignment.body["properties"]["principalId"]) == "identityPrincipalId"
    (site,) = fa.resources_of_type("Microsoft.Web/sites")
    assert assignment.name in {_expr(d) for d in site.body["dependsOn"]}  # the role exists when the app starts
    # the settings the state store reads in Azure: identity-based, never a connection string
    settings = _app_settings(fa)
    assert _expr(settings["RELAYBUS_STATE_TABLE_ENDPOINT"]) == "storage.properties.primaryEndpoints.table"
    assert _expr(settings["RELAYBUS_STATE_TABLE"]) == f"{table.name}.name"
    assert _expr(settings["RELAYBUS_STATE_CLIENT_ID"]) == "identityClientId"
    assert "RELAYBUS_STATE_CONNECTION" not in settings and "RELAYBUS_STATE_PATH" not in settings
    (site_settings,) = [_expr(v) for k, v in site.body["properties"]["siteConfig"].items() if k == "appSettings"]
    assert site_settings.endswith(", stateSettings)")
    # the table name: one default, the same as the code's, passed through main.bicep
    main = bicep("main.bicep")
    assert main.params["stateTableName"].default == FunctionSettings.model_fields["state_table"].default
    assert _expr(main.modules["functionApp"].body["params"]["stateTableName"]) == "stateTableName"


def test_the_direct_line_directory_is_one_table_both_identities_use_through_their_identity() -> None:
    fa, wk = bicep("functionapp.bicep"), bicep("worker.bicep")
    tables = fa.resources_of_type("Microsoft.Storage/storageAccounts/tableServices/tables")
    (table,) = [t for t in tables if _expr(t.body["name"]) == "directLineTableName"]
    contributor = {ROLE_IDS["storage-table-data-contributor"]}
    principals = {
        _expr(a.body["properties"]["principalId"])
        for a in _role_assignments(fa)
        if _var_guids(fa, _expr(a.body["properties"]["roleDefinitionId"])) == contributor
        and _expr(a.body["scope"]) == table.name
    }
    assert principals == {"identityPrincipalId", "workerPrincipalId"}  # the entities of this table, nothing more
    for settings in (_app_settings(fa), _app_settings(wk)):
        assert settings["DIRECTLINE_STORE"] == "table"
        assert _expr(settings["DIRECTLINE_TABLE"]) == "directLineTableName"
        assert _expr(settings["DIRECTLINE_TABLE_CLIENT_ID"]) == "identityClientId"
        assert "DIRECTLINE_TABLE_CONNECTION" not in settings and "DIRECTLINE_STORE_PATH" not in settings
    assert _expr(_app_settings(wk)["DIRECTLINE_TABLE_ENDPOINT"]) == "directLineTableEndpoint"
    main = bicep("main.bicep")
    assert (
        _expr(main.modules["worker"].body["params"]["directLineTableEndpoint"]) == "functionApp.outputs.tableEndpoint"
    )
    assert _expr(main.modules["functionApp"].body["params"]["workerPrincipalId"]) == (
        "workerIdentity.properties.principalId"
    )
    assert main.params["directLineTableName"].default == DirectLineBridgeSettings.model_fields["table_name"].default


def test_always_ready_keys_in_the_parameters_file_are_function_names() -> None:
    document = json.loads((INFRA / "main.parameters.json").read_text())
    keys = set(document["parameters"].get("alwaysReadyInstances", {}).get("value", {}))
    assert keys <= {r.name for r in ROUTES}


# --- the worker ------------------------------------------------------------------------------------------


def test_worker_container_app_always_runs_with_probes_and_no_ingress() -> None:
    wk = bicep("worker.bicep")
    (app,) = wk.resources_of_type("Microsoft.App/containerApps")
    body = app.body
    assert body["identity"]["type"] == "UserAssigned"
    config = body["properties"]["configuration"]
    assert "ingress" not in config
    assert config["registries"] == [{"server": Expr("registryLoginServer"), "identity": Expr("identityId")}]
    scale = body["properties"]["template"]["scale"]
    for key in ("minReplicas", "maxReplicas"):
        value = scale[key]
        if isinstance(value, Expr):  # a parameter: its lower bound must be at least 1
            assert wk.params[value.text].decorators["minValue"][0] >= 1
        else:
            assert value >= 1
    (container,) = body["properties"]["template"]["containers"]
    probes = {p["type"]: p["httpGet"] for p in container["probes"]}
    assert set(probes) == {"Liveness", "Readiness"}
    assert probes["Liveness"]["path"] == "/healthz"
    assert probes["Readiness"]["path"] == "/readyz"
    port = wk.variables["httpPort"].body
    assert port == 8080 == WorkerSettings.model_fields["http_port"].default
    assert all(_expr(p["port"]) == "httpPort" for p in probes.values())


def test_worker_sets_every_setting_the_worker_reads() -> None:
    wk = bicep("worker.bicep")
    settings = _app_settings(wk)
    assert _sets_queue_settings(wk)
    required = _required_in_azure(
        WorkerSettings, ServiceBusSettings, SlackSettings, TeamsSettings, DirectLineSettings
    ) | {
        "ServiceBusConnection__fullyQualifiedNamespace",
        "ServiceBusConnection__clientId",
        "RELAYBUS_QUEUE_BACKEND",
        "RELAYBUS_HTTP_HOST",
        "RELAYBUS_REPLY_QUEUE",
    }
    assert required - set(settings) == set()
    known = _model_aliases(WorkerSettings, ServiceBusSettings, SlackSettings, TeamsSettings, DirectLineSettings)
    assert set(settings) - known - WORKER_PLATFORM_SETTINGS - APP_LISTS == set()
    assert settings["RELAYBUS_QUEUE_BACKEND"] == "servicebus"
    assert settings["RELAYBUS_HTTP_HOST"] == "0.0.0.0"
    assert not NOT_IN_AZURE & set(settings)


def test_worker_secrets_are_key_vault_references_through_the_identity() -> None:
    wk = bicep("worker.bicep")
    secrets: dict[str, dict[str, Any]] = {}
    for var in wk.variables.values():
        for node in walk(var.value_node):
            if node.type == "object":
                obj = to_python(node)
                if "keyVaultUrl" in obj:
                    secrets[obj["name"]] = obj
    assert secrets
    for secret in secrets.values():
        assert set(secret) == {"name", "keyVaultUrl", "identity"}
        assert _expr(secret["identity"]) == "identityId"
    secret_aliases = {
        a
        for a in _model_aliases(WorkerSettings, ServiceBusSettings, SlackSettings, TeamsSettings, DirectLineSettings)
        if any(w in a for w in SECRET_WORDS) and a not in NOT_IN_AZURE
    }
    assert secret_aliases
    for entry in wk.name_value_entries():
        if entry["name"] in secret_aliases or any(w in entry["name"] for w in SECRET_WORDS):
            assert "value" not in entry, entry["name"]
            assert entry["secretRef"] in secrets, entry["name"]


def test_no_literal_looks_like_a_credential() -> None:
    pattern = re.compile(r"xox[abp]-\d|xapp-\d-|SharedAccessKey=|AccountKey=")
    for path in [*BICEP_FILES, INFRA / "main.parameters.json"]:
        assert not pattern.search(path.read_text()), path.name


# --- main ----------------------------------------------------------------------------------------------


def test_main_outputs_what_the_post_deployment_steps_use() -> None:
    outputs = bicep("main.bicep").outputs
    assert {
        "functionAppName",
        "serviceBusNamespace",
        "serviceBusFqdn",
        "workerAppName",
        "keyVaultName",
        "registryName",
        "registryLoginServer",
    } <= set(outputs)


def test_identities_are_user_assigned_one_per_app() -> None:
    main = bicep("main.bicep")
    identities = main.resources_of_type("Microsoft.ManagedIdentity/userAssignedIdentities")
    assert {i.name for i in identities} == {"workerIdentity", "functionIdentity"}
    fa, wk = main.modules["functionApp"].body["params"], main.modules["worker"].body["params"]
    assert _expr(fa["identityId"]) == "functionIdentity.id"
    assert _expr(wk["identityId"]) == "workerIdentity.id"


def test_key_vault_uses_rbac() -> None:
    (vault,) = bicep("keyvault.bicep").resources_of_type("Microsoft.KeyVault/vaults")
    assert vault.body["properties"]["enableRbacAuthorization"] is True


def test_monitoring_is_wired_to_both_apps() -> None:
    main = bicep("main.bicep")
    publishers = {_expr(p) for p in main.modules["monitoring"].body["params"]["publisherPrincipalIds"]}
    assert publishers == {"workerIdentity.properties.principalId", "functionIdentity.properties.principalId"}
    for module in ("functionApp", "worker"):
        value = main.modules[module].body["params"]["appInsightsConnectionString"]
        assert _expr(value) == "monitoring.outputs.connectionString"
    assert _expr(main.modules["worker"].body["params"]["workspaceId"]) == "monitoring.outputs.workspaceId"


def test_function_triggers_match_the_queues_the_bicep_creates() -> None:
    """Always-ready keys (`function:<name>`), `%SETTING%` queue names and sessions agree with queues.json."""
    function_app = pytest.importorskip("function_app")
    queues = json.loads((INFRA / "queues.json").read_text())["queues"]
    triggers: dict[str, dict[str, Any]] = {}
    from functions.triggers import indexed_functions

    for fn in indexed_functions(function_app.app):
        for binding in fn.get_bindings_dict()["bindings"]:
            if binding["type"] == "serviceBusTrigger":
                triggers[str(fn.get_function_name())] = binding
    assert set(triggers) == {q["function"] for q in queues}
    settings = _app_settings(bicep("functionapp.bicep"))
    for queue in queues:
        binding = triggers[queue["function"]]
        assert binding["queueName"] == f"%{queue['appSetting']}%"
        assert bool(binding.get("isSessionsEnabled")) is queue["requiresSession"]
        assert f"{binding['connection']}__fullyQualifiedNamespace" in settings


def _per_app_entries(file: BicepFile) -> dict[str, Any]:
    """The settings generated per app (`NAME__${...}`, shared.apps), by NAME."""
    out: dict[str, Any] = {}
    for obj in file.objects():
        name = obj.get("name")
        if isinstance(name, Expr) and re.fullmatch(r"'[A-Z_]+__\$\{.*\}'", name.text):
            out[name.text[1:].split("__")[0]] = obj
    return out


def test_several_apps_give_every_app_its_own_settings_and_every_secret_is_a_key_vault_reference() -> None:
    worker, function = _per_app_entries(bicep("worker.bicep")), _per_app_entries(bicep("functionapp.bicep"))
    assert set(worker) == {
        "SLACK_APP_TOKEN",
        "SLACK_CONNECTIONS",
        "TEAMS_APP_ID",
        "TEAMS_TENANT_ID",
        "TEAMS_APP_PASSWORD",
    }
    assert set(function) == {"SLACK_BOT_TOKEN", "TEAMS_APP_ID", "TEAMS_TENANT_ID", "TEAMS_APP_PASSWORD"}
    wk = bicep("worker.bicep")
    secret_names = set()
    for var in wk.variables.values():
        for node in walk(var.value_node):
            if node.type == "object" and "keyVaultUrl" in (obj := to_python(node)):
                secret_names.add(_name(obj["name"]))
    for name in ("SLACK_APP_TOKEN", "TEAMS_APP_PASSWORD"):
        assert "value" not in worker[name] and _name(worker[name]["secretRef"]) in secret_names, name
    for name in ("SLACK_BOT_TOKEN", "TEAMS_APP_PASSWORD"):
        assert re.fullmatch(
            r"'@Microsoft\.KeyVault\(SecretUri=\$\{keyVaultUri\}secrets/.*\)'", _expr(function[name]["value"])
        )
    # the suffix is the one the loaders read: upper case, '-' as '_'
    assert worker["SLACK_APP_TOKEN"]["name"].text == "'SLACK_APP_TOKEN__${toUpper(replace(app.name, '-', '_'))}'"
