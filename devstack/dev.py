"""`python -m devstack dev` (`make dev`): the whole system on one machine.

    sandbox Slack / Teams  ──sockets──►  worker (connectors → Handoff)  ──►  local queue (SQLite)
            ▲                                                                      │
            └──────────── replies (Web API / Bot Connector) ◄── local functions host (function_app.py)

For every platform without real credentials (`SLACK_APP_TOKEN`, `TEAMS_APP_ID`, from the environment or
`.env`) a sandbox server is started on loopback and the worker and the functions are pointed at it; a
platform with credentials is the real one. A few scripted user messages then travel the whole loop.

The console shows:

- a banner: for each platform whether it is the sandbox or the real platform and why, the handlers
  registered, ready-to-paste curl commands that send your own message to each sandbox, the queue and
  the log file;
- what the bot said: each reply a sandbox receives, as it arrives (`  slack ← bot: …`);
- a live progress line (one updating line on a terminal, otherwise a line whenever it changes; none with
  `--quiet`): counts per platform and each connection's state with its last error;
- a summary at the end: counts, and each connection's state (the state it had before shutdown, so a
  connection that never came online shows `FailedToConnect` and its last error, not `Ended`).

`--once` stops by itself once the scripted demo got its replies and every connection is Online or has
failed (after a short settle when a real platform is configured), or after `--timeout` seconds; it exits
0 when the demo completed and every connection came Online, 1 otherwise. Without `--once` it runs until
Ctrl-C (exit 0 unless a connector stopped on a final error).

Logs go to `dev.log` beside the queue file (`.relaybus/dev.log`); the previous run's is kept as
`dev.log.1`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, TextIO

from shared.errors import ConfigurationError
from shared.redact import redact
from worker import logs
from worker.lifecycle import ConnectionInfo, ConnectionStatus, StatusBoard
from worker.settings import LOG_LEVELS, check_queue_path, environment, load_settings

if TYPE_CHECKING:
    from devstack.funchost import LocalFunctionsHost
    from worker.runtime import RunResult, Worker

log = logging.getLogger(__name__)

SETTLE_SECONDS = 2.0
"""With a real platform, `--once` waits this long after every connection is Online (or failed)."""
SANDBOX_ONLINE_WITHIN = 30.0
"""The scripted demo starts when the sandbox connections are Online, or after this long anyway."""
REPLY_WIDTH = 100
"""Replies are shortened to this many characters on the console (dev.log has them in full)."""
ERROR_WIDTH = 60

_FAILED = (ConnectionStatus.FAILED_TO_CONNECT, ConnectionStatus.EXPIRED_TOKEN)
_PLATFORMS = (("slack", "Slack", "SLACK_APP_TOKEN"), ("teams", "Teams", "TEAMS_APP_ID"))
_LEAVE_OUT = {
    # what to blank so that a platform left out is not configured from the environment or .env either
    "slack": ("SLACK_APP_TOKEN",),
    "teams": ("TEAMS_APP_ID", "TEAMS_APP_PASSWORD", "TEAMS_CERTIFICATE_PATH", "TEAMS_STATIC_TOKEN"),
}


class DemoPlatform(Protocol):
    """A sandbox platform in the dev stack, with a scripted demo (see `devstack.platforms`)."""

    name: str
    title: str
    sandbox: bool
    url: str
    description: str

    def settings(self) -> dict[str, str]:
        """Settings for the worker and the function app that point at this platform."""
        ...

    def injection(self) -> list[str]:
        """Shell commands a person can paste to send their own message."""
        ...

    async def send(self, index: int) -> None:
        """Send the index-th scripted user interaction."""
        ...

    def expected_replies(self, sent: int) -> int: ...

    def replies(self) -> int:
        """Replies the platform has received from the functions so far."""
        ...

    def take_replies(self) -> list[str]:
        """The text of each reply received since the last call."""
        ...


@dataclass(frozen=True)
class PlatformChoice:
    """What `dev` does with one platform, and why."""

    name: str
    title: str
    mode: Literal["sandbox", "real", "off"]
    reason: str
    demo: DemoPlatform | None = None

    def describe(self) -> str:
        if self.demo is not None:
            return f"{self.title}: sandbox at {self.demo.url} ({self.demo.description}), because {self.reason}"
        if self.mode == "real":
            return f"{self.title}: real platform ({self.reason})"
        return f"{self.title}: left out ({self.reason})"


@dataclass
class Progress:
    sent: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)


async def start_platforms(
    args: argparse.Namespace, env: Mapping[str, str], stack: contextlib.AsyncExitStack
) -> list[PlatformChoice]:
    """Decide for each platform: left out, the real one (its credential is set) or a sandbox (started now)."""
    from devstack.platforms import SlackDemo, TeamsDemo

    choices: list[PlatformChoice] = []
    for name, title, credential in _PLATFORMS:
        if getattr(args, f"no_{name}", False):
            choices.append(PlatformChoice(name, title, "off", f"--no-{name}"))
        elif env.get(credential):
            reason = f"{credential} is set"
            if name == "slack" and not env.get("SLACK_BOT_TOKEN"):
                reason += "; SLACK_BOT_TOKEN is not, so the bot cannot answer"
            choices.append(PlatformChoice(name, title, "real", reason))
        else:
            demo: DemoPlatform = await (SlackDemo.start(stack) if name == "slack" else TeamsDemo.start(stack))
            choices.append(PlatformChoice(name, title, "sandbox", f"{credential} is not set", demo))
    return choices


def run_dev(args: argparse.Namespace) -> int:
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="replace")  # a console that cannot show "←" gets "?", not a traceback
    return asyncio.run(_dev(args, sys.stdout))


def _log_level(env: Mapping[str, str]) -> str:
    level = env.get("RELAYBUS_LOG_LEVEL", "INFO").strip().upper() or "INFO"
    if level not in LOG_LEVELS:
        raise ConfigurationError("RELAYBUS_LOG_LEVEL", f"must be one of {', '.join(LOG_LEVELS)}")
    return level


def open_log(path: Path) -> TextIO:
    """A fresh log file; the previous run's is kept as `<name>.1`."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            os.replace(path, path.with_name(path.name + ".1"))
        return path.open("w", encoding="utf-8")
    except OSError as exc:
        problem = f"the dev log {path} beside the queue file cannot be written ({exc.strerror or exc})"
        raise ConfigurationError("RELAYBUS_LOCAL_QUEUE_PATH", problem) from None


