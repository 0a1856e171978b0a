"""The function app's logging is redacted: importing `function_app` makes every record that reaches any
handler (the Functions host adds its own, before or after the import) carry no token, in its message or
in its traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECRET = "Zq7secretvalue"

SCRIPT = textwrap.dedent(
    """\
    import io
    import logging
    import sys

    early = io.StringIO()  # a handler the host attached before the import
    logging.getLogger().addHandler(logging.StreamHandler(early))
    logging.getLogger().setLevel(logging.INFO)

    import function_app  # noqa: F401  (installs the redaction)

    late = io.StringIO()  # and one attached afterwards
    handler = logging.StreamHandler(late)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(handler)

    SECRET = sys.argv[1]
    logging.getLogger("handlers").info("posting with xoxb-1-2-%s", SECRET)
    logging.getLogger("functions.slack_api").warning("Authorization: Bearer %s failed", SECRET)
    logging.getLogger().warning("root logger: xoxb-9-%s", SECRET)
    try:
        raise RuntimeError(f"upstream said Bearer {SECRET} and xapp-1-{SECRET}")
    except RuntimeError:
        logging.getLogger("handlers.billing").exception("handler failed")
    logging.getLogger("azure.core").warning("sig=%s&x=1", SECRET)  # third-party loggers too
    logging.getLogger("handlers").info("plain %d", 42)
    logging.getLogger("handlers").info("bad args %d", "x")  # does not fit its format: not our business

    sys.stdout.write("=====EARLY=====\\n" + early.getvalue() + "=====LATE=====\\n" + late.getvalue())
    """
)


def test_records_and_tracebacks_reach_every_handler_redacted(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "TEAMS_", "RELAYBUS_", "ServiceBus"))}
    env["PYTHONPATH"] = str(ROOT)
    script = tmp_path / "host_logging.py"  # a file, so that the traceback shows source lines
    script.write_text(SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), SECRET], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    early, late = proc.stdout.split("=====EARLY=====\n", 1)[1].split("=====LATE=====\n")
    for output in (early, late):
        assert SECRET not in output
        assert "posting with ***" in output
        assert "Authorization: *** failed" in output
        assert "root logger: ***" in output
        assert "RuntimeError: upstream said Bearer *** and ***" in output  # the traceback's last line
        assert 'raise RuntimeError(f"upstream said Bearer {SECRET}' in output  # the traceback is there
        assert "sig=***&x=1" in output
        assert "plain 42" in output
    assert "handlers.billing ERROR handler failed\nTraceback (most recent call last):" in late
    assert "--- Logging error ---" in proc.stderr  # the record with bad arguments is the handler's to report
