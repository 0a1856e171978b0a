"""The official `botframework-directlinejs` client, installed from npm, run in node against the sandbox.

    script = install()          # npm ci of devstack/npm/directline into .relaybus/node/directline, once
    node script <base_url> <secret> <scenario>   # JSON lines on stdout (tests/test_directline_js.py)

The package pins `botframework-directlinejs` with `ws` and `xhr2`: the client is written for browsers and
expects a global `WebSocket` and `XMLHttpRequest`, which the script provides before loading it. Like
`devstack.azurite`: reused while the lock file is the same; `NodeMissing` without node or npm,
`DirectLineJsError` with npm's last lines when the install fails.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
from pathlib import Path

from devstack.azurite import AzuriteError, node_tools
from shared.redact import redact

DIRECTLINEJS_VERSION = "0.15.8"
PACKAGE_DIR = Path(__file__).resolve().parent / "npm" / "directline"
DEFAULT_CACHE = Path(__file__).resolve().parent.parent / ".relaybus" / "node" / "directline"
SCRIPT = "client.cjs"


class DirectLineJsError(AzuriteError):
    """npm could not install the client (the message has npm's last lines)."""


def _stamp() -> str:
    digest = hashlib.sha256()
    for name in ("package.json", "package-lock.json", SCRIPT):
        digest.update((PACKAGE_DIR / name).read_bytes())
    return digest.hexdigest()


def installed(cache: Path = DEFAULT_CACHE) -> bool:
    stamp = cache / ".installed"
    library = cache / "node_modules" / "botframework-directlinejs" / "package.json"
    return library.is_file() and stamp.is_file() and stamp.read_text().strip() == _stamp()


def install(cache: Path = DEFAULT_CACHE, *, timeout: float = 300.0) -> Path:
    """The client script, ready to run with node (installs the pinned packages first when needed)."""
    _node, npm = node_tools()
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if installed(cache):
            return cache / SCRIPT
        for name in ("package.json", "package-lock.json", SCRIPT):
            shutil.copyfile(PACKAGE_DIR / name, cache / name)
        command = [npm, "ci", "--no-audit", "--no-fund", "--omit=dev", "--ignore-scripts", "--loglevel=error"]
        try:
            result = subprocess.run(command, cwd=cache, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DirectLineJsError(f"npm ci of botframework-directlinejs took longer than {timeout:.0f} s") from None
        except OSError as exc:
            raise DirectLineJsError(f"npm could not run: {exc}") from None
        if result.returncode != 0:
            tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
            raise DirectLineJsError(
                f"npm ci of botframework-directlinejs@{DIRECTLINEJS_VERSION} into {cache} failed "
                f"(exit {result.returncode}):\n{redact(tail)}"
            )
        (cache / ".installed").write_text(_stamp() + "\n")
        return cache / SCRIPT
