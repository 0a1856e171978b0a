"""The command line: `python -m worker {run,dev,queue,infra,settings}`.

    run       the worker alone: hold the configured platform sockets, publish to the configured backend
    dev       everything on this machine: worker, local queue, local functions host, and sandbox Slack
              and Teams for every platform without real credentials; live progress, summary at the end
    queue     inspect the local queue: stats, peek, dump, deadletter list|resubmit
    infra     generate or check infra/queues.json and the Service Bus emulator Config.json
    settings  validate the settings and print them (secrets masked)

Exit codes: 0 ok, 1 a connector stopped on a final error (or a command failed), 2 bad settings or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from shared.errors import ConfigurationError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m worker", description="relaybus worker")
    parser.add_argument("--env-file", type=Path, default=Path(".env"), help="optional KEY=VALUE file (default .env)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,dev,queue,infra,settings}")

    sub.add_parser("run", help="run the worker with the configured platforms and queue backend")

    dev = sub.add_parser("dev", help="run everything locally: worker, local queue, functions host, sandboxes")
    dev.add_argument("--once", action="store_true", help="exit after the scripted demo instead of waiting for Ctrl-C")
    dev.add_argument("--messages", type=int, default=3, help="scripted user messages per platform (default 3)")
    dev.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the demo to complete (--once)")
    dev.add_argument("--queue-path", type=Path, default=None, help="local queue file (default .relaybus/dev-queue.db)")
    dev.add_argument("--no-slack", action="store_true", help="leave Slack out")
    dev.add_argument("--no-teams", action="store_true", help="leave Teams out")
    dev.add_argument("--quiet", action="store_true", help="no live progress line")

    sub.add_parser("settings", help="validate the settings and print them with secrets masked")

    try:
        from worker.queue_cli import add_queue_parser
    except ImportError:  # pragma: no cover - only while the module is being written
        pass
    else:
        add_queue_parser(sub)
    try:
        from worker.infra_cli import add_infra_parser
    except ImportError:  # pragma: no cover
        pass
    else:
        add_infra_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "dev":
            from worker.dev import run_dev

            return run_dev(args)
        if args.command == "settings":
            return _settings(args)
        if args.command == "queue":
            from worker.queue_cli import run_queue_command

            return run_queue_command(args)
        if args.command == "infra":
            from worker.infra_cli import run_infra_command

            return run_infra_command(args)
    except ConfigurationError as exc:
        print(f"relaybus: {exc}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command}")
    return 2  # pragma: no cover


def _settings(args: argparse.Namespace) -> int:
    from worker.settings import environment, load_settings

    settings = load_settings(environment(dotenv=args.env_file))
    print(json.dumps(settings.model_dump(mode="json", by_alias=True), indent=2, default=str))
    return 0


def _run(args: argparse.Namespace) -> int:
    from worker import logs
    from worker.runtime import Worker
    from worker.settings import environment, load_settings

    settings = load_settings(environment(dotenv=args.env_file))
    if not settings.platforms:
        raise ConfigurationError(
            "SLACK_APP_TOKEN / TEAMS_APP_ID",
            "no platform is configured: set SLACK_APP_TOKEN (Slack Socket Mode) and/or TEAMS_APP_ID (Teams socket "
            "mode); for a local demo without credentials run `python -m worker dev`",
        )
    logs.configure(settings.log_level)
    worker = Worker(settings)

    async def main_async() -> int:
        stopping = asyncio.Event()
        install_signal_handlers(stopping)
        result = await worker.run(stopping)
        for platform, message in result.fatal.items():
            print(f"relaybus: {platform} stopped: {message}", file=sys.stderr)
        return 0 if result.ok else 1

    return asyncio.run(main_async())


def install_signal_handlers(stopping: asyncio.Event) -> None:
    """SIGTERM and SIGINT start a graceful drain; a second Ctrl-C exits at once."""
    loop = asyncio.get_running_loop()

    def stop() -> None:
        if stopping.is_set():
            raise SystemExit(130)
        stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
