"""`python -m worker queue …`: stats, peek, dump, deadletter list|resubmit, exit codes."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from localqueue import LocalQueueStore
from localqueue.cli import add_queue_parser, run_queue_command
from tests.conftest_local import ORDERED, PLAIN, message, test_queues

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A queue file with two plain messages, one session message and two dead letters."""
    path = tmp_path / "queue.db"
    with LocalQueueStore(path, test_queues()) as store:
        store.send(message("p1"))
        store.send(message("p2", body=b"not json \xff"))
        store.send(message("o1", ORDERED, session_id="conv-1", properties={"platform": "teams"}))
        for mid in ("d1", "d2"):
            store.send(message(mid))
            [m] = [x for x in store.receive(PLAIN, 5) if x.message_id == mid]
            assert m.lock_token is not None
            store.dead_letter(m.lock_token, "InvalidBody", f"{mid} is broken")
        # the receive above locked p1 and p2 too: release them
        for m in store.peek(PLAIN):
            if m.lock_token:
                store.abandon(m.lock_token)
    return path


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The real command line, in a subprocess (another process opening the same file)."""
    environment = {k: v for k, v in os.environ.items() if k != "RELAYBUS_LOCAL_QUEUE_PATH"}
    environment["PYTHONPATH"] = str(ROOT)
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=environment,
        cwd=cwd or ROOT,
    )


def run(*argv: str) -> tuple[int, str, str]:
    """The same commands in-process (faster), through the parser `add_queue_parser` registers."""
    parser = argparse.ArgumentParser()
    add_queue_parser(parser.add_subparsers(dest="command"))
    out, err = io.StringIO(), io.StringIO()
    code = run_queue_command(parser.parse_args(["queue", *argv]), out, err)
    return code, out.getvalue(), err.getvalue()


def lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_stats_dump_and_deadletter_list_as_a_subprocess(db: Path) -> None:
    stats = cli("queue", "stats", "--path", str(db))
    assert stats.returncode == 0, stats.stderr
    rows = {line.split()[0]: line.split() for line in stats.stdout.splitlines()[1:]}
    assert rows[PLAIN][2:] == ["2", "0", "0", "2", "4"]  # active scheduled locked dead-lettered total

    dump = cli("queue", "--path", str(db), "dump", PLAIN)
    assert dump.returncode == 0, dump.stderr
    records = lines(dump.stdout)
    assert [r["message_id"] for r in records] == ["p1", "p2"]
    assert records[0]["body"] == {"id": "p1"}  # JSON when it parses
    assert records[1]["body"] == "not json \\xff"  # else text
    assert records[0]["delivery_count"] == 1
    assert set(records[0]) >= {
        "message_id",
        "session_id",
        "application_properties",
        "delivery_count",
        "enqueued_at",
        "body",
    }

    dead = cli("queue", "deadletter", "list", env={"RELAYBUS_LOCAL_QUEUE_PATH": str(db)})
    assert dead.returncode == 0, dead.stderr
    assert [(r["message_id"], r["dead_letter_reason"], r["dead_letter_description"]) for r in lines(dead.stdout)] == [
        ("d1", "InvalidBody", "d1 is broken"),
        ("d2", "InvalidBody", "d2 is broken"),
    ]


def test_missing_file_exits_1_with_a_clear_message(tmp_path: Path) -> None:
    result = cli("queue", "stats", cwd=tmp_path)  # default .relaybus/queue.db does not exist there
    assert result.returncode == 1
    assert "no local queue at .relaybus/queue.db" in result.stderr
    assert not (tmp_path / ".relaybus").exists()  # inspecting never creates the file


def test_usage_errors_exit_2(db: Path) -> None:
    assert cli("queue", "deadletter", "resubmit", "--path", str(db)).returncode == 2  # --message-id or --all
    unknown = run("peek", "no-such-queue", "--path", str(db))
    assert unknown[0] == 2 and "no queue named 'no-such-queue'" in unknown[2]
    with pytest.raises(SystemExit) as exc:
        run("peek", "-n", "0", "--path", str(db))
    assert exc.value.code == 2


def test_peek_limits_per_queue_and_takes_no_lock(db: Path) -> None:
    code, out, _ = run("peek", "-n", "1", "--path", str(db))
    assert code == 0
    assert [(r["queue"], r["message_id"]) for r in lines(out)] == [(ORDERED, "o1"), (PLAIN, "p1")]
    assert lines(out)[0]["session_id"] == "conv-1"
    with LocalQueueStore(db) as store:
        assert [m.message_id for m in store.receive(PLAIN, 5)] == ["p1", "p2"]  # still available


def test_stats_json(db: Path) -> None:
    code, out, _ = run("--path", str(db), "stats", "--json")
    assert code == 0
    by_queue = {r["queue"]: r for r in lines(out)}
    assert by_queue[ORDERED] == {
        "queue": ORDERED,
        "sessions": True,
        "active": 1,
        "scheduled": 0,
        "locked": 0,
        "dead_lettered": 0,
        "total": 1,
        "sessions_locked": 0,
    }


def test_resubmit_one_then_all(db: Path) -> None:
    assert run("deadletter", "resubmit", PLAIN, "--message-id", "d2", "--path", str(db))[:2] == (
        0,
        "resubmitted 1 message\n",
    )
    code, _, err = run("deadletter", "resubmit", "--message-id", "d2", "--path", str(db))
    assert code == 1 and "no dead-lettered message 'd2'" in err
    assert run("deadletter", "resubmit", "--all", "--path", str(db))[:2] == (0, "resubmitted 1 message\n")
    code, out, _ = run("dump", PLAIN, "--path", str(db))
    records = lines(out)
    assert [r["message_id"] for r in records] == ["p1", "p2", "d2", "d1"]
    assert [r["delivery_count"] for r in records[2:]] == [0, 0]
    assert run("deadletter", "list", "--path", str(db))[1] == ""


def test_a_file_that_is_not_a_queue_exits_1(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.db"
    bogus.write_bytes(b"this is not sqlite" * 100)
    code, _, err = run("stats", "--path", str(bogus))
    assert code == 1 and str(bogus) in err
