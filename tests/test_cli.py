"""The command line as an operator runs it: exit codes and messages that name the setting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "TEAMS_", "RELAYBUS_", "ServiceBus"))}
    clean.update(env or {})
    clean["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "worker", *args], env=clean, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_run_without_any_platform_says_what_to_set(tmp_path: Path) -> None:
    proc = run("run", cwd=tmp_path)
    assert proc.returncode == 2
    assert "SLACK_APP_TOKEN" in proc.stderr and "python -m devstack dev" in proc.stderr


def test_a_wrong_setting_is_named_at_start(tmp_path: Path) -> None:
    proc = run("run", env={"SLACK_APP_TOKEN": "xapp-1-x", "SLACK_CONNECTIONS": "50"}, cwd=tmp_path)
    assert proc.returncode == 2
    assert "setting SLACK_CONNECTIONS" in proc.stderr


def test_env_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("RELAYBUS_HTTP_PORT=9191\nSLACK_APP_TOKEN=xapp-1-secret_value\n")
    proc = run("settings", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    assert printed["RELAYBUS_HTTP_PORT"] == 9191
    assert "secret_value" not in proc.stdout


def test_help_lists_the_commands() -> None:
    proc = run("--help")
    assert proc.returncode == 0
    for command in ("run", "dev", "queue", "settings"):
        assert command in proc.stdout


def test_a_health_port_in_use_is_a_setting_error_not_a_traceback(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run(
            "run",
            env={
                "SLACK_APP_TOKEN": "xapp-1-x",
                "SLACK_API_URL": "http://127.0.0.1:9/api/",
                "RELAYBUS_HTTP_PORT": str(port),
            },
            cwd=tmp_path,
        )
    assert proc.returncode == 2, proc.stderr
    assert "setting RELAYBUS_HTTP_PORT" in proc.stderr and "Traceback" not in proc.stderr