async def _dev(args: argparse.Namespace, out: TextIO) -> int:
    from worker.cli import install_signal_handlers
    from worker.runtime import Worker

    env = environment(dotenv=args.env_file)
    level = _log_level(env)
    queue_path = Path(args.queue_path or env.get("RELAYBUS_LOCAL_QUEUE_PATH") or ".relaybus/dev-queue.db")
    try:
        check_queue_path(queue_path)
    except ValueError as exc:
        raise ConfigurationError("RELAYBUS_LOCAL_QUEUE_PATH", str(exc)) from None
    log_path = queue_path.parent / "dev.log"
    with open_log(log_path) as log_file:
        logs.configure(level, stream=log_file)
        stopping = asyncio.Event()
        install_signal_handlers(stopping)
        async with contextlib.AsyncExitStack() as stack:
            choices = await start_platforms(args, env, stack)
            from devstack.directline_demo import choose as choose_directline

            bridged = await choose_directline(args, env, choices, stack, queue_path.parent)
            choices += [bridged] if bridged is not None else []
            demos = [c.demo for c in choices if c.demo is not None]
            overrides: dict[str, str] = {
                "RELAYBUS_QUEUE_BACKEND": "local",
                "RELAYBUS_LOCAL_QUEUE_PATH": str(queue_path),
                "RELAYBUS_HTTP_PORT": env.get("RELAYBUS_HTTP_PORT", "0"),
            }
            for choice in choices:
                if choice.mode == "off":
                    overrides.update(dict.fromkeys(_LEAVE_OUT[choice.name], ""))
                if choice.demo is not None:
                    overrides.update(choice.demo.settings())
            state_line = await _state_for_dev(env, overrides, queue_path.parent, stack)
            from devstack.live import start_for_dev as start_live

            live = await start_live(env, overrides, stack)
            merged = {**env, **overrides}
            # The function app reads its settings from the process environment at import.
            os.environ.update(merged)
            settings = load_settings(merged)
            if not settings.platforms:
                print("relaybus dev: no platform to run (both left out)", file=sys.stderr)
                return 2
            worker = Worker(settings)
            host = _functions_host(worker, merged, live.http_socket if live is not None else None)
            banner(out, args, choices, _listeners(), queue_path, log_path, state_line, live.lines() if live else ())
            console = Console(out, live=not args.quiet)
            tracker = ConnectionTracker(worker.metrics.status)
            progress = Progress()
            settle = SETTLE_SECONDS if any(c.mode == "real" for c in choices) else 0.0
            result = None
            wrong: ConfigurationError | None = None
            try:
                try:
                    async with asyncio.TaskGroup() as group:
                        worker_task = group.create_task(_run_worker(worker, stopping))
                        group.create_task(_run_host(host, worker, stopping))
                        group.create_task(_demo(args, demos, progress, stopping, worker, tracker, settle))
                        group.create_task(_watch(console, worker, host, choices, progress, tracker, stopping))
                    result = worker_task.result()
                except* ConfigurationError as errors:
                    first = errors.exceptions[0]
                    wrong = first if isinstance(first, ConfigurationError) else ConfigurationError("dev", str(first))
            finally:
                _show_replies(console, demos)
                console.close()
                if wrong is None:
                    summary(out, worker, host, choices, progress, tracker, queue_path, log_path)
            if wrong is not None:
                raise wrong
            if result is not None and not result.ok:
                for name, message in result.fatal.items():
                    print(f"relaybus dev: {name} stopped: {redact(message)}", file=sys.stderr)
                return 1
            if args.once:
                if not _demo_complete(demos, progress):
                    print("relaybus dev: the demo did not complete in time (see the log)", file=sys.stderr)
                    return 1
                offline = tracker.never_online(settings.platforms)
                if offline:
                    print(f"relaybus dev: never came online: {', '.join(offline)} (see the log)", file=sys.stderr)
                    return 1
    return 0


