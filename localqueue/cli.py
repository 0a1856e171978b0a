"""`python -m localqueue …` (also `python -m worker queue …`): inspect the local queue file, also while it is in use.

    stats [--json]                                  counts per queue: a table, or one JSON object per line
    peek [QUEUE] [-n N]                             the next N messages per queue (no lock taken), JSON lines
    dump [QUEUE]                                    every message not dead-lettered, JSON lines
    deadletter list [QUEUE]                         dead-lettered messages with reason, JSON lines
    deadletter resubmit [QUEUE] (--message-id ID | --all)

`--path` (before or after the subcommand) picks the file; the default is RELAYBUS_LOCAL_QUEUE_PATH
(environment or `.env`, or `--env-file`), else whichever of `.relaybus/queue.db` (`python -m worker run`)
and `.relaybus/dev-queue.db` (`make dev`) exists (the newer one when both do, said on stderr). A file that
is not a relaybus queue (a directory, an empty file, another SQLite database, not SQLite) is refused and
left unchanged. Exit codes: 0 ok, 1 no queue file, not a queue, or a command failed, 2 usage error
(including an unknown queue name and an unreadable `.env`).

`stats` prints a table, columns separated by two spaces, numbers right-aligned, one row per queue in
name order; every cell is one word (`sessions` is `yes` or `no`), so `awk` can pick columns:

    queue              sessions  active  scheduled  locked  dead-lettered  total
    slack-commands     no             0          0       0              1      1
    slack-events       yes            2          0       1              0      3

`stats --json` prints one object per queue: queue, sessions (bool), active, scheduled, locked,
dead_lettered, total, sessions_locked (sessions held by a consumer now).

JSON lines hold message_id, session_id, application_properties, delivery_count, enqueued_at and the
body (as JSON when it is strict JSON, else as text: invalid UTF-8 bytes as `\\xNN`), plus queue,
sequence_number and state, one record per line whatever the data (U+2028, U+2029 and U+0085 escaped);
and when they are set: correlation_id, reply_to, reply_to_session_id (request/reply), time_to_live
(seconds) with expires_at, scheduled_enqueue_time (what the sender asked for) and scheduled_for (when
the message becomes available).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from localqueue.store import (
    LocalQueueError,
    LocalQueueStore,
    NotAQueueError,
    QueueStats,
    StoredMessage,
    StoreMissingError,
)
from shared.config import environment
from shared.errors import ConfigurationError
from shared.redact import redact

DEFAULT_PATH = Path(".relaybus/queue.db")
DEV_PATH = Path(".relaybus/dev-queue.db")
DEFAULT_CANDIDATES = (DEFAULT_PATH, DEV_PATH)
PATH_SETTING = "RELAYBUS_LOCAL_QUEUE_PATH"
COMMANDS = "{stats,peek,dump,deadletter}"
_DESCRIPTION = "Inspect relaybus' local queue file (also while the worker or `make dev` uses it)."
_EPILOG = f"""\
the file: --path, else ${PATH_SETTING} (environment or .env),
else whichever of {DEFAULT_PATH} (python -m worker run) and {DEV_PATH}
(make dev) exists, the newer one when both do. A file that is not a relaybus queue
is refused and left unchanged.

