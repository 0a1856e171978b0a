"""`python -m devstack dev` as a newcomer meets it: what the console says, and when it stops by itself.

Real processes (cwd a tmp dir, the environment cleaned of platform settings) against the sandboxes the
command starts, or against a closed loopback port standing in for an unreachable real Slack.
"""

from __future__ import annotations

import io
import os
import queue
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devstack.dev import ConnectionTracker, Console, shorten
from devstack.sandbox.slack import RecordedCall
from devstack.sandbox.teams import BotReply
from worker.lifecycle import ConnectionStatus, StatusBoard

ROOT = Path(__file__).resolve().parent.parent
SECRET = "A0REAL-secret_part"
REAL_APP_TOKEN = f"xapp-1-{SECRET}"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "TEAMS_", "RELAYBUS_", "ServiceBus"))}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def dev_command(tmp_path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "devstack", "--env-file", str(tmp_path / "none.env"), "dev", *args]


def run_dev(tmp_path: Path, *args: str, timeout: float = 40, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        dev_command(tmp_path, "--queue-path", str(tmp_path / "q" / "dev.db"), *args),
        cwd=tmp_path,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port bound but not listening: connections to it are refused (an unreachable Slack)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


def summary_of(out: str) -> str:
    assert "summary after" in out, out
    return out.split("summary after", 1)[1]


def connection_lines(summary: str) -> dict[str, str]:
    lines = {}
    for line in summary.splitlines():
        match = re.match(r"\s*connection (\S+): (.*)$", line)
        if match:
            lines[match[1]] = match[2]
    return lines


# --- --once with a real platform ---------------------------------------------------------------------


def test_once_with_an_unreachable_real_slack_exits_by_itself_and_says_failed_to_connect(
    tmp_path: Path, closed_port: int
) -> None:
    started = time.monotonic()
    proc = run_dev(
        tmp_path,
        "--once",
        "--no-teams",
        "--timeout",
        "5",
        timeout=15,
        SLACK_APP_TOKEN=REAL_APP_TOKEN,
        SLACK_API_URL=f"http://127.0.0.1:{closed_port}/api/",
    )
    elapsed = time.monotonic() - started
    out = proc.stdout
    assert elapsed < 15
    assert proc.returncode == 1, out + proc.stderr
    assert "Slack: real platform (SLACK_APP_TOKEN is set" in out
    assert "Teams: left out (--no-teams)" in out
    connections = connection_lines(summary_of(out))
    assert connections, out
    assert {name.split("/")[0] for name in connections} == {"slack"}
    for state in connections.values():
        # the state before shutdown, with its last error: not the Ended every connection gets at stop
        assert state.startswith("FailedToConnect ("), out
        assert "never came online" in state
    # the live line showed the failure while it happened
    assert re.search(r"slack/0 (FailedToConnect|Connecting) \(\w+", out), out
    assert "never came online: slack/0" in proc.stderr
    assert "Traceback" not in proc.stderr
    log = (tmp_path / "q" / "dev.log").read_text()
    for text in (out, proc.stderr, log):
        assert SECRET not in text


def test_no_slack_leaves_out_a_slack_configured_in_the_environment(tmp_path: Path, closed_port: int) -> None:
    proc = run_dev(
        tmp_path,
        "--once",
        "--no-slack",
        "--messages",
        "1",
        "--timeout",
        "20",
        SLACK_APP_TOKEN=REAL_APP_TOKEN,
        SLACK_API_URL=f"http://127.0.0.1:{closed_port}/api/",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Slack: left out (--no-slack)" in proc.stdout
    assert set(connection_lines(summary_of(proc.stdout))) == {"teams/amer"}


# --- the console during a run --------------------------------------------------------------------------


class _Lines:
    """The lines a process writes to stdout, read on a thread."""

    def __init__(self, stream: io.TextIOBase) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: io.TextIOBase) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, within: float = 15.0) -> re.Match[str]:
        deadline = time.monotonic() + within
        compiled = re.compile(pattern)
        for line in self.seen:
            if match := compiled.search(line):
                return match
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if match := compiled.search(line):
                return match
        raise AssertionError(f"no line matching {pattern!r} in:\n" + "\n".join(self.seen))

    def rest(self, within: float = 20.0) -> str:
        self._thread.join(within)
        while not self._queue.empty():
            line = self._queue.get()
            if line is not None:
                self.seen.append(line)
        return "\n".join(self.seen)


