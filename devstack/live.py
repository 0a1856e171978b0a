"""Live updates in the dev stack: the local SignalR Service, the local token issuer, `@microsoft/signalr`.

- `start_for_dev(env, overrides, stack)`: for `make dev`, a `LocalSignalRService` and a `LocalTokenIssuer`
  (for the Teams sandbox's tenant, with the Slack sandbox's workspace mapped to it, and a second tenant that
  sees nothing of them) on loopback, the function app's settings pointing at them, a socket bound for the
  local functions host's HTTP functions (so that the live page's URL is known before the banner), and the
  banner lines: the page's URL and a sign-in link per tenant;
- `install()` puts the pinned `@microsoft/signalr` (`devstack/npm/signalr/package.json` and its
  `package-lock.json`) into `.relaybus/node/signalr` with `npm ci`, once (reused while the lock is the same);
  `browser_bundle()` is its `dist/browser/signalr.min.js`, which the live page loads, and `node_client()`
  the node script the tests drive;
- `python -m devstack.live vendor` copies the browser bundle to `functions/static/vendor/signalr.min.js`, where
  the function app serves it from when deployed (run it before `func azure functionapp publish`).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import shutil
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from devstack.azurite import node_tools
from devstack.signalr_service import LocalSignalRService
from devstack.tokens import LocalTokenIssuer
from shared.errors import RelaybusError
from shared.redact import redact

SIGNALR_JS_VERSION = "8.0.7"
PACKAGE_DIR = Path(__file__).resolve().parent / "npm" / "signalr"
DEFAULT_CACHE = Path(__file__).resolve().parent.parent / ".relaybus" / "node" / "signalr"
VENDOR_PATH = Path(__file__).resolve().parent.parent / "functions" / "static" / "vendor" / "signalr.min.js"
_FILES = ("package.json", "package-lock.json", "live-client.mjs")
SLACK_SANDBOX_TEAM = "T0SANDBOX"
"""The Slack sandbox's workspace (`devstack.sandbox.slack.SlackSandbox`'s team id)."""
TEAMS_SANDBOX_TENANT = "sandbox-tenant"
OTHER_TENANT = "other-tenant"


class SignalRClientError(RelaybusError):
    """`@microsoft/signalr` could not be installed; the message says why."""


def _stamp() -> str:
    digest = hashlib.sha256()
    for name in _FILES:
        digest.update((PACKAGE_DIR / name).read_bytes())
    return digest.hexdigest()


def browser_bundle(cache: Path = DEFAULT_CACHE) -> Path:
    return cache / "node_modules" / "@microsoft" / "signalr" / "dist" / "browser" / "signalr.min.js"


def node_client(cache: Path = DEFAULT_CACHE) -> Path:
    return cache / "live-client.mjs"


def installed(cache: Path = DEFAULT_CACHE) -> bool:
    stamp = cache / ".installed"
    return browser_bundle(cache).is_file() and stamp.is_file() and stamp.read_text().strip() == _stamp()


def install(cache: Path = DEFAULT_CACHE, *, timeout: float = 300.0) -> Path:
    """Install the pinned `@microsoft/signalr` into `cache` unless it is there; returns the browser bundle.
    `devstack.azurite.NodeMissing` without node/npm, `SignalRClientError` when npm fails."""
    _node, npm = node_tools()
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if installed(cache):
            return browser_bundle(cache)
        for name in _FILES:
            shutil.copyfile(PACKAGE_DIR / name, cache / name)
        command = [npm, "ci", "--no-audit", "--no-fund", "--omit=dev", "--ignore-scripts", "--loglevel=error"]
        try:
            result = subprocess.run(command, cwd=cache, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise SignalRClientError(f"npm ci of @microsoft/signalr took longer than {timeout:.0f} s") from None
        except OSError as exc:
            raise SignalRClientError(f"npm could not run: {exc}") from None
        if result.returncode != 0 or not browser_bundle(cache).is_file():
            tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
            raise SignalRClientError(
                f"npm ci of @microsoft/signalr@{SIGNALR_JS_VERSION} into {cache} failed "
                f"(exit {result.returncode}):\n{redact(tail)}"
            )
        (cache / ".installed").write_text(_stamp() + "\n")
        return browser_bundle(cache)


def vendor(target: Path = VENDOR_PATH, cache: Path = DEFAULT_CACHE) -> Path:
    """Copy the browser bundle to where the deployed function app serves it from."""
    bundle = install(cache)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(bundle, target)
    return target


# -- make dev ---------------------------------------------------------------------------------------------------


def bound_socket(host: str = "127.0.0.1") -> socket.socket:
    """A listening TCP socket on a free loopback port (handed to the local functions host)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


