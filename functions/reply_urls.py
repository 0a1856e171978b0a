"""Parsing a reply target (a Slack `response_url`, a Teams `serviceUrl`) the way it will be sent.

`parse_target(url)` returns the URL (stripped) and its parts only when

- `shared.urls.split` can read it (a port out of range or a broken IPv6 literal is refused, never raised);
- its host is a plain DNS name (letters, digits, hyphens and dots) or an IP address, so that no
  backslash, percent sign, control or full-width character can make one parser see a different host;
- httpx, which sends the request, reads the same scheme, host, port and no user info.

The allowlist checks in `functions.slack_api` and `functions.teams_api` build on it, so whatever they
accept is what httpx will connect to.
"""

from __future__ import annotations

import httpx

from functions.settings import plain_host
from shared.redact import redact
from shared.urls import SplitUrl, split

_DEFAULT_PORTS = {"http": 80, "https": 443}


def shown(url: object) -> str:
    """What an error may say about a refused URL: scheme and authority only (the path of a response_url
    is a credential for 30 minutes), redacted and bounded."""
    if not isinstance(url, str):
        return f"<{type(url).__name__}>"
    head = "/".join(url.strip().split("/")[:3])
    return repr(redact(head[:80]))


def parse_target(url: object) -> tuple[str, SplitUrl] | None:
    """`(url stripped, parts)` when `url` is an absolute URL httpx reads the same way; else None."""
    parts = split(url)
    if parts is None or not plain_host(parts.host):
        return None
    text = str(url).strip()
    try:
        sent = httpx.URL(text)
        raw_host = sent.raw_host.decode("ascii").lower()
    except (httpx.InvalidURL, UnicodeError, ValueError):
        return None
    default = _DEFAULT_PORTS.get(parts.scheme)
    if (
        sent.scheme != parts.scheme
        or raw_host != parts.host
        or (sent.port or default) != (parts.port or default)
        or bool(sent.userinfo) != parts.has_credentials
    ):
        return None
    return text, parts
