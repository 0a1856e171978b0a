"""The queue commands and the store against files that are not queues, path resolution, the stats format.

Every command runs as a real process (`python -m worker queue …`, `python -m localqueue …`) in a tmp
cwd with the relaybus settings removed from the environment. "Unchanged" is checked byte for byte,
and the directory holding the file must not gain `-wal`, `-shm` or `-journal` files.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localqueue import LocalQueueBackend, LocalQueueStore, NotAQueueError
from localqueue.cli import main
from localqueue.store import APPLICATION_ID
from shared.errors import PermanentPublishError
from shared.queue_message import QueueMessage
from tests.conftest_local import ORDERED, PLAIN, message, test_queues

ROOT = Path(__file__).resolve().parent.parent
READING_COMMANDS = (
    ("stats",),
    ("peek",),
    ("dump",),
    ("deadletter", "list"),
    ("deadletter", "resubmit", "--all"),
)


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "TEAMS_", "RELAYBUS_", "ServiceBus"))}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra or {})
    return env


def run(
    *args: str, cwd: Path, module: str = "worker", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m worker …` (or `python -m localqueue …`) as a process."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=30,
    )


def queue_cmd(
    *args: str, cwd: Path, module: str = "worker", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    prefix = ("queue",) if module == "worker" else ()
    return run(*prefix, *args, cwd=cwd, module=module, env=env)


def snapshot(path: Path) -> tuple[object, list[str]]:
    """The file's bytes (a directory's listing) and the names next to it."""
    if path.is_dir():
        content: object = sorted(p.name for p in path.iterdir())
    elif path.exists():
        content = path.read_bytes()
    else:
        content = None
    return content, sorted(p.name for p in path.parent.iterdir())


# -- files that are not queues ----------------------------------------------------------------------


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _foreign(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO users(name) VALUES ('ada')")
    conn.commit()
    conn.close()


def _foreign_wal(path: Path) -> None:
    """Another application's database in WAL mode, closed cleanly (no -wal/-shm left)."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO users(name) VALUES ('ada')")
    conn.commit()
    conn.close()
    assert not Path(f"{path}-wal").exists()


def _foreign_app(path: Path) -> None:
    """A database that says it belongs to another application, with tables named like ours."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA application_id = 1234")
    conn.execute("PRAGMA user_version = 1")
    for table in ("queues", "messages", "dedupe", "sessions"):
        conn.execute(f"CREATE TABLE {table} (x)")
    conn.commit()
    conn.close()


def _blank_sqlite(path: Path) -> None:
    """An SQLite database with a header and no schema (what a crash during the first open leaves)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()
    assert path.stat().st_size > 0


def _text(path: Path) -> None:
    path.write_text("queue: not really\n" * 20)


def _directory(path: Path) -> None:
    path.mkdir()
    (path / "inside.txt").write_text("x")


NOT_QUEUES: dict[str, tuple[Callable[[Path], None], str]] = {
    "empty": (_empty, "empty file"),
    "foreign-sqlite": (_foreign, "without relaybus' queue tables"),
    "foreign-sqlite-wal": (_foreign_wal, "without relaybus' queue tables"),
    "other-application-id": (_foreign_app, "another application's SQLite database"),
    "blank-sqlite": (_blank_sqlite, "no tables"),
    "text": (_text, "not an SQLite database"),
    "directory": (_directory, "is a directory"),
}


@pytest.mark.parametrize("command", READING_COMMANDS, ids=" ".join)
@pytest.mark.parametrize("kind", list(NOT_QUEUES))
def test_reading_commands_refuse_a_file_that_is_not_a_queue_and_change_nothing(
    tmp_path: Path, kind: str, command: tuple[str, ...]
) -> None:
    make, says = NOT_QUEUES[kind]
    path = tmp_path / "data" / "thing.db"
    path.parent.mkdir()
    make(path)
    before = snapshot(path)

    proc = queue_cmd(*command, "--path", str(path), cwd=tmp_path)

    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    [line] = proc.stderr.strip().splitlines()  # one line
    assert line.startswith("relaybus queue: ") and str(path) in line and says in line
    assert snapshot(path) == before


@pytest.mark.parametrize("kind", ["foreign-sqlite", "text", "directory"])
def test_python_m_localqueue_refuses_the_same_way(tmp_path: Path, kind: str) -> None:
    make, says = NOT_QUEUES[kind]
    path = tmp_path / "thing.db"
    make(path)
    before = snapshot(path)
    proc = queue_cmd("dump", "--path", str(path), cwd=tmp_path, module="localqueue")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert says in proc.stderr and str(path) in proc.stderr
    assert snapshot(path) == before


