"""`python -m worker dev`: the whole system on one machine.

    sandbox Slack / Teams  ──sockets──►  worker (connectors → Handoff)  ──►  local queue (SQLite)
            ▲                                                                      │
            └──────────── replies (Web API / Bot Connector) ◄── local functions host (function_app.py)

For every platform without real credentials a sandbox server is started on loopback and the worker
and the functions are pointed at it. A few scripted user messages then travel the whole loop; the
terminal shows live progress and a summary at the end (`--once`) or on Ctrl-C. Logs go to
`.relaybus/dev.log`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

from worker import logs
from worker.settings import environment, load_settings

log = logging.getLogger(__name__)


class DemoPlatform(Protocol):
    """A platform in the dev stack: a sandbox (or a real platform) plus a scripted demo."""

    name: str
    sandbox: bool
    description: str

    def settings(self) -> dict[str, str]:
        """Settings for the worker and the function app that point at this platform."""
        ...

    async def send(self, index: int) -> None:
        """Send the index-th scripted user interaction."""
        ...

    def expected_replies(self, sent: int) -> int: ...

    def replies(self) -> int:
        """Replies the platform has received from the functions so far."""
        ...


@dataclass
class Progress:
    sent: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)


async def start_platforms(
    args: argparse.Namespace, env: Mapping[str, str], stack: contextlib.AsyncExitStack
) -> list[DemoPlatform]:
    platforms: list[DemoPlatform] = []
    if not args.no_slack:
        if env.get("SLACK_APP_TOKEN"):
            log.info("Slack: using the real platform (SLACK_APP_TOKEN is set)")
        else:
            from devstack.platforms import SlackDemo

            platforms.append(await SlackDemo.start(stack))
    if not args.no_teams:
        if env.get("TEAMS_APP_ID"):
            log.info("Teams: using the real platform (TEAMS_APP_ID is set)")
        else:
            from devstack.platforms import TeamsDemo

            platforms.append(await TeamsDemo.start(stack))
    return platforms


def run_dev(args: argparse.Namespace) -> int:
    return asyncio.run(_dev(args, sys.stdout))


async def _dev(args: argparse.Namespace, out: TextIO) -> int:
    from worker.cli import install_signal_handlers
    from worker.runtime import Worker

    env = environment(dotenv=args.env_file)
    queue_path = Path(args.queue_path or env.get("RELAYBUS_LOCAL_QUEUE_PATH") or ".relaybus/dev-queue.db")
    queue_path.parent.mkdir(parents=True, exist_ok=True)
    log_path = queue_path.parent / "dev.log"
    with log_path.open("a") as log_file:
        logs.configure(env.get("RELAYBUS_LOG_LEVEL", "INFO"), stream=log_file)
        stopping = asyncio.Event()
        install_signal_handlers(stopping)
        async with contextlib.AsyncExitStack() as stack:
            platforms = await start_platforms(args, env, stack)
            overrides: dict[str, str] = {
                "RELAYBUS_QUEUE_BACKEND": "local",
                "RELAYBUS_LOCAL_QUEUE_PATH": str(queue_path),
                "RELAYBUS_HTTP_PORT": env.get("RELAYBUS_HTTP_PORT", "0"),
            }
            for platform in platforms:
                overrides.update(platform.settings())
            merged = {**env, **overrides}
            # The function app reads its settings from the process environment at import.
            os.environ.update(merged)
            settings = load_settings(merged)
            if not settings.platforms:
                print("relaybus dev: no platform to run (both left out)", file=sys.stderr)
                return 2
            worker = Worker(settings)
            host = _functions_host(worker, merged)
            banner(out, settings, worker, platforms, queue_path, log_path)
            progress = Progress()
            result = None
            try:
                async with asyncio.TaskGroup() as group:
                    worker_task = group.create_task(worker.run(stopping))
                    group.create_task(host.run(stopping))
                    group.create_task(_demo(args, platforms, progress, stopping, worker))
                    if args.quiet:
                        group.create_task(_announce_health(out, worker, stopping))
                    else:
                        group.create_task(_show_progress(out, worker, host, platforms, progress, stopping))
                result = worker_task.result()
            finally:
                summary(out, worker, host, platforms, progress, queue_path)
            if result is not None and not result.ok:
                for name, message in result.fatal.items():
                    print(f"relaybus dev: {name} stopped: {message}", file=sys.stderr)
                return 1
            if args.once and not _demo_complete(platforms, progress):
                print("relaybus dev: the demo did not complete in time (see the log)", file=sys.stderr)
                return 1
    return 0


def _functions_host(worker: Any, settings: Mapping[str, str]) -> Any:
    import function_app
    from devstack.funchost import LocalFunctionsHost

    # host.json sits next to function_app.py, wherever the command is run from
    return LocalFunctionsHost(
        function_app.app, worker.backend, Path(function_app.__file__).with_name("host.json"), settings
    )


async def _announce_health(out: TextIO, worker: Any, stopping: asyncio.Event) -> None:
    """Print the health URL once the worker's HTTP server is listening (port 0 picks a free port)."""
    if worker.health is None:
        return
    while not stopping.is_set() and not worker.health.port:  # noqa: ASYNC110 (the server sets no event)
        await asyncio.sleep(0.02)
    if worker.health.port:
        host = worker.settings.http_host
        out.write(f"  health: http://{host}:{worker.health.port}/healthz /readyz /metrics\n")
        out.flush()


