"""URL checks both sides apply to configured and received URLs (pure).

- `is_loopback(host)`: 127.0.0.0/8, ::1 and `localhost`: the only hosts sandbox-only settings may name;
- `split(url)`: `urlsplit` that never raises and reads the port (a hostile `https://h:99999/` or
  `http://[::1` makes `urlsplit(...).port` raise `ValueError`); None when the URL cannot be parsed;
- `check_service_url(value)`: a configured base URL must be https, or http on loopback (the sandboxes).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    host = host.strip("[]").lower().rstrip(".")
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class SplitUrl:
    scheme: str
    host: str
    port: int | None
    path: str
    has_credentials: bool

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)


def split(url: object) -> SplitUrl | None:
    """The parts of an absolute URL, or None when `url` is not a string or not parseable."""
    if not isinstance(url, str) or not url or len(url) > 8192:
        return None
    try:
        parts = urlsplit(url.strip())
        port = parts.port
        host = parts.hostname or ""
    except ValueError:
        return None
    if not parts.scheme or not host:
        return None
    # any `@` in the authority is a user part, even an empty one (`https://:@host/`)
    return SplitUrl(parts.scheme.lower(), host.lower(), port, parts.path, "@" in parts.netloc)


def check_https_url(value: str, example: str) -> str:
    """For validators: https, or http on a loopback host only; raises `ValueError` saying why."""
    parts = split(value)
    if parts is None or parts.scheme not in ("http", "https"):
        raise ValueError(f"must be an https URL such as {example}")
    if parts.has_credentials:
        raise ValueError("must not carry a user name or password")
    if parts.scheme == "http" and not parts.loopback:
        raise ValueError(f"must use https (http is allowed on loopback only, for the sandboxes), e.g. {example}")
    return value
