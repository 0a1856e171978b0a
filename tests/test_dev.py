"""`python -m worker dev --once`: the whole loop on one machine, as a new user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr + (tmp_path / "dev.log").read_text()
    out = proc.stdout
    assert "summary" in out
    for platform in ("slack", "teams"):
        line = next(s for s in out.splitlines() if s.strip().startswith(f"{platform}:") and "replies" in s)
        assert "sent 2" in line, line
        assert "replies 0" not in line, line
    assert "dead-lettered 0" in out
    assert queue.exists()
