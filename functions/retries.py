"""Retries that back off: the policy, and what happens to a message whose handler raised (pure).

A handler that raises is not redelivered at once (Service Bus would do that ten times in under two
seconds). Instead `functions.triggers.process_message` completes the message and sends a copy that
Service Bus makes visible later (a scheduled message):

    attempt n raised, n < max_attempts   →  complete it; send the copy for attempt n + 1 at now + delay
    attempt n raised, n = max_attempts   →  DeadLetterError("MaxAttemptsExceeded", the last error)

- delay: exponential with full jitter, `uniform(0, min(max_seconds, base_seconds * 2 ** (n - 1)))`;
  `Retry(after=s)` raised by the handler chooses `s` instead (at most a day), as do a Slack rate limit
  (`SlackRateLimitedError.retry_after`) and a Bot Connector 429 with `Retry-After`;
- the copy: the same body and SessionId, MessageId `<original MessageId>~<n + 1>` (hashed like any
  MessageId over 128 characters), so duplicate detection keeps working: a redelivery of attempt n that
  sends its retry again sends the same MessageId and is dropped, while attempt n + 1 is a new message;
- application properties: the envelope's own, plus `relaybus_attempt` (n + 1) and `relaybus_last_error`
  (the error, redacted and shortened);
- settings (`functions.settings`): `RELAYBUS_RETRY_MAX_ATTEMPTS` (5), `RELAYBUS_RETRY_BASE_SECONDS` (2),
  `RELAYBUS_RETRY_MAX_SECONDS` (300), each overridable per route (`RELAYBUS_RETRY_MAX_ATTEMPTS__slack_events`).

Errors that retrying cannot fix are not retried: `DeadLetterError` (dead-lettered at once),
`RecipientGone` (completed), `UnsafeReplyTarget` (dead-lettered). See `functions.triggers`.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

from functions.errors import Retry
from functions.settings import MAX_RETRY_ATTEMPTS, MAX_RETRY_SECONDS, FunctionSettings
from shared.envelope import Envelope, message_id_for
from shared.redact import redact

if TYPE_CHECKING:
    from shared.queue_message import QueueMessage

ATTEMPT_PROPERTY = "relaybus_attempt"
LAST_ERROR_PROPERTY = "relaybus_last_error"
MAX_ATTEMPTS_EXCEEDED = "MaxAttemptsExceeded"
MAX_ERROR_TEXT = 500
"""`relaybus_last_error` and the dead-letter description keep at most this many characters of the error."""

Jitter = Callable[[], float]
"""A number in [0, 1): where in the backoff window this retry lands (`random.random`; tests pin it)."""


class RetryTiming(NamedTuple):
    """The clock (epoch seconds) retries are scheduled from and the jitter of their delays (tests pin both)."""

    clock: Callable[[], float] = time.time
    jitter: Jitter = random.random


# Plain classes, not dataclasses: this module is imported with the function app (cold start).


class Backoff:
    """How a route's handler is retried: `max_attempts` runs in all, backoff from `base_seconds` up to
    `max_seconds`."""

    __slots__ = ("base_seconds", "max_attempts", "max_seconds")

    def __init__(self, max_attempts: int = 5, base_seconds: float = 2.0, max_seconds: float = 300.0) -> None:
        if not 1 <= max_attempts <= MAX_RETRY_ATTEMPTS:
            raise ValueError(f"max_attempts must be 1 to {MAX_RETRY_ATTEMPTS}, got {max_attempts}")
        if not 0 < base_seconds <= max_seconds <= MAX_RETRY_SECONDS:
            raise ValueError(
                f"need 0 < base_seconds <= max_seconds <= {MAX_RETRY_SECONDS:g}, got {base_seconds}, {max_seconds}"
            )
        self.max_attempts = max_attempts
        self.base_seconds = float(base_seconds)
        self.max_seconds = float(max_seconds)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Backoff):
            return NotImplemented
        return (self.max_attempts, self.base_seconds, self.max_seconds) == (
            other.max_attempts,
            other.base_seconds,
            other.max_seconds,
        )

    def __hash__(self) -> int:
        return hash((self.max_attempts, self.base_seconds, self.max_seconds))

    def __repr__(self) -> str:
        return f"Backoff(max_attempts={self.max_attempts}, base_seconds={self.base_seconds:g}, " + (
            f"max_seconds={self.max_seconds:g})"
        )

    @classmethod
    def for_route(cls, settings: FunctionSettings, route_name: str) -> Backoff:
        """The settings' policy for a route: the global settings with the route's overrides."""
        override = settings.retry_routes.get(route_name)
        if override is None:
            return cls(settings.retry_max_attempts, settings.retry_base_seconds, settings.retry_max_seconds)
        return cls(
            override.max_attempts or settings.retry_max_attempts,
            override.base_seconds or settings.retry_base_seconds,
            override.max_seconds or settings.retry_max_seconds,
        )

    def ceiling(self, attempt: int) -> float:
        """The longest wait after attempt `attempt` (1, 2, ...) failed: base · 2^(attempt-1), capped."""
        return min(self.max_seconds, self.base_seconds * 2.0 ** min(max(attempt - 1, 0), 60))

    def delay(self, attempt: int, jitter: float) -> float:
        """Full jitter: `jitter` (in [0, 1)) of the ceiling."""
        return min(max(jitter, 0.0), 1.0) * self.ceiling(attempt)


class Decision(NamedTuple):
    """What to do after attempt `attempt` raised: retry after `delay` seconds, or dead-letter (`delay` None).

    `error` is the error as logged and kept with the message (redacted, shortened); `chosen`: the delay came
    from the error (`Retry(after=...)`, a platform's Retry-After), not the backoff."""

    attempt: int
    max_attempts: int
    error: str
    delay: float | None
    chosen: bool = False

    @property
    def retry(self) -> bool:
        return self.delay is not None

    @property
    def next_attempt(self) -> int:
        return self.attempt + 1

    @property
    def dead_letter_description(self) -> str:
        return f"the handler failed {self.attempt} attempt(s); the last error: {self.error}"


def decide(policy: Backoff, attempt: int, exc: BaseException, jitter: float) -> Decision:
    """Retry or dead-letter after attempt `attempt` raised `exc` (pure)."""
    error = describe_error(exc)
    if attempt >= policy.max_attempts:
        return Decision(attempt, policy.max_attempts, error, None)
    after = chosen_delay(exc)
    if after is not None:
        return Decision(attempt, policy.max_attempts, error, min(max(after, 0.0), MAX_RETRY_SECONDS), chosen=True)
    return Decision(attempt, policy.max_attempts, error, policy.delay(attempt, jitter))


def chosen_delay(exc: BaseException) -> float | None:
    """The delay an error asks for: `Retry(after=...)`, Slack's rate limit, a Bot Connector 429's Retry-After."""
    if isinstance(exc, Retry):
        return exc.after
    # The clients are imported only when a handler used them: an error of theirs cannot exist otherwise,
    # and looking them up here must not import them (cold start).
    slack_api = sys.modules.get("functions.slack_api")
    if slack_api is not None and isinstance(exc, slack_api.SlackRateLimitedError):
        return float(exc.retry_after)
    teams_api = sys.modules.get("functions.teams_api")
    if teams_api is not None and isinstance(exc, teams_api.BotConnectorError) and exc.status == 429:
        retry_after = getattr(exc, "retry_after", None)
        return float(retry_after) if isinstance(retry_after, int | float) else None
    return None


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, Retry):
        text = f"Retry: {exc.reason}" if exc.reason else "Retry"
    else:
        message = str(exc)
        text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return " ".join(redact(text).split())[:MAX_ERROR_TEXT]


