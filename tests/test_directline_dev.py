"""`python -m devstack dev --directline --once` (what `make dev` runs): the sandbox agent bridged into the sandbox
Slack, the exchange on the console."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_dev_bridges_the_sandbox_agent_into_slack_and_shows_the_exchange(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLACK_", "TEAMS_", "RELAYBUS_", "DIRECTLINE_", "ServiceBus"))
    }
    env["PYTHONPATH"] = str(ROOT)
    command = [sys.executable, "-m", "devstack", "--env-file", str(tmp_path / "none.env"), "dev", "--once"]
    command += ["--directline", "--no-teams", "--messages", "4", "--queue-path", str(tmp_path / "dev.db")]
    proc = subprocess.run(
        [*command, "--timeout", "40", "--quiet"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr + (tmp_path / "dev.log").read_text()
    assert "Direct Line: sandbox at http://127.0.0.1:" in out
    for line in (
        "directline → agent: card",  # the Slack user's mention, as the bridge posted it
        "directline ← agent: Your order",
        "slack ← bot: Your order",  # the agent's Adaptive Card, posted in the thread as Block Kit
        "slack ← bot: Pick one:",
        "slack ← bot: Here is the late answer.",  # two seconds later: no five-second window
    ):
        assert line in out, out
    summary = out.split("summary after", 1)[1]
    assert "connection directline/conversations: Online until shutdown" in summary, out
    assert "dead-lettered 0" in summary and "invalid frames 0" in summary, out
