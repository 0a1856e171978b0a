"""Azurite, the Azure Storage emulator, for the state store: installed from npm, run on a loopback port.

    with Azurite() as azurite:                       # installs azurite@3.35.0 on first use, starts it
        store = TableStateStore.from_connection_string(azurite.connection_string, "relaybusstate")

- `install()` puts the pinned Azurite (`devstack/npm/azurite/package.json` and its `package-lock.json`)
  into `.relaybus/node/azurite` with `npm ci`, once: later calls reuse it while the lock file is the same.
  A failing install raises `AzuriteError` with npm's last lines; node or npm missing raises `NodeMissing`.
- `Azurite` starts only the Table service (`azurite-table`) on 127.0.0.1 and a free port (Azurite accepts
  `--tablePort 0` but then reports port 0, so the port is picked here and a clash retried), in memory
  (`--inMemoryPersistence`), with `--disableTelemetry --silent --skipApiVersionCheck`, in its own temporary
  folder (or, for `make dev`, keeping its data in `location`); it waits until Azurite says it listens and the
  port answers, and stops it (SIGINT, Azurite's graceful stop, then terminate, then kill).

The account is Azurite's well-known development account (`devstoreaccount1` and its published key: not
a secret), so `connection_string` is what `RELAYBUS_STATE_CONNECTION` takes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from shared.errors import RelaybusError
from shared.redact import redact

AZURITE_VERSION = "3.35.0"
PACKAGE_DIR = Path(__file__).resolve().parent / "npm" / "azurite"
DEFAULT_CACHE = Path(__file__).resolve().parent.parent / ".relaybus" / "node" / "azurite"
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
"""Azurite's published development key (the same in every Azurite): not a secret."""
MIN_NODE_MAJOR = 18
_READY = "successfully started"


class AzuriteError(RelaybusError):
    """Azurite could not be installed or started; the message says why."""


class NodeMissing(AzuriteError):
    """node or npm is not on PATH: Azurite cannot run here."""