def _post_pasted(command: str) -> httpx.Response:
    """Do what the banner's curl command does (parsed as a shell would)."""
    words = shlex.split(command)
    assert words[:3] == ["curl", "-X", "POST"], command
    url = words[3]
    headers = dict(words[i + 1].split(": ", 1) for i, w in enumerate(words) if w == "-H")
    data = words[words.index("-d") + 1]
    return httpx.post(url, content=data.encode(), headers=headers, timeout=5)


def test_a_message_sent_with_the_banner_curl_is_answered_on_the_console(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        dev_command(tmp_path, "--messages", "0", "--queue-path", str(tmp_path / "dev.db")),
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = _Lines(proc.stdout)
        lines.wait_for(r"Slack: sandbox at http://127\.0\.0\.1:\d+/api/ .*because SLACK_APP_TOKEN is not set")
        lines.wait_for(r"Teams: sandbox at http://127\.0\.0\.1:\d+ .*because TEAMS_APP_ID is not set")
        lines.wait_for(r"^    slack event app_mention -> handlers\.slack\.answer_mention$")
        lines.wait_for(r"^    teams activity message -> handlers\.teams\.echo$")
        slack_curl = lines.wait_for(r"^    (curl -X POST \S+/api/_sandbox/events .*\"kind\":\"message\".*)$")[1]
        teams_curl = lines.wait_for(r"^    (curl -X POST \S+/_sandbox/messages .*)$")[1]
        lines.wait_for(r"Ctrl-C to stop")
        for command in (slack_curl, teams_curl):
            answer = _post_pasted(command.replace('"hello"', '"from my own curl"'))
            assert answer.status_code == 200, answer.text
        lines.wait_for(r"^  slack ← bot: Hi <@U0SANDBOXUSER>, you said: from my own curl$")
        lines.wait_for(r"^  teams ← bot: You said: from my own curl$")
        lines.wait_for(r"slack/0 Online")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, lines.rest() + (proc.stderr.read() if proc.stderr else "")
        out = lines.rest()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    summary = summary_of(out)
    assert "slack: sent 0 · received 1 · published 1 · acked 1 · replies 1" in summary, out
    assert "teams: sent 0 · received 1 · published 1 · acked 1 · replies 1" in summary, out
    connections = connection_lines(summary)
    assert connections and all(state == "Online until shutdown" for state in connections.values()), out


def test_quiet_keeps_banner_replies_and_summary_and_the_log_starts_fresh(tmp_path: Path) -> None:
    log_dir = tmp_path / "q"
    log_dir.mkdir()
    (log_dir / "dev.log").write_text("the previous run\n")
    proc = run_dev(tmp_path, "--once", "--quiet", "--messages", "1", "--timeout", "30")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert out.startswith("relaybus dev — ")
    assert "  slack ← bot: Hi <@U0SANDBOXUSER>, you said: hello from the sandbox (1)" in out
    assert "  teams ← bot: You said: hello from the sandbox (1)" in out
    assert "summary after" in out
    # no live progress line: nothing shows connection states but the summary
    before_summary = out.split("summary after", 1)[0]
    assert "slack/0" not in before_summary and "functions: ok" not in before_summary, out
    assert (log_dir / "dev.log.1").read_text() == "the previous run\n"
    assert "the previous run" not in (log_dir / "dev.log").read_text()


def test_a_wrong_log_level_is_named_without_a_traceback(tmp_path: Path) -> None:
    proc = run_dev(tmp_path, "--once", timeout=20, RELAYBUS_LOG_LEVEL="chatty")
    assert proc.returncode == 2
    assert "setting RELAYBUS_LOG_LEVEL" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_queue_path_that_is_a_directory_is_named_without_a_traceback(tmp_path: Path) -> None:
    folder = tmp_path / "queues"
    folder.mkdir()
    proc = subprocess.run(
        dev_command(tmp_path, "--once", "--queue-path", str(folder)),
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 2
    assert "setting RELAYBUS_LOCAL_QUEUE_PATH" in proc.stderr and "is a directory" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "dev.log").exists()  # nothing written before the path was checked


def test_a_health_port_in_use_is_named_without_a_traceback(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        proc = run_dev(tmp_path, "--once", "--timeout", "30", timeout=30, RELAYBUS_HTTP_PORT=str(port))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"setting RELAYBUS_HTTP_PORT: cannot listen on 127.0.0.1:{port}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - started < 15  # it stops at once, not at --timeout


def test_dev_stops_at_once_when_the_worker_cannot_open_its_queue(tmp_path: Path) -> None:
    not_a_queue = tmp_path / "q" / "dev.db"
    not_a_queue.parent.mkdir()
    not_a_queue.write_text("somebody's notes, not a database\n")
    started = time.monotonic()
    proc = run_dev(tmp_path, "--once", "--timeout", "30", timeout=30)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "relaybus dev: queue stopped:" in proc.stderr and "not an SQLite database" in proc.stderr
    assert time.monotonic() - started < 15  # not after --timeout: nothing can flow without the queue
    assert not_a_queue.read_text() == "somebody's notes, not a database\n"


@pytest.mark.parametrize("value", ["0", "-1", "nan", "soon"])
def test_timeout_must_be_a_positive_number_of_seconds(tmp_path: Path, value: str) -> None:
    proc = run_dev(tmp_path, "--once", "--timeout", value, timeout=20)
    assert proc.returncode == 2
    assert "--timeout" in proc.stderr and "Traceback" not in proc.stderr


# --- the pieces the console is made of -----------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_lines_print_above_the_live_line() -> None:
    out = _Terminal()
    console = Console(out)
    console.live("slack/0 Connecting")
    console.say("  slack ← bot: hi")
    console.live("slack/0 Online")
    console.close()
    assert out.getvalue() == (
        "\r\x1b[2Kslack/0 Connecting\r\x1b[2K  slack ← bot: hi\nslack/0 Connecting\r\x1b[2Kslack/0 Online\n"
    )


def test_not_on_a_terminal_the_live_line_prints_when_it_changes_and_quiet_prints_none() -> None:
    out = io.StringIO()
    console = Console(out)
    for line in ("a", "a", "b", "b", "a"):
        console.live(line)
    console.say("reply")
    console.close()
    assert out.getvalue() == "a\nb\na\nreply\n"
    quiet = io.StringIO()
    console = Console(quiet, live=False)
    console.live("a")
    console.say("reply")
    assert quiet.getvalue() == "reply\n"


def test_a_connection_that_never_came_online_keeps_its_failure_after_shutdown() -> None:
    board = StatusBoard()
    tracker = ConnectionTracker(board)
    board.set("slack", "0", ConnectionStatus.CONNECTING)
    board.set("teams", "amer", ConnectionStatus.CONNECTING)
    tracker.observe()
    board.set("slack", "0", ConnectionStatus.FAILED_TO_CONNECT, "transport_error")
    board.set("teams", "amer", ConnectionStatus.ONLINE, "conn-1")
    assert tracker.describe(tracker.observe()) == "slack/0 FailedToConnect (transport_error) · teams/amer Online"
    board.set("slack", "0", ConnectionStatus.CONNECTING)  # retrying: the live line keeps the last error
    assert tracker.describe(tracker.observe()).startswith("slack/0 Connecting (transport_error)")
    assert not tracker.settled({"slack", "teams", "directline"})
    assert tracker.settled({"slack", "teams"})
    board.set("slack", "0", ConnectionStatus.ENDED, "stopped")
    board.set("teams", "amer", ConnectionStatus.ENDED, "stopped")
    tracker.observe()
    assert tracker.summary_lines() == [
        "connection slack/0: FailedToConnect (transport_error) — never came online",
        "connection teams/amer: Online until shutdown",
    ]
    assert tracker.never_online({"slack", "teams"}) == ["slack/0"]


def test_replies_are_shortened_to_one_line() -> None:
    assert shorten("a\n b\tc", 10) == "a b c"
    assert shorten("x" * 30, 10) == "x" * 9 + "…"


def test_recorded_replies_say_what_a_person_would_read() -> None:
    def call(method: str, body: dict[str, object]) -> RecordedCall:
        return RecordedCall(method, dict(body), None, "http://127.0.0.1/", 0.0)

    assert call("chat.postMessage", {"text": "hi"}).text == "hi"
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "from a block"}}]
    assert call("response_url", {"blocks": blocks}).text == "from a block"
    view = '{"type": "modal", "title": {"type": "plain_text", "text": "New ticket"}}'
    assert call("views.open", {"view": view, "trigger_id": "t"}).text == "New ticket"
    assert call("chat.update", {"blocks": "not json"}).text == ""
    card = {"contentType": "application/vnd.microsoft.card.adaptive", "content": {"body": [{"text": "Pick"}]}}
    assert BotReply("POST", "/", "c", None, {"type": "message", "attachments": [card]}, "").text == "Pick"
    assert BotReply("POST", "/", "c", None, {"text": "You said: x"}, "").text == "You said: x"
    assert BotReply("DELETE", "/", "c", "1", None, "").text == ""
