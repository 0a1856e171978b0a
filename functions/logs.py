"""Logging on the function side: the host owns the handlers; relaybus adds the one redaction to them.

`install_redaction()` puts a filter on the root logger's handlers (and on the root logger itself, for
handlers added later by the Functions host) that passes every record through `shared.redact.redact`,
so no token reaches Application Insights or the console, whichever library logged it.
"""

from __future__ import annotations

import logging

from shared.redact import RedactingFilter

_FILTER = RedactingFilter()


def install_redaction(logger: logging.Logger | None = None) -> None:
    """Idempotent: add the redacting filter to `logger` (default: root) and to its current handlers."""
    target = logger or logging.getLogger()
    if _FILTER not in target.filters:
        target.addFilter(_FILTER)
    for handler in target.handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
