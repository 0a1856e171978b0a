"""`python -m worker run|settings` refuses a queue path or HTTP host it cannot use, at start, as a setting error.

Each case runs the real command (SLACK_APP_TOKEN set so that a platform is configured, the Slack API
pointed at a closed local port so nothing leaves the machine) and expects exit 2, `relaybus: setting
NAME: problem` on stderr and no traceback. The tests run as root, for whom file modes do not stop
writes: the unwritable location is one the kernel refuses to anyone (procfs).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def worker(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "TEAMS_", "RELAYBUS_", "ServiceBus"))}
    clean.update(
        {
            "PYTHONPATH": str(ROOT),
            "SLACK_APP_TOKEN": "xapp-1-x",
            "SLACK_API_URL": "http://127.0.0.1:9/api/",  # discard port: a connection attempt fails at once
            "RELAYBUS_HTTP_PORT": "0",
        }
    )
    clean.update(env)
    return subprocess.run(
        [sys.executable, "-m", "worker", *args], cwd=cwd, env=clean, capture_output=True, text=True, timeout=30
    )


def assert_setting_error(proc: subprocess.CompletedProcess[str], setting: str, says: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    [line] = [x for x in proc.stderr.splitlines() if x.startswith("relaybus: ")]
    assert line.startswith(f"relaybus: setting {setting}: "), line
    assert says in line, line


def unwritable_location() -> Path:
    """A directory no one may create entries in, root included (procfs), or skip saying why."""
    proc = Path("/proc")
    try:
        with open("/proc/mounts") as mounts:
            procfs = any(line.split()[1:3] == ["/proc", "proc"] for line in mounts)
    except OSError:
        procfs = False
    if not procfs:
        pytest.skip("no procfs mounted at /proc: no location that refuses root's writes was found")
    try:
        (proc / "relaybus-probe").mkdir()
    except OSError:
        return proc
    (proc / "relaybus-probe").rmdir()  # pragma: no cover - a procfs that takes directories
    pytest.skip("/proc accepted a new directory here: no location that refuses root's writes was found")


@pytest.mark.parametrize("command", ["run", "settings"])
def test_a_queue_path_below_a_file_is_a_setting_error(tmp_path: Path, command: str) -> None:
    (tmp_path / "afile").write_text("x")
    proc = worker(command, cwd=tmp_path, env={"RELAYBUS_LOCAL_QUEUE_PATH": str(tmp_path / "afile" / "queue.db")})
    assert_setting_error(proc, "RELAYBUS_LOCAL_QUEUE_PATH", f"{tmp_path / 'afile'} is a file")


@pytest.mark.parametrize("command", ["run", "settings"])
def test_a_queue_path_that_is_a_directory_is_a_setting_error(tmp_path: Path, command: str) -> None:
    (tmp_path / "queues").mkdir()
    proc = worker(command, cwd=tmp_path, env={"RELAYBUS_LOCAL_QUEUE_PATH": str(tmp_path / "queues")})
    assert_setting_error(proc, "RELAYBUS_LOCAL_QUEUE_PATH", "is a directory")
    assert list((tmp_path / "queues").iterdir()) == []


@pytest.mark.parametrize("below", ["relaybus/queue.db", "queue.db"])
def test_a_queue_path_where_nothing_can_be_created_is_a_setting_error(tmp_path: Path, below: str) -> None:
    """As root, `os.access` says yes to /proc; creating anything there still fails (ENOENT/EACCES)."""
    path = unwritable_location() / below
    proc = worker("run", cwd=tmp_path, env={"RELAYBUS_LOCAL_QUEUE_PATH": str(path)})
    assert_setting_error(proc, "RELAYBUS_LOCAL_QUEUE_PATH", "/proc")


def test_an_http_host_that_does_not_resolve_is_a_setting_error(tmp_path: Path) -> None:
    proc = worker("run", cwd=tmp_path, env={"RELAYBUS_HTTP_HOST": "no-such-host.invalid"})
    assert_setting_error(proc, "RELAYBUS_HTTP_HOST", "no-such-host.invalid")
    assert not (tmp_path / ".relaybus").exists()  # refused before the queue file was created


@pytest.mark.parametrize(("given", "level"), [("debug", "DEBUG"), ("Warn", "WARNING"), (" info ", "INFO")])
def test_the_log_level_is_case_insensitive(tmp_path: Path, given: str, level: str) -> None:
    proc = worker("settings", cwd=tmp_path, env={"RELAYBUS_LOG_LEVEL": given})
    assert proc.returncode == 0, proc.stderr
    assert f'"RELAYBUS_LOG_LEVEL": "{level}"' in proc.stdout


def test_an_unknown_log_level_is_a_setting_error(tmp_path: Path) -> None:
    proc = worker("settings", cwd=tmp_path, env={"RELAYBUS_LOG_LEVEL": "chatty"})
    assert_setting_error(proc, "RELAYBUS_LOG_LEVEL", "")
