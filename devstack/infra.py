"""`python -m devstack infra generate|check`: files rendered from the route table (`shared.routes.ROUTES`).

Two files are generated so that the deployed queues and the local emulator's queues cannot drift from
the route table:

- `infra/queues.json`: the queue list `infra/main.bicep` reads with `loadJsonContent('queues.json')`
  (one Service Bus queue, one function-app setting and one Flex Consumption function per route), and
  `replyQueue`, the session-enabled queue of synchronous answers (`shared.routes.REPLIES`: short TTL,
  expired answers deleted rather than dead-lettered, no duplicate detection; the function app may only
  send to it, the worker may only receive from it);
- `infra/emulator/Config.json`: the Service Bus emulator's entity file (its documented `UserConfig`
  schema), mounted by `docker-compose.yml`: the route queues, then the reply queue.

The emulator accepts narrower ranges than Azure (duplicate detection at most 5 minutes, message TTL at
most 1 hour, lock 5 s to 5 min, max delivery count at most 10). Values outside them are clamped in
`Config.json` only, and `generate` says which ones; Azure gets the route table's values unchanged.

Rendering is pure (`render_files`); `generate_files` writes, `check_files` compares (CI runs `check`,
tests assert the committed files equal a fresh render).
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TextIO

from shared.routes import REPLIES, ROUTES, ReplyQueue, Route, RouteTable

REPO_ROOT = Path(__file__).resolve().parents[1]
QUEUES_JSON = Path("infra/queues.json")
EMULATOR_CONFIG = Path("infra/emulator/Config.json")

DEFAULT_MESSAGE_TTL = timedelta(days=14)
"""Time to live of queued envelopes in Azure; expired messages are dead-lettered, not dropped."""

EMULATOR_NAMESPACE = "sbemulatorns"
"""The only namespace name the emulator accepts."""


@dataclass(frozen=True, slots=True)
class EmulatorLimits:
    """The ranges the Service Bus emulator's Config.json schema accepts (narrower than Azure's)."""

    max_duplicate_detection_window: timedelta = timedelta(minutes=5)
    min_duplicate_detection_window: timedelta = timedelta(seconds=5)
    max_message_ttl: timedelta = timedelta(hours=1)
    min_lock_duration: timedelta = timedelta(seconds=5)
    max_lock_duration: timedelta = timedelta(minutes=5)
    max_delivery_count: int = 10


EMULATOR_LIMITS = EmulatorLimits()


def iso_duration(value: timedelta) -> str:
    """An ISO 8601 duration as Service Bus writes them: `PT30S`, `PT1M`, `PT10M`, `PT1H`, `P14D`."""
    total = int(value.total_seconds())
    if total <= 0 or total != value.total_seconds():
        raise ValueError(f"duration must be a positive whole number of seconds, got {value!r}")
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, seconds = divmod(rest, 60)
    out = "P" + (f"{days}D" if days else "")
    time = (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "") + (f"{seconds}S" if seconds else "")
    return out + ("T" + time if time else "")


def queue_entry(route: Route, ttl: timedelta = DEFAULT_MESSAGE_TTL) -> dict[str, Any]:
    """One element of `queues.json`: what Bicep needs to create the queue and wire the function app."""
    return {
        "name": route.queue,
        "function": route.name,
        "appSetting": route.setting,
        "platform": route.platform.value,
        "requiresSession": route.sessions,
        "maxDeliveryCount": route.max_delivery_count,
        "lockDuration": iso_duration(route.lock_duration),
        "requiresDuplicateDetection": True,
        "duplicateDetectionHistoryTimeWindow": iso_duration(route.duplicate_detection_window),
        "deadLetteringOnMessageExpiration": True,
        "defaultMessageTimeToLive": iso_duration(ttl),
        "description": route.description,
    }


def reply_queue_entry(replies: ReplyQueue = REPLIES) -> dict[str, Any]:
    """`queues.json`'s `replyQueue`: what Bicep needs to create the reply queue and tell the worker its name."""
    return {
        "name": replies.queue,
        "appSetting": replies.setting,
        "requiresSession": True,
        "maxDeliveryCount": replies.max_delivery_count,
        "lockDuration": iso_duration(replies.lock_duration),
        "requiresDuplicateDetection": False,
        "deadLetteringOnMessageExpiration": False,
        "defaultMessageTimeToLive": iso_duration(replies.time_to_live),
        "description": "Synchronous answers from the functions to the worker process waiting for them "
        "(one session per worker process; unclaimed answers expire)",
    }


