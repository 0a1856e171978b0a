"""Settings are validated at start and errors name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from functions.settings import FunctionSettings
from shared.config import environment, read_dotenv
from shared.errors import ConfigurationError
from worker.settings import load_settings


def test_defaults_need_no_settings() -> None:
    s = load_settings({})
    assert s.queue_backend == "local"
    assert s.slack is None and s.teams is None
    assert s.platforms == set()


def test_slack_is_enabled_by_its_token() -> None:
    s = load_settings({"SLACK_APP_TOKEN": "xapp-1-A-1-abc", "SLACK_CONNECTIONS": "4"})
    assert s.slack is not None and s.slack.connections == 4
    assert s.platforms == {"slack"}
    assert s.slack.api_url == "https://slack.com/api/"


@pytest.mark.parametrize(
    ("env", "setting", "needle"),
    [
        ({"SLACK_APP_TOKEN": "xoxb-wrong"}, "SLACK_APP_TOKEN", "xapp-"),
        ({"SLACK_APP_TOKEN": "xapp-1", "SLACK_CONNECTIONS": "11"}, "SLACK_CONNECTIONS", "10"),
        ({"RELAYBUS_HTTP_PORT": "http"}, "RELAYBUS_HTTP_PORT", "integer"),
        ({"RELAYBUS_QUEUE_BACKEND": "kafka"}, "RELAYBUS_QUEUE_BACKEND", "local"),
        ({"RELAYBUS_QUEUE_BACKEND": "servicebus"}, "ServiceBusConnection__fullyQualifiedNamespace", "identity"),
        ({"RELAYBUS_DEDUPE_TTL_SECONDS": "60"}, "RELAYBUS_DEDUPE_TTL_SECONDS", "600"),
    ],
)
def test_wrong_settings_name_the_setting_and_why(env: dict[str, str], setting: str, needle: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        load_settings(env)
    assert err.value.setting == setting
    assert needle in str(err.value)


def test_secret_values_never_appear_in_errors() -> None:
    with pytest.raises(ConfigurationError) as err:
        load_settings({"SLACK_APP_TOKEN": "xoxb-very_secret_value"})
    assert "very_secret" not in str(err.value)


def test_servicebus_with_identity() -> None:
    s = load_settings(
        {
            "RELAYBUS_QUEUE_BACKEND": "servicebus",
            "ServiceBusConnection__fullyQualifiedNamespace": "ns.servicebus.windows.net",
        }
    )
    assert s.servicebus is not None and s.servicebus.fully_qualified_namespace == "ns.servicebus.windows.net"


def test_queue_name_overrides_are_collected() -> None:
    s = load_settings({"SLACK_EVENTS_QUEUE": "custom"})
    assert s.queue_names == {"SLACK_EVENTS_QUEUE": "custom"}


def test_dotenv_is_read_by_python_dotenv_and_the_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "# comment\nSLACK_CONNECTIONS=3  # inline comment\nexport RELAYBUS_LOG_LEVEL='DEBUG'\n\n"
        'SLACK_API_URL="https://slack.com/api/" # quoted\nEMPTY=\n'
    )
    assert read_dotenv(env_file) == {
        "SLACK_CONNECTIONS": "3",
        "RELAYBUS_LOG_LEVEL": "DEBUG",
        "SLACK_API_URL": "https://slack.com/api/",
        "EMPTY": "",
    }
    merged = environment({"SLACK_CONNECTIONS": "5"}, dotenv=env_file)
    assert merged["SLACK_CONNECTIONS"] == "5" and merged["RELAYBUS_LOG_LEVEL"] == "DEBUG"
    assert load_settings({**merged, "SLACK_APP_TOKEN": "xapp-1-x"}).slack is not None


def test_function_settings() -> None:
    s = FunctionSettings.from_env({"SLACK_BOT_TOKEN": "xoxb-1", "UNRELATED": "x"})
    assert s.slack_bot_token is not None and s.slack_bot_token.get_secret_value() == "xoxb-1"


@pytest.mark.parametrize(
    ("geos", "ok"), [("amer", True), ("amer, EMEA", True), ("amer,mars", False), ("amer,amer", False), (" , ", False)]
)
def test_teams_geos_are_checked(geos: str, ok: bool) -> None:
    env = {"TEAMS_APP_ID": "app", "TEAMS_APP_PASSWORD": "p", "TEAMS_TENANT_ID": "t", "TEAMS_GEOS": geos}
    if ok:
        settings = load_settings(env)
        assert settings.teams is not None and set(settings.teams.slot_names) <= {"amer", "emea", "apac"}
    else:
        with pytest.raises(ConfigurationError) as err:
            load_settings(env)
        assert err.value.setting == "TEAMS_GEOS"