@dataclass
class LiveDev:
    """What `make dev` runs for the live page."""

    service: LocalSignalRService
    issuer: LocalTokenIssuer
    http_socket: socket.socket
    tenant: str
    settings: dict[str, str] = field(default_factory=dict)
    bundle_note: str = ""

    @property
    def page_url(self) -> str:
        host, port = self.http_socket.getsockname()[:2]
        return f"http://{host}:{port}/api/live"

    def lines(self) -> list[str]:
        page = self.page_url
        lines = [
            f"live page: {page} (local SignalR Service {self.service.endpoint}, local token issuer "
            f"{self.issuer.base_url}){self.bundle_note}",
            f"  sign in as alice of {self.tenant} (sees the sandbox conversations live): "
            f"{self.issuer.sign_in_url(page, self.tenant, 'alice')}",
        ]
        for tenant in self.issuer.tenants:
            if tenant != self.tenant:
                lines.append(
                    f"  sign in as bob of {tenant} (sees none of them): {self.issuer.sign_in_url(page, tenant, 'bob')}"
                )
        return lines


async def start_for_dev(
    env: Mapping[str, str], overrides: dict[str, str], stack: contextlib.AsyncExitStack
) -> LiveDev | None:
    """Start the local SignalR Service and token issuer for `make dev` and point the function app at them
    (`overrides`), unless a SignalR Service is configured already (then None: the settings stand)."""
    import asyncio

    if env.get("AzureSignalRConnectionString") or env.get("AzureSignalRConnectionString__serviceUri"):
        return None
    tenant = overrides.get("TEAMS_TENANT_ID") or env.get("TEAMS_TENANT_ID") or TEAMS_SANDBOX_TENANT
    service = await stack.enter_async_context(LocalSignalRService())
    other = OTHER_TENANT if tenant != OTHER_TENANT else f"{OTHER_TENANT}-2"
    issuer = await stack.enter_async_context(LocalTokenIssuer(tenants=(tenant, other)))
    http_socket = bound_socket()
    stack.callback(http_socket.close)
    from functions import live as function_live

    stack.push_async_callback(function_live.aclose)
    note = ""
    try:
        bundle = await asyncio.to_thread(install)
    except (RelaybusError, OSError) as exc:
        bundle = VENDOR_PATH
        note = f"; the page's @microsoft/signalr is not installed: {str(exc).splitlines()[0]}"
    settings = {
        "AzureSignalRConnectionString": service.connection_string,
        **issuer.settings(),
        "RELAYBUS_LIVE_CLIENT_JS": str(bundle),
        "RELAYBUS_LIVE_TENANT_ALIASES": f"{SLACK_SANDBOX_TEAM}={tenant}",
    }
    overrides.update(settings)
    return LiveDev(service, issuer, http_socket, tenant, settings, note)


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - a manual step before publishing
    parser = argparse.ArgumentParser(prog="python -m devstack.live", description="the live page's client library")
    parser.add_argument("command", choices=["install", "vendor"], help="install into .relaybus, or vendor for deploy")
    args = parser.parse_args(argv)
    try:
        path = vendor() if args.command == "vendor" else install()
    except RelaybusError as exc:
        print(f"relaybus: {exc}", flush=True)
        return 1
    print(f"@microsoft/signalr {SIGNALR_JS_VERSION}: {path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())


__all__ = ["LiveDev", "SignalRClientError", "browser_bundle", "install", "node_client", "start_for_dev", "vendor"]
