"""Synchronous answers: what a function sends back to the worker that holds the socket (the contract).

A handler for an envelope that `accepts_response` may return an answer (`functions.responses`); the function
sends it as a `Reply` to the envelope's `reply_to` queue (session = the waiting worker, CorrelationId = the
envelope's MessageId). The worker validates it against the interaction (`problem()`), then sends it in the
ack (Slack `payload`) or the completion (Teams invoke `status` and `body`) if the deadline has not passed.

    Reply(correlation_id, body={...})                 an answer
    Reply(correlation_id, error="bot handler error")  the handler failed: the worker sends the platform's
                                                      fallback at once instead of waiting for the deadline

`problem(platform, interaction, reply)` is pure and names what is wrong (None when the answer fits):
Slack view submissions take `response_action` errors|update|push|clear (errors with an `errors` object,
update/push with a `view`), external selects `options` or `option_groups`, slash commands `text`,
`blocks`, `response_type` ephemeral|in_channel; Teams invokes a status 200–599 and a JSON object body. Every
Slack answer must fit the 20 KB ack frame with its envelope id.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.errors import InvalidEnvelopeError
from shared.jsonfmt import compact

SLACK_MAX_ACK_BYTES = 20 * 1024
"""Slack drops ack frames of this size or more; the envelope id and the frame's keys take ~120 bytes."""
SLACK_ACK_OVERHEAD = 128

VIEW_ACTIONS = frozenset({"errors", "update", "push", "clear"})
RESPONSE_TYPES = frozenset({"ephemeral", "in_channel"})


class Reply(BaseModel):
    """One answer on the reply queue (its body as JSON)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    correlation_id: str = Field(min_length=1, max_length=200)
    status: int = Field(default=200, ge=100, le=599)
    """Teams invokes: the invoke response status; Slack: 200."""
    body: dict[str, Any] | None = None
    """Slack: the ack `payload`; Teams: the invoke response body."""
    error: str | None = Field(default=None, max_length=1000)
    """Set when the handler failed: the worker answers with its fallback at once."""

    def to_body(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def from_body(cls, body: bytes | str) -> Reply:
        try:
            return cls.model_validate_json(body)
        except ValidationError as exc:
            raise InvalidEnvelopeError(
                "InvalidReply", f"{exc.error_count()} problem(s): {exc.errors()[0]['msg']}"
            ) from exc
        except Exception as exc:
            raise InvalidEnvelopeError("InvalidReply", type(exc).__name__) from exc


def problem(platform: str, interaction: str | None, reply: Reply) -> str | None:
    """What is wrong with `reply` as the answer to `interaction` (Slack payload type or command, Teams invoke
    name), or None when it fits."""
    if reply.error is not None:
        return None  # a failure report: the fallback goes out, nothing to check
    if platform == "slack":
        return _slack_problem(interaction, reply.body)
    if platform == "teams":
        if reply.body is not None and not isinstance(reply.body, dict):
            return "an invoke body must be a JSON object"
        return None
    return f"platform {platform!r} takes no synchronous answers"


def _slack_problem(interaction: str | None, body: dict[str, Any] | None) -> str | None:
    if body is None:
        return None  # a plain ack
    size = len(compact(body).encode()) + SLACK_ACK_OVERHEAD
    if size >= SLACK_MAX_ACK_BYTES:
        return f"the answer takes {size} bytes in the ack frame; Slack drops frames of 20 KB or more"
    if interaction == "view_submission":
        action = body.get("response_action")
        if action not in VIEW_ACTIONS:
            return f"a view submission answer needs response_action errors|update|push|clear, got {action!r}"
        if action == "errors" and not (isinstance(body.get("errors"), dict) and body["errors"]):
            return "response_action errors needs a non-empty `errors` object (block_id: message)"
        if action in ("update", "push") and not isinstance(body.get("view"), dict):
            return f"response_action {action} needs a `view` object"
        return None
    if interaction == "block_suggestion":
        if isinstance(body.get("options"), list) or isinstance(body.get("option_groups"), list):
            return None
        return "an external select answer needs `options` or `option_groups` (a list)"
    if interaction is not None and interaction.startswith("/"):
        if not any(key in body for key in ("text", "blocks")):
            return "a slash command answer needs `text` or `blocks`"
        if "response_type" in body and body["response_type"] not in RESPONSE_TYPES:
            return f"response_type must be ephemeral or in_channel, got {body['response_type']!r}"
        return None
    return f"Slack takes no answer payload for {interaction!r}"
