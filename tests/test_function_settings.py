"""The function app's settings: validated when the app starts (`setting NAME: problem`, the worker's form),
and checked from the command line with `python -m functions settings [--file local.settings.json]`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from functions.settings import FunctionSettings
from shared.errors import ConfigurationError
from shared.routes import ROUTES

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "local.settings.sample.json"
SECRET = "Zq7secretvalue"


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLACK_", "TEAMS_", "RELAYBUS_", "ServiceBus", "BOT_CONNECTOR_"))
    }
    env.update(extra or {})
    env["PYTHONPATH"] = str(ROOT)
    return env


def run(*args: str, env: dict[str, str] | None = None, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "functions", *args],
        env=clean_env(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
    )


def settings_file(tmp_path: Path, values: object, **top: object) -> Path:
    path = tmp_path / "local.settings.json"
    path.write_text(json.dumps({"IsEncrypted": False, **top, "Values": values}))
    return path


# -- validation in process -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "setting", "needle"),
    [
        ({"SLACK_BOT_TOKEN": f"xapp-1-A1-{SECRET}"}, "SLACK_BOT_TOKEN", "worker's SLACK_APP_TOKEN"),
        ({"SLACK_BOT_TOKEN": f"xoxp-1-{SECRET}"}, "SLACK_BOT_TOKEN", "user token"),
        ({"SLACK_BOT_TOKEN": SECRET}, "SLACK_BOT_TOKEN", "xoxb-"),
        ({"SLACK_API_URL": "http://slack.com/api/"}, "SLACK_API_URL", "https"),
        ({"SLACK_API_URL": "ftp://slack.com/api/"}, "SLACK_API_URL", "https"),
        ({"SLACK_API_URL": "slack.com/api"}, "SLACK_API_URL", "https"),
        ({"SLACK_RESPONSE_URL_ALLOWED_HOSTS": "https://hooks.slack.com"}, "SLACK_RESPONSE_URL_ALLOWED_HOSTS", "host"),
        ({"SLACK_RESPONSE_URL_ALLOWED_HOSTS": ".slack.com"}, "SLACK_RESPONSE_URL_ALLOWED_HOSTS", "host"),
        ({"BOT_CONNECTOR_ALLOWED_HOSTS": "smba.trafficmanager.net:443"}, "BOT_CONNECTOR_ALLOWED_HOSTS", "port"),
        ({"TEAMS_APP_ID": "app", "TEAMS_APP_PASSWORD": SECRET}, "TEAMS_TENANT_ID", "TEAMS_APP_PASSWORD"),
        ({"TEAMS_APP_PASSWORD": SECRET}, "TEAMS_APP_ID", "required"),
        ({"TEAMS_STATIC_TOKEN": SECRET}, "TEAMS_STATIC_TOKEN", "sandbox only"),
    ],
)
def test_wrong_settings_name_the_setting_and_never_echo_a_secret(
    env: dict[str, str], setting: str, needle: str
) -> None:
    with pytest.raises(ConfigurationError) as err:
        FunctionSettings.from_env(env)
    assert err.value.setting == setting
    assert str(err.value).startswith(f"setting {setting}: ")
    assert needle in str(err.value)
    assert SECRET not in str(err.value)


def test_valid_settings() -> None:
    s = FunctionSettings.from_env(
        {
            "SLACK_BOT_TOKEN": "xoxb-1-2-abc",
            "SLACK_API_URL": "http://127.0.0.1:9/api",  # http on loopback: the sandbox
            "SLACK_RESPONSE_URL_ALLOWED_HOSTS": "hooks.slack.com, Hooks.Slack-Gov.com",
            "BOT_CONNECTOR_ALLOWED_HOSTS": "::1,127.0.0.1,localhost",
            "TEAMS_STATIC_TOKEN": "sandbox",
        }
    )
    assert s.slack_api_url == "http://127.0.0.1:9/api/" and s.sandbox
    assert s.response_url_hosts == ("hooks.slack.com", "hooks.slack-gov.com")
    assert s.teams is not None and s.teams.static_token is not None


# -- python -m functions settings --------------------------------------------------------------------------


def test_the_sample_local_settings_pass(tmp_path: Path) -> None:
    proc = run("settings", "--file", str(SAMPLE), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    assert printed["SLACK_API_URL"] == "https://slack.com/api/"
    assert printed["TEAMS_APP_ID"] == "00000000-0000-0000-0000-000000000000"
    assert printed["effective"]["SLACK_RESPONSE_URL_ALLOWED_HOSTS"] == ["hooks.slack.com"]
    assert printed["effective"]["sandbox"] is False
    assert "REPLACE_ME" not in proc.stdout and "your-client-secret" not in proc.stdout  # masked


def test_the_file_wins_over_the_environment(tmp_path: Path) -> None:
    path = settings_file(tmp_path, {"SLACK_BOT_TOKEN": f"xoxb-1-{SECRET}", "SLACK_API_URL": "http://localhost:3/api/"})
    proc = run("settings", "--file", str(path), env={"SLACK_BOT_TOKEN": "xapp-1-wrong"}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    assert printed["effective"]["sandbox"] is True
    assert SECRET not in proc.stdout


def test_without_a_file_the_environment_is_checked(tmp_path: Path) -> None:
    ok = run("settings", env={"SLACK_BOT_TOKEN": f"xoxb-1-{SECRET}"}, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert SECRET not in ok.stdout and json.loads(ok.stdout)["SLACK_BOT_TOKEN"] is not None
    bad = run("settings", env={"SLACK_BOT_TOKEN": f"xapp-1-A1-{SECRET}"}, cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.startswith("relaybus: setting SLACK_BOT_TOKEN: is an app-level token")
    assert "SLACK_APP_TOKEN" in bad.stderr and "xoxb-" in bad.stderr
    assert SECRET not in bad.stderr + bad.stdout and "Traceback" not in bad.stderr


@pytest.mark.parametrize(
    ("values", "setting"),
    [
        ({"SLACK_BOT_TOKEN": f"xapp-1-A1-{SECRET}"}, "SLACK_BOT_TOKEN"),
        ({"TEAMS_APP_ID": "app", "TEAMS_APP_PASSWORD": SECRET}, "TEAMS_TENANT_ID"),
        ({"SLACK_API_URL": "http://slack.example/api/"}, "SLACK_API_URL"),
        ({"SLACK_BOT_TOKEN": 12}, "SLACK_BOT_TOKEN"),
        ({"TEAMS_APP_PASSWORD": None}, "TEAMS_APP_PASSWORD"),
    ],
)
def test_a_bad_setting_in_the_file_is_named(tmp_path: Path, values: dict[str, object], setting: str) -> None:
    proc = run("settings", "--file", str(settings_file(tmp_path, values)), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"relaybus: setting {setting}: ")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert SECRET not in proc.stderr + proc.stdout and proc.stdout == ""


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("{not json", "not valid JSON"),
        ("", "not valid JSON"),
        ("[1, 2]", '"Values"'),
        ('{"IsEncrypted": false}', 'no "Values" object'),
        ('{"Values": ["SLACK_BOT_TOKEN"]}', 'no "Values" object'),
        ('{"Values": "SLACK_BOT_TOKEN=xoxb-1"}', 'no "Values" object'),
        ('{"IsEncrypted": true, "Values": {"SLACK_BOT_TOKEN": "ENCRYPTED"}}', "encrypted"),
        ("[" * 100_000, "not valid JSON"),
    ],
)
def test_a_file_that_is_not_local_settings_is_refused(tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / "local.settings.json"
    path.write_text(content)
    proc = run("settings", "--file", str(path), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"relaybus: {path}: ") and needle in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_missing_or_unreadable_file_is_refused(tmp_path: Path) -> None:
    missing = run("settings", "--file", str(tmp_path / "nope.json"), cwd=tmp_path)
    assert missing.returncode == 2 and "no such file" in missing.stderr and "Traceback" not in missing.stderr
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    unreadable = run("settings", "--file", str(binary), cwd=tmp_path)
    assert unreadable.returncode == 2 and "Traceback" not in unreadable.stderr
    directory = run("settings", "--file", str(tmp_path), cwd=tmp_path)
    assert directory.returncode == 2 and "Traceback" not in directory.stderr


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert run(cwd=tmp_path).returncode == 2
    assert run("nonsense", cwd=tmp_path).returncode == 2
    helped = run("settings", "--help", cwd=tmp_path)
    assert helped.returncode == 0 and "--file" in helped.stdout


# -- the function app refuses to start ---------------------------------------------------------------------


def test_importing_the_function_app_with_a_wrong_setting_names_it(tmp_path: Path) -> None:
    # What the Functions host shows when indexing fails: a traceback ending in the setting's name.
    token = f"xoxp-1-{SECRET}"
    proc = subprocess.run(
        [sys.executable, "-c", "import function_app"],
        env=clean_env({"SLACK_BOT_TOKEN": token}),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("shared.errors.ConfigurationError: setting SLACK_BOT_TOKEN: is a user token"), last
    assert SECRET not in proc.stderr + proc.stdout
    assert "ValidationError" not in proc.stderr  # pydantic's own error (which echoes input) is not chained


def test_importing_the_function_app_with_good_settings_works(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "import function_app; print(len(function_app.app.get_functions()))"],
        env=clean_env({"SLACK_BOT_TOKEN": "xoxb-1-2-abc", "TEAMS_APP_ID": "app", "TEAMS_TENANT_ID": "t"}),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) == len(ROUTES)
