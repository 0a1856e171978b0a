"""The worker's command line: `python -m worker {run,settings,queue}` (what the container image runs).

    run       the worker alone: hold the configured platform sockets, publish to the configured backend
    settings  validate the settings and print them (secrets masked)
    queue     inspect the local queue (`localqueue.cli`): stats, peek, dump, deadletter list|resubmit

`dev` and `infra` belong to the dev stack (`python -m devstack dev|infra`), which is not in the image. In a
checkout, `python -m worker dev …` and `python -m worker infra …` are still accepted: they run the
dev stack's command in this process's place (exec), without importing it.

Exit codes: 0 ok, 1 a connector stopped on a final error (or a command failed), 2 bad settings or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from localqueue.cli import add_queue_parser, run_queue_command
from shared.errors import ConfigurationError
from shared.redact import redact

MOVED_TO_DEVSTACK = ("dev", "infra")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m worker",
        description="relaybus worker: holds the platform sockets, publishes every envelope durably, then acks",
        epilog="dev and infra moved to `python -m devstack` (the dev stack, not in the worker image); "
        "`python -m worker dev|infra …` still runs them from a checkout.",
    )
    parser.add_argument("--env-file", type=Path, default=Path(".env"), help="optional KEY=VALUE file (default .env)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,settings,queue}")
    sub.add_parser("run", help="run the worker with the configured platforms and queue backend")
    sub.add_parser("settings", help="validate the settings and print them with secrets masked")
    add_queue_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    moved = _moved_command(args_list)
    if moved is not None:
        return _run_devstack(args_list)
    parser = build_parser()
    args = parser.parse_args(args_list)
    try:
        if args.command == "run":
            return _exit_even_if_threads_linger(_run(args))
        if args.command == "settings":
            return _settings(args)
        if args.command == "queue":
            return run_queue_command(args)
    except ConfigurationError as exc:
        print(f"relaybus: {redact(str(exc))}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command}")
    return 2  # pragma: no cover


def _moved_command(argv: list[str]) -> str | None:
    """`dev` or `infra` when that is the command word (after any global options)."""
    skip = False
    for word in argv:
        if skip:
            skip = False
            continue
        if word == "--env-file":
            skip = True
            continue
        if word.startswith("-"):
            continue
        return word if word in MOVED_TO_DEVSTACK else None
    return None


def _run_devstack(argv: list[str]) -> int:
    """Hand the command to `python -m devstack` (same arguments), or say why it is not here."""
    if importlib.util.find_spec("devstack") is None:
        print(
            "relaybus: `dev` and `infra` are dev-stack commands (python -m devstack …); this installation (the "
            "worker image) does not include the dev stack: run them from a checkout of the repository",
            file=sys.stderr,
        )
        return 2
    command = [sys.executable, "-m", "devstack", *argv]
    if os.name == "posix":
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, command)  # noqa: S606 (our own interpreter and module)
    return subprocess.call(command)  # pragma: no cover - not POSIX


def _exit_even_if_threads_linger(code: int) -> int:
    """The drain and the queue's close are bounded; a disk thread stuck past them (a commit waiting on a
    lock another process holds) must not keep the process alive: exit now, output flushed."""
    if threading.active_count() > 1:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _settings(args: argparse.Namespace) -> int:
    from worker.settings import environment, load_settings

    settings = load_settings(environment(dotenv=args.env_file))
    print(redact(json.dumps(settings.model_dump(mode="json", by_alias=True), indent=2, default=str)))
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
            "mode); for a local demo without credentials run `python -m devstack dev` (or `make dev`)",
        )
    logs.configure(settings.log_level)
    worker = Worker(settings)

    async def main_async() -> int:
        stopping = asyncio.Event()
        install_signal_handlers(stopping)
        result = await worker.run(stopping)
        for platform, message in result.fatal.items():
            print(f"relaybus: {platform} stopped: {redact(message)}", file=sys.stderr)
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