def render_queues(routes: RouteTable = ROUTES, replies: ReplyQueue = REPLIES) -> dict[str, Any]:
    return {
        "$comment": "Generated from shared/routes.py by `python -m devstack infra generate`; do not edit.",
        "queues": [queue_entry(route) for route in routes],
        "replyQueue": reply_queue_entry(replies),
    }


def _clamp(value: timedelta, low: timedelta, high: timedelta) -> timedelta:
    return min(max(value, low), high)


def emulator_queue(route: Route, limits: EmulatorLimits = EMULATOR_LIMITS) -> dict[str, Any]:
    """One queue of the emulator's Config.json, with the route's settings clamped to the emulator's ranges."""
    window = _clamp(
        route.duplicate_detection_window, limits.min_duplicate_detection_window, limits.max_duplicate_detection_window
    )
    return {
        "Name": route.queue,
        "Properties": {
            "DeadLetteringOnMessageExpiration": True,
            "DefaultMessageTimeToLive": iso_duration(min(DEFAULT_MESSAGE_TTL, limits.max_message_ttl)),
            "DuplicateDetectionHistoryTimeWindow": iso_duration(window),
            "ForwardDeadLetteredMessagesTo": "",
            "ForwardTo": "",
            "LockDuration": iso_duration(
                _clamp(route.lock_duration, limits.min_lock_duration, limits.max_lock_duration)
            ),
            "MaxDeliveryCount": min(route.max_delivery_count, limits.max_delivery_count),
            "RequiresDuplicateDetection": True,
            "RequiresSession": route.sessions,
        },
    }


def emulator_reply_queue(replies: ReplyQueue = REPLIES, limits: EmulatorLimits = EMULATOR_LIMITS) -> dict[str, Any]:
    """The reply queue in the emulator's Config.json (the emulator wants every property, even unused ones)."""
    return {
        "Name": replies.queue,
        "Properties": {
            "DeadLetteringOnMessageExpiration": False,
            "DefaultMessageTimeToLive": iso_duration(min(replies.time_to_live, limits.max_message_ttl)),
            "DuplicateDetectionHistoryTimeWindow": iso_duration(
                _clamp(
                    replies.time_to_live,
                    limits.min_duplicate_detection_window,
                    limits.max_duplicate_detection_window,
                )
            ),
            "ForwardDeadLetteredMessagesTo": "",
            "ForwardTo": "",
            "LockDuration": iso_duration(
                _clamp(replies.lock_duration, limits.min_lock_duration, limits.max_lock_duration)
            ),
            "MaxDeliveryCount": min(replies.max_delivery_count, limits.max_delivery_count),
            "RequiresDuplicateDetection": False,
            "RequiresSession": True,
        },
    }


def render_emulator_config(routes: RouteTable = ROUTES, replies: ReplyQueue = REPLIES) -> dict[str, Any]:
    return {
        "UserConfig": {
            "Namespaces": [
                {
                    "Name": EMULATOR_NAMESPACE,
                    "Queues": [*(emulator_queue(route) for route in routes), emulator_reply_queue(replies)],
                    "Topics": [],
                }
            ],
            "Logging": {"Type": "Console"},
        }
    }