async def _run_worker(worker: Worker, stopping: asyncio.Event) -> RunResult:
    """The worker; when it stops on its own (its queue cannot be opened, every connector failed), so does dev."""
    try:
        return await worker.run(stopping)
    except OSError as exc:
        if worker.health is None or worker.health.port is not None:
            raise
        # the health server could not listen (the port is taken): a setting, not a crash
        where = f"{worker.settings.http_host}:{worker.settings.http_port}"
        raise ConfigurationError("RELAYBUS_HTTP_PORT", f"cannot listen on {where}: {exc.strerror or exc}") from None
    finally:
        stopping.set()


async def _run_host(host: LocalFunctionsHost, worker: Worker, stopping: asyncio.Event) -> None:
    """The functions host, started once the worker has opened the queue file (its health server then listens).

    Two first opens of a new queue file at the same moment can fail with "database is locked"; one after
    the other they do not.
    """
    while worker.health is not None and not worker.health.port and not stopping.is_set():  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    if not stopping.is_set():
        try:
            await host.run(stopping)
        finally:
            import function_app

            await function_app.clients.aclose()  # the reply clients and the state store of this event loop


async def _state_for_dev(
    env: Mapping[str, str], overrides: dict[str, str], folder: Path, stack: contextlib.AsyncExitStack
) -> str:
    """The state store the function app gets: what the settings name, else Azurite when it is installed and
    starts (`python -m devstack.azurite` installs it; `make test` does too), else the embedded SQLite file.
    Returns the banner's line saying which, and why."""
    if env.get("RELAYBUS_STATE_CONNECTION") or env.get("RELAYBUS_STATE_TABLE_ENDPOINT"):
        return "Azure Table Storage as configured (RELAYBUS_STATE_CONNECTION / RELAYBUS_STATE_TABLE_ENDPOINT)"
    from devstack.azurite import start_for_dev

    azurite, why = await asyncio.to_thread(start_for_dev, folder / "azurite", install_if_missing=False)
    if azurite is not None:
        stack.callback(azurite.stop)
        overrides["RELAYBUS_STATE_CONNECTION"] = azurite.connection_string
        return why
    path = env.get("RELAYBUS_STATE_PATH") or str(folder / "state.db")
    overrides["RELAYBUS_STATE_PATH"] = path
    return f"embedded SQLite store {path} ({why})"


def _functions_host(
    worker: Worker, settings: Mapping[str, str], http_socket: socket.socket | None = None
) -> LocalFunctionsHost:
    import function_app
    from devstack.funchost import LocalFunctionsHost
    from localqueue import LocalQueueBackend

    backend = worker.backend
    assert isinstance(backend, LocalQueueBackend)  # dev always runs the local queue
    # host.json sits next to function_app.py, wherever the command is run from
    host_json = Path(function_app.__file__).with_name("host.json")
    return LocalFunctionsHost(function_app.app, backend, host_json, settings, http_socket=http_socket)