exit codes: 0 ok, 1 no queue file, not a queue or the command failed, 2 usage error"""


def add_queue_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `queue` on an argparse subparsers object (the `python -m worker` CLI)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "queue",
        help="inspect the local queue: stats, peek, dump, deadletter list|resubmit",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_queue_commands(parser)
    parser.set_defaults(func=run_queue_command)
    return parser


def add_queue_commands(parser: argparse.ArgumentParser) -> None:
    """Add `--path` and the stats, peek, dump and deadletter commands to `parser`."""
    path_help = f"queue file (default ${PATH_SETTING}, else {DEFAULT_PATH} or {DEV_PATH}, whichever exists)"
    path_option = argparse.ArgumentParser(add_help=False)
    path_option.add_argument("--path", type=Path, default=argparse.SUPPRESS, metavar="FILE", help=path_help)
    parser.add_argument("--path", type=Path, default=None, metavar="FILE", help=path_help)
    actions = parser.add_subparsers(
        dest="queue_command", required=True, metavar=COMMANDS, prog=parser.prog, title="commands"
    )

    stats = actions.add_parser("stats", parents=[path_option], help="message counts per queue (a table)")
    stats.add_argument("--json", action="store_true", help="one JSON object per queue instead of the table")

    peek = actions.add_parser("peek", parents=[path_option], help="the next messages, without locking them")
    peek.add_argument("queue", nargs="?", help="queue name (default: every queue)")
    peek.add_argument("-n", type=_positive_int, default=10, help="how many per queue (default 10)")

    dump = actions.add_parser("dump", parents=[path_option], help="every message not dead-lettered, JSON lines")
    dump.add_argument("queue", nargs="?", help="queue name (default: every queue)")

    dead = actions.add_parser("deadletter", help="the dead-letter sub-queues: list, resubmit")
    dead_actions = dead.add_subparsers(dest="deadletter_command", required=True, metavar="{list,resubmit}")
    dead_list = dead_actions.add_parser("list", parents=[path_option], help="dead-lettered messages, JSON lines")
    dead_list.add_argument("queue", nargs="?", help="queue name (default: every queue)")
    resubmit = dead_actions.add_parser(
        "resubmit", parents=[path_option], help="move dead-lettered messages back to their queue"
    )
    resubmit.add_argument("queue", nargs="?", help="queue name (default: every queue)")
    which = resubmit.add_mutually_exclusive_group(required=True)
    which.add_argument("--message-id", help="resubmit the message with this MessageId")
    which.add_argument("--all", action="store_true", help="resubmit every dead-lettered message")


def run_queue_command(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run a parsed `queue` command; returns the exit code."""
    stdout = out or sys.stdout
    stderr = err or sys.stderr
    try:
        path = resolve_path(args, stderr)
    except ConfigurationError as exc:  # an unreadable .env
        print(f"relaybus queue: {redact(str(exc))}", file=stderr)
        return 2
    try:
        with LocalQueueStore(path, create=False) as store:
            queue = getattr(args, "queue", None)
            if queue is not None and queue not in store.queue_names():
                known = ", ".join(store.queue_names()) or "none"
                print(f"relaybus queue: no queue named {queue!r} in {path} (queues: {known})", file=stderr)
                return 2
            return _dispatch(args, store, queue, stdout, stderr)
    except StoreMissingError:
        print(
            f"relaybus queue: no local queue at {path}: start `make dev` (or `python -m worker run` with the local "
            f"backend), or point --path / {PATH_SETTING} at the file",
            file=stderr,
        )
        return 1
    except NotAQueueError as exc:
        print(f"relaybus queue: {exc}", file=stderr)
        return 1
    except (LocalQueueError, sqlite3.Error) as exc:
        print(f"relaybus queue: {path}: {exc}", file=stderr)
        return 1
    except BrokenPipeError:  # `dump | head`
        _silence_stdout()
        return 0


def resolve_path(args: argparse.Namespace, err: TextIO | None = None) -> Path:
    """--path, else RELAYBUS_LOCAL_QUEUE_PATH (environment or --env-file), else the default file that exists."""
    given = getattr(args, "path", None)
    if given is not None:
        return Path(given)
    env_file = getattr(args, "env_file", None)
    env = environment(dotenv=Path(env_file) if env_file is not None else None)
    if env.get(PATH_SETTING):
        return Path(env[PATH_SETTING])
    existing = [p for p in DEFAULT_CANDIDATES if p.is_file()]
    if not existing:
        return DEFAULT_PATH
    if len(existing) > 1:
        existing.sort(key=_last_written, reverse=True)
        others = ", ".join(str(p) for p in existing[1:])
        print(f"relaybus queue: reading {existing[0]} (the newest; also {others}: choose with --path)", file=err)
    return existing[0]


def _last_written(path: Path) -> float:
    """When the queue last changed: in WAL mode a commit touches `-wal`, the main file only at checkpoints."""
    times = [path.stat().st_mtime]
    wal = Path(f"{path}-wal")
    if wal.is_file():
        times.append(wal.stat().st_mtime)
    return max(times)


def _dispatch(args: argparse.Namespace, store: LocalQueueStore, queue: str | None, out: TextIO, err: TextIO) -> int:
    command = args.queue_command
    if command == "stats":
        _stats(store, out, as_json=args.json)
    elif command == "peek":
        for name in [queue] if queue else store.queue_names():
            _lines(out, (describe(m) for m in store.peek(name, args.n)))
    elif command == "dump":
        _lines(out, (describe(m) for m in store.messages(queue)))
    elif command == "deadletter" and args.deadletter_command == "list":
        _lines(out, (describe(m) for m in store.dead_letters(queue)))
    elif command == "deadletter" and args.deadletter_command == "resubmit":
        moved = store.resubmit(queue, None if args.all else args.message_id)
        if moved == 0 and not args.all:
            where = f" in {queue}" if queue else ""
            print(f"relaybus queue: no dead-lettered message {args.message_id!r}{where}", file=err)
            return 1
        print(f"resubmitted {moved} message{'s' if moved != 1 else ''}", file=out)
    else:  # pragma: no cover - argparse only lets the commands above through
        print(f"relaybus queue: unknown command {command}", file=err)
        return 2
    return 0


