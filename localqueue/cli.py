"""`python -m localqueue …` (also `python -m worker queue …`): inspect the local queue file, also while it is in use.

    queue stats [--json]                                  counts per queue
    queue peek [QUEUE] [-n N]                             the next N messages (no lock taken), JSON lines
    queue dump [QUEUE]                                    every message not dead-lettered, JSON lines
    queue deadletter list [QUEUE]                         dead-lettered messages with reason, JSON lines
    queue deadletter resubmit [QUEUE] (--message-id ID | --all)

`--path` (before or after the subcommand) picks the file; the default is RELAYBUS_LOCAL_QUEUE_PATH
(environment or `.env`), else whichever of `.relaybus/queue.db` (`python -m worker run`) and
`.relaybus/dev-queue.db` (`make dev`) exists (the newer one when both do, said on stderr). A file that
is not a relaybus queue (empty, another SQLite database, not SQLite) is refused and left unchanged.
Exit codes: 0 ok, 1 no queue file, not a queue, or a command failed, 2 usage error (including an unknown
queue name).

JSON lines hold message_id, session_id, application_properties, delivery_count, enqueued_at and the
body (as JSON when it parses, else as text), plus queue, sequence_number and state.
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

from localqueue.store import LocalQueueError, LocalQueueStore, NotAQueueError, StoredMessage, StoreMissingError
from shared.config import environment

DEFAULT_PATH = Path(".relaybus/queue.db")
DEV_PATH = Path(".relaybus/dev-queue.db")
DEFAULT_CANDIDATES = (DEFAULT_PATH, DEV_PATH)
PATH_SETTING = "RELAYBUS_LOCAL_QUEUE_PATH"


def add_queue_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `queue` on an argparse subparsers object (the `python -m worker` CLI)."""
    path_option = argparse.ArgumentParser(add_help=False)
    path_option.add_argument(
        "--path", type=Path, default=argparse.SUPPRESS, help=f"queue file (default ${PATH_SETTING} or {DEFAULT_PATH})"
    )
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "queue", help="inspect the local queue: stats, peek, dump, deadletter list|resubmit"
    )
    parser.add_argument(
        "--path", type=Path, default=None, help=f"queue file (default ${PATH_SETTING} or {DEFAULT_PATH})"
    )
    actions = parser.add_subparsers(dest="queue_command", required=True, metavar="{stats,peek,dump,deadletter}")

    stats = actions.add_parser("stats", parents=[path_option], help="message counts per queue")
    stats.add_argument("--json", action="store_true", help="one JSON object per queue")

    peek = actions.add_parser("peek", parents=[path_option], help="the next messages, without locking them")
    peek.add_argument("queue", nargs="?", help="queue name (default: every queue)")
    peek.add_argument("-n", type=_positive_int, default=10, help="how many per queue (default 10)")

    dump = actions.add_parser("dump", parents=[path_option], help="every message not dead-lettered, JSON lines")
    dump.add_argument("queue", nargs="?", help="queue name (default: every queue)")

    dead = actions.add_parser("deadletter", help="the dead-letter sub-queues")
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

    parser.set_defaults(func=run_queue_command)
    return parser


def run_queue_command(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run a parsed `queue` command; returns the exit code."""
    stdout = out or sys.stdout
    stderr = err or sys.stderr
    path = resolve_path(args)
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
        existing.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        others = ", ".join(str(p) for p in existing[1:])
        print(f"relaybus queue: reading {existing[0]} (the newest; also {others}: choose with --path)", file=err)
    return existing[0]


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
    if message.locked_until is not None:
        record["locked_until"] = _iso(message.locked_until)
    if message.dead_letter_reason is not None or message.dead_lettered_at is not None:
        record["dead_letter_reason"] = message.dead_letter_reason
        record["dead_letter_description"] = message.dead_letter_description
        record["dead_lettered_at"] = None if message.dead_lettered_at is None else _iso(message.dead_lettered_at)
    record["body"] = _body(message.body)
    return record


def _body(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return body.decode("utf-8", errors="backslashreplace")


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def _lines(out: TextIO, records: Iterable[dict[str, Any]]) -> None:
    for record in records:
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
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
    header = ("queue", "sessions", "active", "scheduled", "locked", "dead-lettered", "total")
    table = [header] + [
        (
            s.queue,
            f"yes ({s.sessions_locked} held)" if s.sessions else "no",
            str(s.active),
            str(s.scheduled),
            str(s.locked),
            str(s.dead_lettered),
            str(s.total),
        )
        for s in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        out.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() + "\n")
    out.flush()


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m localqueue …` (the same commands as `python -m worker queue …`, without the `queue` word)."""
    parser = argparse.ArgumentParser(prog="python -m localqueue")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_queue_parser(subparsers)
    args = parser.parse_args(["queue", *(sys.argv[1:] if argv is None else argv)])
    return run_queue_command(args)


if __name__ == "__main__":
    sys.exit(main())
