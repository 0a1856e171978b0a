"""The one redaction: what every output of relaybus passes through before a person or a log sees it.

`redact(text)` replaces anything that looks like a secret with `***`:

- Slack tokens (`xapp-…`, `xoxb-…`, `xoxp-…`, `xoxa-…`, `xoxe-…`, `xoxr-…`);
- `Bearer …` / `Basic …` values and whatever follows `Authorization:`;
- JWTs (`eyJ….eyJ….…`: Bot Framework, SignalR and Direct Line tokens);
- secret query parameters and key=value pairs: `ticket`, `access_token`, `token`, `sig`, `secret`,
  `password`; in query strings also `code` (OAuth) and `id` (a SignalR connection token);
- `SharedAccessKey=…` in Service Bus connection strings, `AccountKey=…` in storage ones;
- the password of `user:password@host` in URLs.

`redact_url(url)` keeps scheme, host, port and path only: the safe way to log a URL whose query string
carries credentials (a Slack ticket, a SignalR access token).

Used by the worker's log filter, connection status details (`/readyz`, the lifecycle log), exception
texts shown to people (`FatalConnectorError`, configuration errors), `settings` output and the function
app's logging.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit, urlunsplit

MASK = "***"

_SECRET_KEYS = r"access_token|accesstoken|ticket|token|sig|signature|secret|client_secret|password|pwd|apikey|api_key"  # noqa: S105 (names, not values)

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Slack tokens (no group: the whole match goes)
    (re.compile(r"\bx(?:app|oxb|oxp|oxa|oxe|oxr)-[0-9A-Za-z_-]+"), MASK),
    # Authorization header values and bearer/basic credentials
    (re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?)(?:bearer\s+|basic\s+)?[^\s\"',;}]+"), r"\1" + MASK),
    (re.compile(r"(?i)\b((?:bearer|basic)\s+)[A-Za-z0-9._~+/=-]+"), r"\1" + MASK),
    # JWTs anywhere
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), MASK),
    # secret query parameters / key=value pairs (also JSON-ish "token": "…")
    (re.compile(rf"(?i)(\b(?:{_SECRET_KEYS})=)[^&\s\"'#;,]+"), r"\1" + MASK),
    (re.compile(rf"(?i)([\"'](?:{_SECRET_KEYS}|accessToken|connectionToken)[\"']\s*:\s*[\"'])[^\"']+"), r"\1" + MASK),
    # the connection token of a SignalR URL travels as `id=`
    (re.compile(r"(?i)([?&](?:id|code|connectionToken)=)[^&\s\"'#]+"), r"\1" + MASK),
    # connection strings
    (re.compile(r"(?i)((?:SharedAccessKey|AccountKey|SharedAccessSignature)=)[^;\s\"']+"), r"\1" + MASK),
    # user:password@ in URLs
    (re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)[^@/\s]+@"), r"\1" + MASK + "@"),
)


def redact(text: str) -> str:
    """`text` with every secret-looking part replaced by `***`."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact_url(url: str) -> str:
    """Scheme, host, port and path only (no credentials, query or fragment). Never raises."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        if parts.port is not None:
            netloc = f"{netloc}:{parts.port}"
    except ValueError:
        return redact(url.split("?", 1)[0].split("#", 1)[0])
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def describe_exception(exc: BaseException, limit: int = 300) -> str:
    """`Type: message`, redacted and bounded: the form exception texts take in logs and status details."""
    text = str(exc) or type(exc).__name__
    return redact(f"{type(exc).__name__}: {text}")[:limit]


class RedactingFilter(logging.Filter):
    """A logging filter that passes every record's message (and its traceback) through `redact`.

    Attach it to handlers: the worker's entry points do (`worker.logs.configure`). The function app, whose
    handlers belong to the Functions host, redacts every record as it is created instead
    (`functions.logs.install_redaction` wraps the log record factory with the same `redact`)."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # arguments that do not fit the format: the handler reports that itself
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(self._formatter.formatException(record.exc_info))
        return True
