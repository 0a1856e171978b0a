"""Logging for the worker's entry points, with secrets scrubbed from every record.

Connectors already keep query strings out of the URLs they log (`shared.redact.redact_url`); the
`RedactingFilter` (`shared.redact`, the one redaction) is the second line of defence: Slack tokens,
bearer tokens, JWTs, `access_token`/`ticket` query parameters and connection-string keys are replaced by
`***` in every formatted message and traceback, whichever library logged it.
"""

from __future__ import annotations

import logging
import sys

from shared.redact import RedactingFilter, redact

__all__ = ["RedactingFilter", "configure", "redact"]


def configure(level: str = "INFO", stream: object = None) -> None:
    """Configure the root logger once (entry points only)."""
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("azure", "websockets", "aiohttp.access", "httpx", "httpcore", "uamqp"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
