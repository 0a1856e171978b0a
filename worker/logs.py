"""Logging for the worker's entry points, with secrets scrubbed from every record.

Connectors already strip query strings from the URLs they log; this filter is the second line of
defence: Slack tokens, bearer tokens and `access_token`/`ticket` query parameters are replaced by `***`
in every formatted message, whichever library logged it.
"""

from __future__ import annotations

import logging
import re
import sys

_PATTERNS = (
    re.compile(r"\bx(?:app|oxb|oxp|oxa|oxe)-[0-9A-Za-z_-]+"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"),
    re.compile(r"(?i)((?:access_token|ticket|token)=)[^&\s\"']+"),
    re.compile(r"(?i)([?&](?:sig|code)=)[^&\s\"']+"),
    re.compile(r"(?i)(SharedAccessKey=)[^;\s\"']+"),
)


def redact(text: str) -> str:
    """Replace anything that looks like a secret with `***`."""
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "***", text)
    return text


def strip_query(url: str) -> str:
    """A URL without its query string and fragment (safe to log)."""
    return url.split("?", 1)[0].split("#", 1)[0]


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        return True


def configure(level: str = "INFO", stream: object = None) -> None:
    """Configure the root logger once (entry points only)."""
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("azure", "websockets", "aiohttp.access", "httpx", "httpcore", "uamqp"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