def node_tools() -> tuple[str, str]:
    """(node, npm) on PATH, node new enough; `NodeMissing` / `AzuriteError` otherwise."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        missing = " and ".join(name for name, path in (("node", node), ("npm", npm)) if path is None)
        raise NodeMissing(f"{missing} not found on PATH: Azurite needs Node.js {MIN_NODE_MAJOR} or later (20 LTS)")
    try:
        version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30, check=True).stdout
        major = int(version.strip().lstrip("v").split(".")[0])
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        raise AzuriteError(f"cannot tell the node version ({type(exc).__name__})") from None
    if major < MIN_NODE_MAJOR:
        raise AzuriteError(f"node {version.strip()} is too old for Azurite {AZURITE_VERSION} (needs {MIN_NODE_MAJOR}+)")
    return node, npm


def _stamp() -> str:
    digest = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        digest.update((PACKAGE_DIR / name).read_bytes())
    return digest.hexdigest()


def entry_point(cache: Path = DEFAULT_CACHE) -> Path:
    return cache / "node_modules" / "azurite" / "dist" / "src" / "table" / "main.js"


def installed(cache: Path = DEFAULT_CACHE) -> bool:
    """Whether `install(cache)` would reuse what is there (no npm run)."""
    stamp = cache / ".installed"
    return entry_point(cache).is_file() and stamp.is_file() and stamp.read_text().strip() == _stamp()


def install(cache: Path = DEFAULT_CACHE, *, timeout: float = 600.0) -> Path:
    """Install the pinned Azurite into `cache` unless it is there already; returns its table entry point."""
    _node, npm = node_tools()
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process installing: wait for it, then reuse
        if installed(cache):
            return entry_point(cache)
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(PACKAGE_DIR / name, cache / name)
        command = [npm, "ci", "--no-audit", "--no-fund", "--omit=dev", "--ignore-scripts", "--loglevel=error"]
        try:
            result = subprocess.run(command, cwd=cache, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AzuriteError(f"npm ci of azurite@{AZURITE_VERSION} took longer than {timeout:.0f} s") from None
        except OSError as exc:
            raise AzuriteError(f"npm could not run: {exc}") from None
        if result.returncode != 0 or not entry_point(cache).is_file():
            tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
            raise AzuriteError(
                f"npm ci of azurite@{AZURITE_VERSION} into {cache} failed (exit {result.returncode}):\n{redact(tail)}"
            )
        (cache / ".installed").write_text(_stamp() + "\n")
        return entry_point(cache)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class Azurite:
    """One Azurite Table service on loopback, in memory (see the module docstring)."""

    def __init__(
        self,
        *,
        cache: Path = DEFAULT_CACHE,
        host: str = "127.0.0.1",
        location: Path | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        """`location`: keep the data in this folder across runs (`make dev`); None: in memory (tests)."""
        self.cache = cache
        self.host = host
        self.location = location
        self.startup_timeout = startup_timeout
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def table_endpoint(self) -> str:
        return f"http://{self.host}:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"TableEndpoint={self.table_endpoint};"
        )

    def start(self) -> Azurite:
        script = install(self.cache)
        node, _npm = node_tools()
        if self.location is not None:
            self.location.mkdir(parents=True, exist_ok=True)
        self._workdir = tempfile.TemporaryDirectory(prefix="relaybus-azurite-")
        log_path = Path(self._workdir.name) / "azurite.log"
        last = ""
        for _ in range(3):  # a port picked free can be taken before Azurite binds it: pick again
            self.port = free_port(self.host)
            command = [
                node,
                str(script),
                "--tableHost",
                self.host,
                "--tablePort",
                str(self.port),
                *(["--location", str(self.location)] if self.location is not None else ["--inMemoryPersistence"]),
                "--disableTelemetry",
                "--silent",
                "--skipApiVersionCheck",
            ]
            with log_path.open("wb") as log:
                self.process = subprocess.Popen(
                    command, cwd=self._workdir.name, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
                )
            last = self._wait_ready(log_path)
            if not last:
                return self
            self._stop_process()
        self.stop()
        raise AzuriteError(f"Azurite did not start: {last}")

    def _wait_ready(self, log_path: Path) -> str:
        """'' when Azurite listens; else why not (it exited, or the time ran out)."""
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            text = log_path.read_text(errors="replace") if log_path.exists() else ""
            code = self.process.poll()
            if code is not None:
                return f"it exited with {code}: {redact(text.strip()[-600:])}"
            if _READY in text and self._answers():
                return ""
            time.sleep(0.05)
        return f"it did not listen on {self.host}:{self.port} within {self.startup_timeout:.0f} s"

    def _answers(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0):
                return True
        except OSError:
            return False

    def _stop_process(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        # SIGINT is Azurite's graceful stop (it saves a --location's data); SIGTERM ends it without saving
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            process.send_signal(sig)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                continue
            return

    def stop(self) -> None:
        self._stop_process()
        if self._workdir is not None:
            with contextlib.suppress(OSError):
                self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_for_dev(location: Path, *, install_if_missing: bool = True) -> tuple[Azurite | None, str]:
    """For `make dev`: a started Azurite keeping its data in `location`, or None and why not (node missing,
    not installed and `install_if_missing` false, or it failed). Never raises `AzuriteError`."""
    if not install_if_missing and not installed():
        return None, f"Azurite is not installed (python -m devstack.azurite installs azurite@{AZURITE_VERSION})"
    azurite = Azurite(location=location)
    try:
        azurite.start()
    except AzuriteError as exc:
        return None, str(exc).splitlines()[0]
    return azurite, f"Azurite {AZURITE_VERSION} at {azurite.table_endpoint} (data in {location})"


def main() -> int:  # pragma: no cover - a manual check: python -m devstack.azurite
    with Azurite() as azurite:
        print(f"Azurite {AZURITE_VERSION} table service at {azurite.table_endpoint} (Ctrl-C stops it)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while azurite.process is not None and azurite.process.poll() is None:
                time.sleep(0.5)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())


__all__ = [
    "ACCOUNT",
    "AZURITE_VERSION",
    "Azurite",
    "AzuriteError",
    "NodeMissing",
    "install",
    "installed",
    "start_for_dev",
]
