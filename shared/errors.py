"""The exception tree shared by the worker and the function app.

    RelaybusError
    ├── InvalidEnvelopeError      a queue body or platform frame that does not fit the contract (permanent)
    ├── RoutingError              no route matches an envelope (permanent: a configuration problem)
    ├── PublishError              an envelope could not be made durable
    │   ├── TransientPublishError     worth retrying (network, throttling, busy)
    │   └── PermanentPublishError     retrying cannot help (too large, unauthorized, queue missing)
    ├── DeadLetterError           raised by a function to dead-letter its message with a reason
    ├── RecipientGone             a reply can never be delivered (the user blocked or removed the bot, the
    │                             channel is gone, the response_url expired): the function completes its
    │                             message with a warning, no retry
    ├── UnsafeReplyTarget         a reply target the function refuses (a serviceUrl or response_url off
    │                             its allowlist): the message is dead-lettered with the reason
    └── ConfigurationError        a setting is missing or wrong; names the setting

Third-party errors are translated at the boundary (`raise Mapped(...) from exc`) with the ids
needed to find the envelope again; they are never swallowed.
"""

from __future__ import annotations


class RelaybusError(Exception):
    """Root of every error relaybus raises on purpose."""


class InvalidEnvelopeError(RelaybusError):
    """A body or frame that does not match the envelope contract.

    `reason` is a short machine-friendly code (used as the dead-letter reason), `detail` a readable
    explanation (used as the dead-letter description).
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class RoutingError(RelaybusError):
    """No route in the route table accepts an envelope."""


class PublishError(RelaybusError):
    """An envelope could not be made durable; the platform must not be acked."""


class TransientPublishError(PublishError):
    """The publish failed for a reason that may pass (network, throttling, server busy)."""


class PermanentPublishError(PublishError):
    """The publish failed for a reason retrying cannot fix (message too large, unauthorized, no such queue)."""


class DeadLetterError(RelaybusError):
    """Raised by a function to say its message can never succeed: dead-letter it with this reason."""

    def __init__(self, reason: str, description: str) -> None:
        super().__init__(f"{reason}: {description}")
        self.reason = reason
        self.description = description


class RecipientGone(RelaybusError):
    """The platform will never accept this reply: retrying cannot help.

    Teams 403 `MessageWritesBlocked`; Slack `channel_not_found`, `is_archived`, `not_in_channel`,
    `expired_url`, `used_url`, `expired_trigger_id`.

    `functions.triggers.process_message` completes the message with a warning instead of letting Service
    Bus redeliver it `maxDeliveryCount` times into the dead-letter queue.
    """


class UnsafeReplyTarget(RelaybusError):
    """A reply target the function must not use (a serviceUrl or response_url off the allowlist).

    The message is dead-lettered with `reason` (`UnsafeReplyTarget`, or a subclass's own such as
    `ServiceUrlNotAllowed`): a forged or misrouted message, never retried.
    """

    reason = "UnsafeReplyTarget"


class ConfigurationError(RelaybusError):
    """A setting is missing or invalid. The message names the setting and says why."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"setting {setting}: {problem}")
        self.setting = setting
        self.problem = problem