def emulator_adjustments(routes: RouteTable = ROUTES, limits: EmulatorLimits = EMULATOR_LIMITS) -> list[str]:
    """Readable notes for every route setting the emulator cannot hold as is."""
    notes: list[str] = []
    for route in routes:
        props = emulator_queue(route, limits)["Properties"]
        window = iso_duration(route.duplicate_detection_window)
        if props["DuplicateDetectionHistoryTimeWindow"] != window:
            notes.append(
                f"{route.queue}: duplicate detection window {window} is "
                f"{props['DuplicateDetectionHistoryTimeWindow']} in the emulator (its limit)"
            )
        lock = iso_duration(route.lock_duration)
        if props["LockDuration"] != lock:
            notes.append(f"{route.queue}: lock duration {lock} is {props['LockDuration']} in the emulator")
        if props["MaxDeliveryCount"] != route.max_delivery_count:
            notes.append(
                f"{route.queue}: max delivery count {route.max_delivery_count} is "
                f"{props['MaxDeliveryCount']} in the emulator"
            )
    return notes


def _dump(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def render_files(routes: RouteTable = ROUTES) -> dict[Path, str]:
    """Every generated file, keyed by its path relative to the repository root."""
    return {QUEUES_JSON: _dump(render_queues(routes)), EMULATOR_CONFIG: _dump(render_emulator_config(routes))}


def generate_files(root: Path = REPO_ROOT, routes: RouteTable = ROUTES) -> list[Path]:
    """Write the generated files that differ from a fresh render; return the paths written."""
    written: list[Path] = []
    for relative, text in render_files(routes).items():
        path = root / relative
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(relative)
    return written


def check_files(root: Path = REPO_ROOT, routes: RouteTable = ROUTES) -> list[str]:
    """One entry per generated file that is missing or stale, with a unified diff; empty when all match."""
    problems: list[str] = []
    for relative, expected in render_files(routes).items():
        path = root / relative
        if not path.is_file():
            problems.append(f"{relative}: missing (run `python -m devstack infra generate`)")
            continue
        actual = path.read_text(encoding="utf-8")
        if actual != expected:
            diff = difflib.unified_diff(
                actual.splitlines(keepends=True),
                expected.splitlines(keepends=True),
                fromfile=f"{relative} (committed)",
                tofile=f"{relative} (from the route table)",
            )
            problems.append(f"{relative}: differs from the route table\n{''.join(diff)}")
    return problems


def add_infra_parser(subparsers: Any) -> None:
    """Register `infra generate|check` on the dev stack CLI (dispatched to `run_infra_command`)."""
    infra = subparsers.add_parser("infra", help="generate or check infra/queues.json and the emulator Config.json")
    infra_sub = infra.add_subparsers(dest="infra_command", required=True, metavar="{generate,check}")
    for name, text in (
        ("generate", "write the files rendered from the route table"),
        ("check", "exit 1 listing the differences if a committed file is stale"),
    ):
        cmd = infra_sub.add_parser(name, help=text)
        cmd.add_argument("--root", type=Path, default=REPO_ROOT, help="repository root (default: this checkout)")


def run_infra_command(args: argparse.Namespace) -> int:
    root: Path = args.root
    if args.infra_command == "generate":
        written = generate_files(root)
        _print_lines(f"wrote {path}" for path in written)
        if not written:
            print("infra files are up to date")
        _print_lines(f"note: {note}" for note in emulator_adjustments())
        return 0
    problems = check_files(root)
    if problems:
        _print_lines(problems, file=sys.stderr)
        print("relaybus: run `python -m devstack infra generate` and commit the result", file=sys.stderr)
        return 1
    print("infra files match the route table")
    return 0


def _print_lines(lines: Iterable[str], file: TextIO | None = None) -> None:
    for line in lines:
        print(line, file=file or sys.stdout)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point: `python -m devstack.infra generate|check`."""
    parser = argparse.ArgumentParser(prog="python -m devstack.infra")
    sub = parser.add_subparsers(dest="command", required=True)
    add_infra_parser(sub)
    return run_infra_command(parser.parse_args(["infra", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    sys.exit(main())