def attempt_of(properties: Mapping[str, Any] | None) -> int:
    """The attempt a message is (`relaybus_attempt`; 1 when absent). A value that is not a plausible attempt
    number counts as 1: a forged property can make a message retried less, never more."""
    value = (properties or {}).get(ATTEMPT_PROPERTY)
    if value is None or isinstance(value, bool):
        return 1
    try:
        attempt = int(str(value).strip())
    except ValueError:
        return 1
    return attempt if 1 <= attempt <= MAX_RETRY_ATTEMPTS else 1


def retry_message_id(original: str, attempt: int) -> str:
    """The MessageId of attempt `attempt` (≥ 2) of the message whose first MessageId was `original`."""
    return message_id_for(f"{original}~{attempt}")


def retry_message(
    envelope: Envelope,
    decision: Decision,
    *,
    queue: str,
    session_id: str | None,
    body: bytes,
    now: float,
) -> QueueMessage:
    """The scheduled copy for the next attempt (requires `decision.retry`)."""
    from shared.queue_message import QueueMessage

    if decision.delay is None:
        raise ValueError("no retry: the decision is to dead-letter")
    properties = dict(envelope.application_properties())
    properties[ATTEMPT_PROPERTY] = str(decision.next_attempt)
    properties[LAST_ERROR_PROPERTY] = decision.error
    reply = envelope.reply_to
    return QueueMessage(
        queue=queue,
        message_id=retry_message_id(envelope.message_id, decision.next_attempt),
        body=body,
        session_id=session_id,
        application_properties=properties,
        reply_to=reply.queue if reply is not None else None,
        reply_to_session_id=reply.session_id if reply is not None else None,
        scheduled_enqueue_time=datetime.fromtimestamp(now, UTC) + timedelta(seconds=decision.delay),
    )