def _listeners() -> list[str]:
    """The handlers the function app dispatches to (imported with it), one line per listener."""
    from handlers import bot

    return bot.listeners()


# --- the console -----------------------------------------------------------------------------------


class Console:
    """Lines that stay (banner, replies, health) and one live progress line.

    On a terminal the live line is redrawn in place and other lines are printed above it; otherwise
    the live line is printed whenever it changes. `live=False` (`--quiet`) leaves it out.
    """

    def __init__(self, out: TextIO, *, live: bool = True) -> None:
        self._out = out
        self._live = live
        try:
            self._tty = out.isatty()
        except (AttributeError, ValueError):
            self._tty = False
        self._line = ""
        self._drawn = False

    def say(self, text: str) -> None:
        if self._drawn:
            self._out.write("\r\x1b[2K")
        self._out.write(text + "\n")
        if self._drawn:
            self._out.write(self._line)
        self._out.flush()

    def live(self, line: str) -> None:
        if not self._live:
            return
        if self._tty:
            line = shorten(line, max(20, shutil.get_terminal_size().columns - 1))
            if self._drawn and line == self._line:
                return
            self._out.write("\r\x1b[2K" + line)
            self._drawn = True
        elif line == self._line:
            return
        else:
            self._out.write(line + "\n")
        self._line = line
        self._out.flush()

    def close(self) -> None:
        if self._drawn:
            self._out.write("\n")
            self._out.flush()
            self._drawn = False


