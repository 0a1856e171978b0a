"""Logging on the function side: the host owns the handlers; relaybus redacts every record they see.

`install_redaction()` (called by `function_app.py` at import) makes every log record of the process pass
through `shared.redact.redact` when it is created, whichever library logged it and whichever handler
emits it, including handlers the Functions host adds later and records propagated from child loggers
(a filter on the root logger alone sees neither). The message is redacted, and an exception's
traceback is formatted and redacted at once (`exc_text`, which formatters use instead of formatting
`exc_info` again), so no token reaches Application Insights or the console. The `RedactingFilter` is
also put on the root logger's current handlers, for records made by other record factories.
"""

from __future__ import annotations

import logging
from typing import Any

from shared.redact import RedactingFilter, redact

_FILTER = RedactingFilter()
_FORMATTER = logging.Formatter()


class _RedactingFactory:
    """A log record factory: the previous factory's record, with message, traceback and stack redacted."""

    def __init__(self, previous: Any) -> None:
        self.previous = previous

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record: logging.LogRecord = self.previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # arguments that do not fit the format: the handler reports that itself
            message = None
        try:
            if message is not None:
                cleaned = redact(message)
                if cleaned != message:
                    record.msg, record.args = cleaned, None
            if record.exc_info and not record.exc_text:
                record.exc_text = redact(_FORMATTER.formatException(record.exc_info))
            if record.stack_info:
                record.stack_info = redact(record.stack_info)
        except Exception:  # the redaction itself failed (at interpreter shutdown): say nothing rather than leak
            record.msg, record.args = "(a log record that could not be redacted was withheld)", None
            record.exc_info = record.exc_text = record.stack_info = None
        return record


def install_redaction(logger: logging.Logger | None = None) -> None:
    """Idempotent: redact every record made from now on, and filter `logger`'s (default root) handlers."""
    factory = logging.getLogRecordFactory()
    if not isinstance(factory, _RedactingFactory):
        logging.setLogRecordFactory(_RedactingFactory(factory))
    target = logger or logging.getLogger()
    if _FILTER not in target.filters:
        target.addFilter(_FILTER)
    for handler in target.handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