def _demo_complete(platforms: list[DemoPlatform], progress: Progress) -> bool:
    return all(p.replies() >= p.expected_replies(progress.sent.get(p.name, 0)) for p in platforms if p.sandbox)


async def _demo(
    args: argparse.Namespace, platforms: list[DemoPlatform], progress: Progress, stopping: asyncio.Event, worker: Any
) -> None:
    demo = [p for p in platforms if p.sandbox]
    if not demo:
        return
    await _wait_online(worker, stopping, within=30)
    for index in range(args.messages):
        for platform in demo:
            await platform.send(index)
            progress.sent[platform.name] = progress.sent.get(platform.name, 0) + 1
        await asyncio.sleep(0.2)
    if not args.once:
        return
    deadline = time.monotonic() + args.timeout
    while not stopping.is_set() and time.monotonic() < deadline:
        if _demo_complete(demo, progress):
            break
        await asyncio.sleep(0.1)
    stopping.set()


async def _wait_online(worker: Any, stopping: asyncio.Event, within: float) -> None:
    deadline = time.monotonic() + within
    while not stopping.is_set() and time.monotonic() < deadline:
        if worker.metrics.status.ready(worker.settings.platforms):
            return
        await asyncio.sleep(0.05)


def _counts(worker: Any, host: Any, platforms: list[DemoPlatform], progress: Progress) -> str:
    m = worker.metrics
    parts = []
    for name in sorted(worker.settings.platforms):
        parts.append(
            f"{name}: sent {progress.sent.get(name, 0)}"
            f" · received {m.total('relaybus_envelopes_received_total', platform=name):.0f}"
            f" · published {m.total('relaybus_envelopes_published_total', platform=name):.0f}"
            f" · acked {m.total('relaybus_envelopes_acked_total', platform=name):.0f}"
            f" · replies {next((p.replies() for p in platforms if p.name == name), 0)}"
        )
    stats = host.stats
    parts.append(f"functions: ok {stats.completed} · retried {stats.abandoned} · dead-lettered {stats.dead_lettered}")
    return " | ".join(parts)


async def _show_progress(
    out: TextIO, worker: Any, host: Any, platforms: list[DemoPlatform], progress: Progress, stopping: asyncio.Event
) -> None:
    await _announce_health(out, worker, stopping)
    tty = out.isatty()
    last = ""
    while not stopping.is_set():
        line = _counts(worker, host, platforms, progress)
        if tty:
            out.write("\r\x1b[2K" + line)
            out.flush()
        elif line != last:
            out.write(line + "\n")
            out.flush()
        last = line
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), 0.25 if tty else 1.0)
    if tty:
        out.write("\n")


def banner(
    out: TextIO, settings: Any, worker: Any, platforms: list[DemoPlatform], queue_path: Path, log_path: Path
) -> None:
    lines = ["relaybus dev — worker, local queue, local functions host" + (" and sandboxes" if platforms else "")]
    for p in platforms:
        lines.append(f"  {p.name}: {p.description}")
    lines.append(f"  queue: {queue_path} (inspect: python -m worker queue stats --path {queue_path})")
    lines.append(f"  logs: {log_path}")
    lines.append("  Ctrl-C to stop")
    out.write("\n".join(lines) + "\n")
    out.flush()


def summary(
    out: TextIO, worker: Any, host: Any, platforms: list[DemoPlatform], progress: Progress, queue_path: Path
) -> None:
    elapsed = time.monotonic() - progress.started
    counts = _counts(worker, host, platforms, progress).replace(" | ", "\n  ")
    out.write(f"\nsummary after {elapsed:.1f} s\n  {counts}\n")
    for conn in worker.metrics.status.snapshot():
        out.write(f"  connection {conn.platform}/{conn.name}: {conn.status.value}\n")
    dupes = worker.metrics.total("relaybus_duplicates_dropped_total")
    failed = worker.metrics.total("relaybus_publish_failed_total")
    invalid = worker.metrics.total("relaybus_invalid_frames_total")
    out.write(f"  duplicates dropped {dupes:.0f} · publish failures {failed:.0f} · invalid frames {invalid:.0f}\n")
    out.write(f"  queue file: {queue_path}\n")
    out.flush()
