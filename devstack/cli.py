"""The dev stack's command line: `python -m devstack {dev,infra,queue}` (a checkout only, never an image).

    dev       everything on this machine: worker, local queue, local functions host, and sandbox Slack
              and Teams for every platform without real credentials; what the bot said, live
              connection states and counts, a summary at the end (see `devstack.dev`)
    infra     generate or check infra/queues.json and the Service Bus emulator Config.json
    queue     the local queue commands (the same as `python -m worker queue …`)

`python -m worker dev|infra …` (the spelling before the dev stack had a package of its own) runs these.
Exit codes: 0 ok, 1 a connector stopped on a final error (or a command failed), 2 bad settings or usage.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from devstack.infra import add_infra_parser, run_infra_command
from localqueue.cli import add_queue_parser, run_queue_command
from shared.errors import ConfigurationError
from shared.redact import redact


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m devstack", description="relaybus dev stack")
    parser.add_argument("--env-file", type=Path, default=Path(".env"), help="optional KEY=VALUE file (default .env)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{dev,infra,queue}")

    dev = sub.add_parser("dev", help="run everything locally: worker, local queue, functions host, sandboxes")
    dev.add_argument(
        "--once",
        action="store_true",
        help="stop by itself once the demo got its replies and every connection is Online (or failed); "
        "exit 0 only if the demo completed and every connection came Online",
    )
    dev.add_argument(
        "--messages",
        type=_count,
        default=7,
        help="scripted user interactions per sandbox (default 7: every kind of the Slack script once)",
    )
    dev.add_argument(
        "--timeout", type=_seconds, default=60.0, help="with --once: stop after this many seconds at most (default 60)"
    )
    dev.add_argument(
        "--queue-path",
        type=Path,
        default=None,
        help="local queue file (default .relaybus/dev-queue.db); dev.log goes beside it",
    )
    dev.add_argument("--no-slack", action="store_true", help="leave Slack out (sandbox and real)")
    dev.add_argument("--no-teams", action="store_true", help="leave Teams out (sandbox and real)")
    dev.add_argument(
        "--directline",
        action="store_true",
        help="bridge a Direct Line agent into Slack (the sandbox agent unless DIRECTLINE_SECRET is set; make dev does)",
    )
    dev.add_argument(
        "--quiet", action="store_true", help="no live progress line (banner, replies and summary are still printed)"
    )

    add_infra_parser(sub)
    add_queue_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "dev":
            from devstack.dev import run_dev

            return run_dev(args)
        if args.command == "infra":
            return run_infra_command(args)
        if args.command == "queue":
            return run_queue_command(args)
    except ConfigurationError as exc:
        print(f"relaybus: {redact(str(exc))}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command}")
    return 2  # pragma: no cover


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError("must be a number of seconds above 0")
    return value