@pytest.mark.parametrize("command", READING_COMMANDS, ids=" ".join)
def test_a_missing_file_is_not_created(tmp_path: Path, command: tuple[str, ...]) -> None:
    path = tmp_path / "nowhere" / "queue.db"
    proc = queue_cmd(*command, "--path", str(path), cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert f"no local queue at {path}" in line
    assert not path.parent.exists()


def test_usage_errors_exit_2_before_touching_the_file(tmp_path: Path) -> None:
    path = tmp_path / "thing.db"
    _foreign(path)
    before = snapshot(path)
    for args in (("deadletter", "resubmit"), ("peek", "-n", "0"), ("stats", "--bogus")):
        proc = queue_cmd(*args, "--path", str(path), cwd=tmp_path)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and "usage:" in proc.stderr
    assert snapshot(path) == before


def test_a_queue_written_by_an_earlier_version_still_opens(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with LocalQueueStore(path, test_queues()) as store:
        store.send(message("kept"))
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA application_id = 0")  # files of earlier versions carry 0
    conn.commit()
    conn.close()

    proc = queue_cmd("dump", "--path", str(path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["message_id"] for line in proc.stdout.splitlines()] == ["kept"]
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID  # now marked as a queue
    conn.close()


def test_a_queue_in_use_whose_schema_is_still_in_the_wal_is_read(tmp_path: Path) -> None:
    """While the worker has the file open, its first commit can live only in `-wal`: that is a queue."""
    path = tmp_path / "live.db"
    store = LocalQueueStore(path, test_queues())
    try:
        store.send(message("live"))
        assert Path(f"{path}-wal").stat().st_size > 0
        main_file = sqlite3.connect(path.as_uri() + "?mode=ro&immutable=1", uri=True)
        assert main_file.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0  # not checkpointed yet
        main_file.close()
        proc = queue_cmd("dump", "--path", str(path), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert [json.loads(line)["message_id"] for line in proc.stdout.splitlines()] == ["live"]
    finally:
        store.close()


@pytest.mark.parametrize("kind", ["foreign-sqlite", "foreign-sqlite-wal", "other-application-id", "text", "directory"])
def test_creating_a_store_refuses_an_existing_file_that_is_not_a_queue(tmp_path: Path, kind: str) -> None:
    make, says = NOT_QUEUES[kind]
    path = tmp_path / "thing.db"
    make(path)
    before = snapshot(path)
    store = LocalQueueStore(path, test_queues(), create=True)
    with pytest.raises(NotAQueueError, match=says):
        store.open()
    assert snapshot(path) == before


async def test_the_backend_refuses_it_as_a_permanent_publish_error(tmp_path: Path) -> None:
    path = tmp_path / "thing.db"
    _foreign(path)
    before = snapshot(path)
    backend = LocalQueueBackend(path, queues=test_queues())
    with pytest.raises(PermanentPublishError, match="without relaybus' queue tables"):
        await backend.open()
    await backend.close()
    assert snapshot(path) == before


@pytest.mark.parametrize("kind", ["empty", "blank-sqlite"])
def test_creating_a_store_takes_an_empty_file_or_a_blank_database(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "new.db"
    NOT_QUEUES[kind][0](path)
    with LocalQueueStore(path, test_queues(), create=True) as store:
        store.send(message("first"))
    with LocalQueueStore(path, create=False) as store:
        assert [m.message_id for m in store.messages()] == ["first"]


def test_the_worker_stops_on_a_foreign_database_without_changing_it(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    _foreign(path)
    before = snapshot(path)
    proc = run(
        "run",
        cwd=tmp_path,
        env={
            "SLACK_APP_TOKEN": "xapp-1-x",
            "SLACK_API_URL": "http://127.0.0.1:9/api/",  # never reached: the queue fails first
            "RELAYBUS_LOCAL_QUEUE_PATH": str(path),
            "RELAYBUS_HTTP_PORT": "0",
        },
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert f"{path} is an SQLite database without relaybus' queue tables" in proc.stderr
    assert snapshot(path) == before


# -- which file (path resolution) -------------------------------------------------------------------------


def make_queue(path: Path, message_id: str, mtime: float | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with LocalQueueStore(path, test_queues()) as store:
        store.send(message(message_id))
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def dumped(proc: subprocess.CompletedProcess[str]) -> list[str]:
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line)["message_id"] for line in proc.stdout.splitlines()]


def test_path_option_beats_the_setting_which_beats_the_default_files(tmp_path: Path) -> None:
    make_queue(tmp_path / ".relaybus" / "queue.db", "default")
    make_queue(tmp_path / "setting.db", "setting")
    make_queue(tmp_path / "option.db", "option")
    setting = {"RELAYBUS_LOCAL_QUEUE_PATH": "setting.db"}

    assert dumped(queue_cmd("dump", cwd=tmp_path)) == ["default"]
    assert dumped(queue_cmd("dump", cwd=tmp_path, env=setting)) == ["setting"]
    assert dumped(queue_cmd("dump", "--path", "option.db", cwd=tmp_path, env=setting)) == ["option"]
    assert dumped(queue_cmd("--path", "option.db", "dump", cwd=tmp_path, env=setting)) == ["option"]
    assert dumped(queue_cmd("dump", cwd=tmp_path, env={"RELAYBUS_LOCAL_QUEUE_PATH": ""})) == ["default"]  # unset
    for module in ("worker", "localqueue"):
        assert dumped(queue_cmd("dump", cwd=tmp_path, module=module, env=setting)) == ["setting"]


def test_the_setting_comes_from_dotenv_or_env_file_and_the_environment_wins(tmp_path: Path) -> None:
    make_queue(tmp_path / ".relaybus" / "queue.db", "default")
    make_queue(tmp_path / "dotenv.db", "dotenv")
    make_queue(tmp_path / "other.db", "other")
    make_queue(tmp_path / "environment.db", "environment")
    (tmp_path / ".env").write_text("RELAYBUS_LOCAL_QUEUE_PATH=dotenv.db\n")
    (tmp_path / "other.env").write_text("RELAYBUS_LOCAL_QUEUE_PATH=other.db\n")

    assert dumped(run("queue", "dump", cwd=tmp_path)) == ["dotenv"]
    assert dumped(run("dump", cwd=tmp_path, module="localqueue")) == ["dotenv"]
    assert dumped(run("--env-file", "other.env", "queue", "dump", cwd=tmp_path)) == ["other"]
    assert dumped(run("--env-file", "other.env", "dump", cwd=tmp_path, module="localqueue")) == ["other"]
    environment = {"RELAYBUS_LOCAL_QUEUE_PATH": "environment.db"}
    assert dumped(run("queue", "dump", cwd=tmp_path, env=environment)) == ["environment"]
    assert dumped(run("dump", cwd=tmp_path, module="localqueue", env=environment)) == ["environment"]


def test_an_unreadable_env_file_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / ".env").write_bytes(b"RELAYBUS_LOCAL_QUEUE_PATH=\xff\xfe.db\n")
    proc = run("stats", cwd=tmp_path, module="localqueue")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "setting .env" in proc.stderr


def test_without_a_setting_the_existing_default_file_is_used(tmp_path: Path) -> None:
    make_queue(tmp_path / ".relaybus" / "dev-queue.db", "dev")
    proc = queue_cmd("dump", cwd=tmp_path)
    assert dumped(proc) == ["dev"]
    assert proc.stderr == ""  # only one candidate: nothing to say


def test_when_both_default_files_exist_the_newest_is_read_and_stderr_says_so(tmp_path: Path) -> None:
    worker_file = make_queue(tmp_path / ".relaybus" / "queue.db", "worker", mtime=1_700_000_000)
    dev_file = make_queue(tmp_path / ".relaybus" / "dev-queue.db", "dev", mtime=1_700_000_100)
    proc = queue_cmd("dump", cwd=tmp_path)
    assert dumped(proc) == ["dev"]
    assert "reading .relaybus/dev-queue.db (the newest; also .relaybus/queue.db: choose with --path)" in proc.stderr

    os.utime(worker_file, (1_700_000_200, 1_700_000_200))
    proc = queue_cmd("stats", cwd=tmp_path, module="localqueue")
    assert proc.returncode == 0
    assert "reading .relaybus/queue.db (the newest; also .relaybus/dev-queue.db" in proc.stderr

    # In use, a queue's commits land in -wal; the main file's time is old: the -wal time counts.
    os.utime(dev_file, (1_700_000_300, 1_700_000_300))
    with LocalQueueStore(worker_file) as live:
        live.send(message("newer"))
        os.utime(worker_file, (1_700_000_000, 1_700_000_000))
        assert dumped(queue_cmd("dump", cwd=tmp_path)) == ["worker", "newer"]


def test_with_no_file_anywhere_it_names_the_default_and_creates_nothing(tmp_path: Path) -> None:
    proc = queue_cmd("stats", cwd=tmp_path, module="localqueue")
    assert proc.returncode == 1
    assert "no local queue at .relaybus/queue.db" in proc.stderr
    assert list(tmp_path.iterdir()) == []


# -- the documented output ----------------------------------------------------------------------------------


def test_stats_prints_exactly_the_documented_table(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    with LocalQueueStore(path, test_queues()) as store:
        for mid in ("p1", "p2", "d1"):
            store.send(message(mid))
        [locked] = store.receive(PLAIN, 1)
        store.send(message("o1", ORDERED, session_id="s"))
        store.send(message("later", ORDERED, session_id="s"), available_at=time.time() + 3600)
        dead = store.receive(PLAIN, 1)[0]
        assert dead.lock_token is not None and locked.lock_token is not None
        store.dead_letter(dead.lock_token, "Broken")
    proc = queue_cmd("stats", "--path", str(path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (
        "queue    sessions  active  scheduled  locked  dead-lettered  total\n"
        "ordered  yes            1          1       0              0      2\n"
        "plain    no             1          0       1              1      3\n"
    )
    for line in proc.stdout.splitlines():
        assert len(line.split()) == 7  # one word per cell: awk-friendly

    as_json = queue_cmd("stats", "--json", "--path", str(path), cwd=tmp_path, module="localqueue")
    assert [json.loads(line) for line in as_json.stdout.splitlines()] == [
        {
            "queue": ORDERED,
            "sessions": True,
            "active": 1,
            "scheduled": 1,
            "locked": 0,
            "dead_lettered": 0,
            "total": 2,
            "sessions_locked": 0,
        },
        {
            "queue": PLAIN,
            "sessions": False,
            "active": 1,
            "scheduled": 0,
            "locked": 1,
            "dead_lettered": 1,
            "total": 3,
            "sessions_locked": 0,
        },
    ]


def test_stats_of_the_route_table_queues_as_the_readme_shows(tmp_path: Path) -> None:
    """The file the worker creates (one queue per route): the README's example, digit for digit."""
    path = tmp_path / "q.db"

    async def fill() -> None:
        async with LocalQueueBackend(path) as backend:  # what `python -m worker run` creates
            for i in range(3):
                await backend.send(QueueMessage("slack-events", f"Ev{i}", b"{}", session_id="T1:C1"))
            await backend.send(QueueMessage("teams-activities", "a1", b"{}", session_id="conv-1"))
            await backend.send(QueueMessage("slack-commands", "c1", b"{}"))
            [command] = await backend.receive("slack-commands")
            assert command.lock_token is not None
            await backend.dead_letter(command.lock_token, "HandlerError", "boom")
            lease = await backend.accept_next_session("slack-events")
            assert lease is not None and await backend.receive_from_session(lease) is not None

    asyncio.run(fill())
    proc = queue_cmd("stats", "--path", str(path), cwd=tmp_path)
    expected = (
        "queue                  sessions  active  scheduled  locked  dead-lettered  total\n"
        "directline-activities  yes            0          0       0              0      0\n"
        "relaybus-replies       yes            0          0       0              0      0\n"
        "slack-answers          no             0          0       0              0      0\n"
        "slack-commands         no             0          0       0              1      1\n"
        "slack-events           yes            2          0       1              0      3\n"
        "slack-interactive      no             0          0       0              0      0\n"
        "teams-activities       yes            1          0       0              0      1\n"
        "teams-invokes          no             0          0       0              0      0\n"
    )
    assert proc.stdout == expected
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert "$ python -m worker queue stats\n" + expected + "```" in readme, "README's queue stats example is stale"


def test_python_m_localqueue_help_shows_the_commands_without_a_queue_word(tmp_path: Path) -> None:
    proc = run("--help", cwd=tmp_path, module="localqueue")
    assert proc.returncode == 0
    assert proc.stdout.startswith("usage: python -m localqueue {stats,peek,dump,deadletter} ")
    assert "localqueue queue" not in proc.stdout
    for command in ("stats", "peek", "dump", "deadletter", "--path", "exit codes"):
        assert command in proc.stdout
    sub = run("deadletter", "--help", cwd=tmp_path, module="localqueue")
    assert sub.stdout.startswith("usage: python -m localqueue deadletter ")
    worker = run("queue", "--help", cwd=tmp_path)
    assert worker.stdout.startswith("usage: python -m worker queue ")
    bare = run(cwd=tmp_path, module="localqueue")
    assert bare.returncode == 2 and "{stats,peek,dump,deadletter}" in bare.stderr


# -- hostile contents -----------------------------------------------------------------------------------


def dump_lines(path: Path) -> list[dict[str, object]]:
    """`python -m localqueue dump` in-process, writing UTF-8 like a real stdout (not a StringIO)."""
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="utf-8", write_through=True)
    real = sys.stdout
    sys.stdout = out
    try:
        code = main(["dump", "--path", str(path)])
    finally:
        sys.stdout = real
    assert code == 0
    return [json.loads(line) for line in raw.getvalue().decode("utf-8").splitlines()]


def _reject(constant: str) -> object:
    raise ValueError(constant)


def expected_body(body: bytes) -> object:
    """Strict JSON that prints back as UTF-8 as JSON, anything else as text with \\xNN for bad bytes."""
    try:
        value = json.loads(body, parse_constant=_reject)
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError):
        return body.decode("utf-8", errors="backslashreplace")
    return value


DEEP = b"[" * 50_000 + b"]" * 50_000
HOSTILE_BODIES: list[tuple[bytes, object]] = [
    (b"not json \xff\xfe", "not json \\xff\\xfe"),
    (b"\x00\x01\x02", "\x00\x01\x02"),
    (b"NaN", "NaN"),  # Python's json reads it, JSON does not: `NaN` in the output is not a JSON line
    (b"[Infinity, -Infinity]", "[Infinity, -Infinity]"),
    (b'"\\ud800"', '"\\ud800"'),  # a lone surrogate: cannot be written as UTF-8
    (DEEP, DEEP.decode()),  # deeper than the recursion limit
    (b"1" * 5000, "1" * 5000),  # an integer over Python's digit limit
    (b"\xef\xbb\xbf{}", {}),  # a BOM, then JSON
    (b"", ""),
    ('"a\u2028b\u0085"'.encode(), "a\u2028b\u0085"),  # line separators inside JSON: still one line
    ("x\u2029y".encode(), "x\u2029y"),
    (b'{"fine": [1, "\xc3\xa9"]}', {"fine": [1, "\u00e9"]}),
]


@pytest.mark.parametrize(("body", "shown"), HOSTILE_BODIES, ids=lambda b: repr(b)[:16])
def test_hostile_bodies_are_dumped_as_text_or_json(tmp_path: Path, body: bytes, shown: object) -> None:
    path = tmp_path / "q.db"
    with LocalQueueStore(path, test_queues()) as store:
        store.send(message("m", body=body))
    [record] = dump_lines(path)
    assert record["body"] == shown


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    bodies=st.lists(
        st.one_of(
            st.binary(max_size=64),
            st.text(max_size=32).map(lambda t: t.encode("utf-8", errors="surrogatepass")),
            st.recursive(
                st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
                lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                max_leaves=8,
            ).map(lambda v: json.dumps(v).encode()),
        ),
        min_size=1,
        max_size=4,
    ),
    properties=st.dictionaries(
        st.text(st.characters(codec="utf-8"), max_size=8),
        st.text(st.characters(codec="utf-8"), max_size=8),
        max_size=3,
    ),
)
def test_dump_never_crashes_on_any_body(
    tmp_path_factory: pytest.TempPathFactory, bodies: list[bytes], properties: dict[str, str]
) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "q.db"
    with LocalQueueStore(path, test_queues()) as store:
        for i, body in enumerate(bodies):
            store.send(message(f"m{i}", body=body, properties=properties))
    records = dump_lines(path)
    assert [r["body"] for r in records] == [expected_body(b) for b in bodies]
    assert all(r["application_properties"] == (properties or {"kind": "test"}) for r in records)


def test_rows_another_tool_wrote_are_shown_not_crashed_on(tmp_path: Path) -> None:
    """A TEXT body and properties that are not a JSON object (written with sqlite3, not relaybus)."""
    path = tmp_path / "q.db"
    with LocalQueueStore(path, test_queues()) as store:
        store.send(message("ok"))
    conn = sqlite3.connect(path)
    insert = (
        "INSERT INTO messages(queue, message_id, properties, body, enqueued_at, visible_at) "
        "VALUES ('plain', ?, ?, ?, 0, 0)"
    )
    conn.execute(insert, ("text-body", "{}", "just text"))
    conn.execute(insert, ("bad-properties", "not json", b"{}"))
    conn.execute(insert, ("list-properties", "[1, 2]", b"{}"))
    conn.execute(insert, ("number-properties", '{"n": 1}', b"{}"))
    conn.commit()
    conn.close()
    proc = queue_cmd("dump", "--path", str(path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    records = {r["message_id"]: r for r in map(json.loads, proc.stdout.splitlines())}
    assert records["text-body"]["body"] == "just text"
    assert records["bad-properties"]["application_properties"] == {}
    assert records["list-properties"]["application_properties"] == {}
    assert records["number-properties"]["application_properties"] == {"n": "1"}
    assert "application properties are not a JSON object" in proc.stderr  # said, not silent
    assert "Traceback" not in proc.stderr