def shorten(text: str, width: int) -> str:
    """One line of at most `width` characters (whitespace collapsed, "…" where cut)."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def _show_replies(console: Console, demos: Sequence[DemoPlatform]) -> None:
    for demo in demos:
        for text in demo.take_replies():
            # a demo may say who spoke (the Direct Line bridge: `→ agent: …` / `← agent: …`); else it is the bot
            line = text if text.startswith(("→ ", "← ")) else f"← bot: {text}"
            console.say(f"  {demo.name} {shorten(redact(line), REPLY_WIDTH)}")


async def _watch(
    console: Console,
    worker: Worker,
    host: LocalFunctionsHost,
    choices: Sequence[PlatformChoice],
    progress: Progress,
    tracker: ConnectionTracker,
    stopping: asyncio.Event,
) -> None:
    """Until `stopping`: record connection states, print replies and the health URL, redraw the live line."""
    demos = [c.demo for c in choices if c.demo is not None]
    health_shown = worker.health is None
    while True:
        connections = tracker.observe()
        if not health_shown and worker.health is not None and worker.health.port:
            bind = worker.settings.http_host
            console.say(f"  health: http://{bind}:{worker.health.port}/healthz /readyz /metrics")
            health_shown = True
        _show_replies(console, demos)
        if stopping.is_set():
            return  # the summary follows; the live line keeps the last state before shutdown
        # connections first: on a narrow terminal the line is cut at the right
        console.live(tracker.describe(connections) + " | " + _counts(worker, host, choices, progress))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), 0.1)


# --- connections ---------------------------------------------------------------------------------


@dataclass
class _Seen:
    last: ConnectionInfo
    """The last state other than Ended (Ended only when that is all there was)."""
    online: bool = False
    """Whether the connection was ever Online."""
    error: str = ""
    """Its last error (the detail of its last FailedToConnect or ExpiredToken)."""


class ConnectionTracker:
    """What each connection went through while `dev` ran, sampled from the worker's StatusBoard.

    At shutdown every connection becomes Ended; the summary shows what it was before, so a connection
    that never came online says so (with its last error).
    """

    def __init__(self, board: StatusBoard) -> None:
        self._board = board
        self._seen: dict[tuple[str, str], _Seen] = {}

    def observe(self) -> list[ConnectionInfo]:
        snapshot = self._board.snapshot()
        for conn in snapshot:
            key = (conn.platform, conn.name)
            seen = self._seen.get(key)
            if seen is None:
                seen = self._seen[key] = _Seen(conn)
            elif conn.status is not ConnectionStatus.ENDED:
                seen.last = conn
            if conn.status is ConnectionStatus.ONLINE:
                seen.online = True
            if conn.status in _FAILED:
                seen.error = conn.detail or conn.status.value
            board_error = str(getattr(conn, "last_error", "") or "")
            if board_error and conn.status is not ConnectionStatus.ONLINE:
                seen.error = board_error
        return snapshot

    def _error(self, key: tuple[str, str]) -> str:
        seen = self._seen.get(key)
        return seen.error if seen is not None else ""

    def describe(self, connections: Sequence[ConnectionInfo]) -> str:
        """`slack/0 Online · teams/amer Connecting (last error)` for the live line."""
        if not connections:
            return "connections: none yet"
        parts = []
        for conn in connections:
            text = f"{conn.platform}/{conn.name} {conn.status.value}"
            if conn.status is not ConnectionStatus.ONLINE:
                last_error = self._error((conn.platform, conn.name))
                note = conn.detail if conn.status in _FAILED else (last_error or conn.detail)
                if note:
                    text += f" ({shorten(note, ERROR_WIDTH)})"
            parts.append(text)
        return " · ".join(parts)

    def _keys(self) -> list[tuple[str, str]]:
        final = [(c.platform, c.name) for c in self._board.snapshot()]
        return final or sorted(self._seen)

    def settled(self, platforms: set[str]) -> bool:
        """Every configured platform has connections and each is Online or has failed at least once."""
        snapshot = self.observe()
        if not platforms <= {c.platform for c in snapshot}:
            return False
        return all(
            c.status is ConnectionStatus.ONLINE or c.status in _FAILED or self._error((c.platform, c.name))
            for c in snapshot
        )

    def never_online(self, platforms: set[str]) -> list[str]:
        """`platform/name` of each connection that never came Online (and each platform without one)."""
        keys = self._keys()
        missing = sorted(platforms - {platform for platform, _ in keys})
        return [f"{p} (no connection)" for p in missing] + [
            f"{p}/{n}" for p, n in keys if not (seen := self._seen.get((p, n))) or not seen.online
        ]

    def summary_lines(self) -> list[str]:
        current = {(c.platform, c.name): c for c in self._board.snapshot()}
        lines = []
        for key in self._keys():
            seen = self._seen.get(key)
            now = current.get(key)
            shown = seen.last if seen is not None else now
            if now is not None and (now.status is not ConnectionStatus.ENDED or shown is None):
                shown = now
            assert shown is not None
            online = seen is not None and seen.online
            status = shown.status
            error = self._error(key)
            if status is ConnectionStatus.CONNECTING and error and not online:
                status = ConnectionStatus.FAILED_TO_CONNECT  # every attempt failed; it was between retries
            text = status.value
            if status is not ConnectionStatus.ONLINE:
                note = error or shown.detail
                if note:
                    text += f" ({shorten(note, ERROR_WIDTH)})"
            if status is ConnectionStatus.ONLINE and now is not None and now.status is ConnectionStatus.ENDED:
                text += " until shutdown"
            elif not online:
                text += " — never came online"
            lines.append(f"connection {key[0]}/{key[1]}: {text}")
        return lines


# --- the demo --------------------------------------------------------------------------------------


def _demo_complete(demos: Sequence[DemoPlatform], progress: Progress) -> bool:
    return all(p.replies() >= p.expected_replies(progress.sent.get(p.name, 0)) for p in demos)


async def _demo(
    args: argparse.Namespace,
    demos: Sequence[DemoPlatform],
    progress: Progress,
    stopping: asyncio.Event,
    worker: Worker,
    tracker: ConnectionTracker,
    settle: float,
) -> None:
    """Play the script on the sandboxes; with `--once`, then stop when done (or at `--timeout`)."""
    deadline = progress.started + args.timeout
    if demos:
        until = min(deadline, time.monotonic() + SANDBOX_ONLINE_WITHIN) if args.once else None
        await _wait_online(worker, {p.name for p in demos}, stopping, until)
        for index in range(args.messages):
            if stopping.is_set():
                return
            for platform in demos:
                await platform.send(index)
                progress.sent[platform.name] = progress.sent.get(platform.name, 0) + 1
            await asyncio.sleep(0.2)
    if not args.once:
        return
    settled_since: float | None = None
    while not stopping.is_set():
        now = time.monotonic()
        if now >= deadline:
            log.info("dev --once: %.0f s timeout reached", args.timeout)
            break
        if _demo_complete(demos, progress) and tracker.settled(worker.settings.platforms):
            settled_since = now if settled_since is None else settled_since
            if now - settled_since >= settle:
                break
        else:
            settled_since = None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), 0.1)
    stopping.set()


async def _wait_online(worker: Worker, platforms: set[str], stopping: asyncio.Event, until: float | None) -> None:
    """Until every connection of these platforms is Online (or `until`, default SANDBOX_ONLINE_WITHIN)."""
    until = time.monotonic() + SANDBOX_ONLINE_WITHIN if until is None else until
    while not stopping.is_set() and time.monotonic() < until:
        mine = [c for c in worker.metrics.status.snapshot() if c.platform in platforms]
        if platforms <= {c.platform for c in mine} and all(c.status is ConnectionStatus.ONLINE for c in mine):
            return
        await asyncio.sleep(0.05)


# --- banner and summary ----------------------------------------------------------------------------


def _counts(worker: Worker, host: LocalFunctionsHost, choices: Sequence[PlatformChoice], progress: Progress) -> str:
    m = worker.metrics
    parts = []
    for choice in choices:
        if choice.mode == "off" or choice.name not in worker.settings.platforms:
            continue
        name = choice.name
        flow = (
            f"received {m.total('relaybus_envelopes_received_total', platform=name):.0f}"
            f" · published {m.total('relaybus_envelopes_published_total', platform=name):.0f}"
            f" · acked {m.total('relaybus_envelopes_acked_total', platform=name):.0f}"
        )
        if choice.demo is not None:
            parts.append(f"{name}: sent {progress.sent.get(name, 0)} · {flow} · replies {choice.demo.replies()}")
        else:
            parts.append(f"{name}: {flow}")
    stats = host.stats
    parts.append(f"functions: ok {stats.completed} · retried {stats.abandoned} · dead-lettered {stats.dead_lettered}")
    return " | ".join(parts)


def banner(
    out: TextIO,
    args: argparse.Namespace,
    choices: Sequence[PlatformChoice],
    listeners: Sequence[str],
    queue_path: Path,
    log_path: Path,
    state_line: str = "",
    live_lines: Sequence[str] = (),
) -> None:
    demos = [c.demo for c in choices if c.demo is not None]
    lines = ["relaybus dev — worker, local queue, local functions host" + (" and sandboxes" if demos else "")]
    lines += [f"  {c.describe()}" for c in choices]
    if demos:
        lines.append("  (real credentials in .env or the environment make dev use the real platform instead)")
    lines.append("  handlers:" + ("" if listeners else " none registered (add them under handlers/)"))
    lines += [f"    {listener}" for listener in listeners]
    for demo in demos:
        lines.append(f"  send your own {demo.title} message:")
        lines += [f"    {command}" for command in demo.injection()]
    lines.append(f"  queue: {queue_path} (inspect: python -m worker queue stats --path {queue_path})")
    if state_line:
        lines.append(f"  state: {state_line}")
    lines += [f"  {line}" for line in live_lines]
    lines.append(f"  logs: {log_path} (the previous run's: {log_path.name}.1)")
    if args.once:
        lines.append(f"  --once: stops when the demo is done (at most {args.timeout:g} s); Ctrl-C stops earlier")
    else:
        lines.append("  Ctrl-C to stop")
    out.write("\n".join(lines) + "\n")
    out.flush()


def summary(
    out: TextIO,
    worker: Worker,
    host: LocalFunctionsHost,
    choices: Sequence[PlatformChoice],
    progress: Progress,
    tracker: ConnectionTracker,
    queue_path: Path,
    log_path: Path,
) -> None:
    elapsed = time.monotonic() - progress.started
    counts = _counts(worker, host, choices, progress).replace(" | ", "\n  ")
    lines = [f"summary after {elapsed:.1f} s", f"  {counts}"]
    lines += [f"  {line}" for line in tracker.summary_lines()]
    m = worker.metrics
    dupes = m.total("relaybus_duplicates_dropped_total")
    failed = m.total("relaybus_publish_failed_total")
    invalid = m.total("relaybus_invalid_frames_total")
    lines.append(f"  duplicates dropped {dupes:.0f} · publish failures {failed:.0f} · invalid frames {invalid:.0f}")
    lines.append(f"  queue file: {queue_path}")
    lines.append(f"  log: {log_path}")
    out.write("\n" + "\n".join(lines) + "\n")
    out.flush()