def describe(message: StoredMessage) -> dict[str, Any]:
    """A message as one JSON-able object (the CLI's JSON lines)."""
    record: dict[str, Any] = {
        "queue": message.queue,
        "sequence_number": message.sequence_number,
        "message_id": message.message_id,
        "session_id": message.session_id,
        "application_properties": message.application_properties,
        "delivery_count": message.delivery_count,
        "enqueued_at": _iso(message.enqueued_at),
        "state": message.state.name.lower(),
    }
    if message.available_at > message.enqueued_at:
        record["scheduled_for"] = _iso(message.available_at)
    for key in ("correlation_id", "reply_to", "reply_to_session_id", "time_to_live"):
        value = getattr(message, key)
        if value is not None:
            record[key] = value
    if message.expires_at is not None:
        record["expires_at"] = _iso(message.expires_at)
    if message.scheduled_at is not None:
        record["scheduled_enqueue_time"] = _iso(message.scheduled_at)
    if message.locked_until is not None:
        record["locked_until"] = _iso(message.locked_until)
    if message.dead_letter_reason is not None or message.dead_lettered_at is not None:
        record["dead_letter_reason"] = message.dead_letter_reason
        record["dead_letter_description"] = message.dead_letter_description
        record["dead_lettered_at"] = None if message.dead_lettered_at is None else _iso(message.dead_lettered_at)
    record["body"] = _body(message.body)
    return record


def _body(body: bytes) -> Any:
    """The body as JSON when it is strict JSON that prints back as UTF-8, else as text (bad bytes as \\xNN)."""
    try:
        value = json.loads(body, parse_constant=_not_json)
        json.dumps(value, ensure_ascii=False).encode("utf-8")  # too deep, or lone surrogates: show as text
    except (ValueError, RecursionError):  # UnicodeError is a ValueError
        return body.decode("utf-8", errors="backslashreplace")
    return value


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


_LINE_BREAKS = str.maketrans({"\u0085": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})
"""Characters `str.splitlines()` (and some editors) break lines at that JSON leaves raw: escaped."""


def _lines(out: TextIO, records: Iterable[dict[str, Any]]) -> None:
    """One JSON object per line; whatever the data, each record is exactly one line."""
    for record in records:
        try:
            out.write(json.dumps(record, ensure_ascii=False).translate(_LINE_BREAKS) + "\n")
        except UnicodeEncodeError:  # an output encoding that is not UTF-8: escape instead
            out.write(json.dumps(record) + "\n")
    out.flush()


def _stats(store: LocalQueueStore, out: TextIO, *, as_json: bool) -> None:
    rows = store.stats()
    if as_json:
        _lines(
            out,
            (
                {
                    "queue": s.queue,
                    "sessions": s.sessions,
                    "active": s.active,
                    "scheduled": s.scheduled,
                    "locked": s.locked,
                    "dead_lettered": s.dead_lettered,
                    "total": s.total,
                    "sessions_locked": s.sessions_locked,
                }
                for s in rows
            ),
        )
        return
    out.write(format_stats(rows))
    out.flush()


STATS_HEADER = ("queue", "sessions", "active", "scheduled", "locked", "dead-lettered", "total")


def format_stats(rows: Sequence[QueueStats]) -> str:
    """The `stats` table: a header and one row per queue, two spaces apart, numbers right-aligned."""
    table = [STATS_HEADER] + [
        (
            s.queue,
            "yes" if s.sessions else "no",
            str(s.active),
            str(s.scheduled),
            str(s.locked),
            str(s.dead_lettered),
            str(s.total),
        )
        for s in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(STATS_HEADER))]
    lines = []
    for row in table:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [cell.rjust(width) for cell, width in zip(row[2:], widths[2:], strict=True)]
        lines.append("  ".join(cells).rstrip() + "\n")
    return "".join(lines)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m localqueue …`: the same commands as `python -m worker queue …`."""
    parser = argparse.ArgumentParser(
        prog="python -m localqueue",
        usage=f"%(prog)s {COMMANDS} ... [--path FILE] [--env-file FILE]",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--env-file", type=Path, default=Path(".env"), metavar="FILE", help="optional KEY=VALUE file (default .env)"
    )
    add_queue_commands(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return run_queue_command(args)


if __name__ == "__main__":
    sys.exit(main())
