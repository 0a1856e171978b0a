"""`python -m worker dev --once`: the whole loop on one machine, as a new user runs it.

This test keeps the old spelling (`python -m worker dev`, an alias that execs `python -m devstack dev`);
tests/test_dev_console.py runs `python -m devstack dev` itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from shared.routes import REPLIES, ROUTES

ROOT = Path(__file__).resolve().parent.parent


def test_dev_once_closes_the_loop_for_both_platforms(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "TEAMS_", "RELAYBUS_", "ServiceBus"))}
    env["PYTHONPATH"] = str(ROOT)
    queue = tmp_path / "dev.db"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "worker",
            "--env-file",
            str(tmp_path / "none.env"),
            "dev",
            "--once",
            "--messages",
            "2",
            "--queue-path",
            str(queue),
            "--timeout",
            "40",
        ],
        cwd=tmp_path,  # not the checkout: host.json and function_app.py are found beside each other
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr + (tmp_path / "dev.log").read_text()
    out = proc.stdout
    assert "health: http://127.0.0.1:" in out
    summary = out.split("summary after", 1)[1]
    for platform in ("slack", "teams"):
        line = next(s.strip() for s in summary.splitlines() if s.strip().startswith(f"{platform}:"))
        # every scripted interaction went socket -> worker -> queue -> function -> reply -> sandbox
        assert line == f"{platform}: sent 2 · received 2 · published 2 · acked 2 · replies 2", out
    assert "functions: ok 4 · retried 0 · dead-lettered 0" in summary, out
    assert "publish failures 0 · invalid frames 0" in summary, out
    connections = [s.strip() for s in summary.splitlines() if s.strip().startswith("connection ")]
    assert connections and all(c.endswith(": Online until shutdown") for c in connections), out
    assert "slack ← bot: Hi <@U0SANDBOXUSER>, you said: hello from the sandbox (1)" in out
    # the queue the demo used is left on disk, drained
    stats = subprocess.run(
        [sys.executable, "-m", "worker", "queue", "stats", "--path", str(queue)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    rows = {line.split()[0]: line.split() for line in stats.splitlines()[1:]}
    assert set(rows) == {route.queue for route in ROUTES} | {REPLIES.queue}
    assert all(row[-1] == "0" for row in rows.values()), stats
