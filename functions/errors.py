"""Errors a handler raises to steer what happens to its message (beside `shared.errors`).

    RelaybusError
    ├── Retry                  try this message again later: `Retry(after=30)` waits 30 s (a platform's
    │                          Retry-After), `Retry()` uses the route's backoff. Counts as an attempt.
    └── (shared.errors)        DeadLetterError (never retry), RecipientGone (complete, no retry), ...

Any other exception a handler raises is retried too, with the backoff (`functions.retries`).
"""

from __future__ import annotations

import math

from shared.errors import RelaybusError


class Retry(RelaybusError):
    """Raised by a handler: run it again later, after `after` seconds (None: the route's backoff).

    The retry counts as an attempt: after the route's last attempt the message is dead-lettered with
    reason `MaxAttemptsExceeded` all the same. `reason` is logged and kept with the retried message
    (application property `relaybus_last_error`)."""

    def __init__(self, after: float | None = None, reason: str = "") -> None:
        if after is not None and (
            not isinstance(after, int | float) or isinstance(after, bool) or not math.isfinite(after)
        ):
            raise ValueError(f"Retry(after=...) takes seconds as a finite number, got {after!r}")
        self.after: float | None = None if after is None else max(0.0, float(after))
        self.reason = reason
        shown = f"retry in {self.after:g} s" if self.after is not None else "retry with backoff"
        super().__init__(f"{shown}: {reason}" if reason else shown)
