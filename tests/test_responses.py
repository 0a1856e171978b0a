"""Typed answers (functions.responses): each one's exact shape, and the worker's check (`problem`) accepts it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from functions.responses import (
    AdaptiveCardMessage,
    AdaptiveCardResponse,
    CommandReply,
    InvokeResponse,
    MessageExtensionResult,
    Option,
    OptionGroup,
    OptionGroups,
    Options,
    Response,
    SlackAck,
    TaskContinue,
    TaskMessage,
    ViewClear,
    ViewErrors,
    ViewPush,
    ViewUpdate,
    card_attachment,
    preview_card,
)
from shared.replies import Reply, problem

VIEW = {"type": "modal", "title": {"type": "plain_text", "text": "Next"}, "blocks": []}
CARD = {"type": "AdaptiveCard", "version": "1.4", "body": [{"type": "TextBlock", "text": "done"}]}


class Blocks:
    """Something with to_dict(), as slack_sdk's models have."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def to_dict(self) -> dict[str, Any]:
        return dict(self.data)


CASES: list[tuple[Response, str, str, int, dict[str, Any] | None]] = [
    (SlackAck(), "slack", "view_submission", 200, None),
    (SlackAck({"response_action": "clear"}), "slack", "view_submission", 200, {"response_action": "clear"}),
    (CommandReply("3 open tickets"), "slack", "/ticket-count", 200, {"text": "3 open tickets"}),
    (
        CommandReply("3 open tickets", response_type="ephemeral"),
        "slack",
        "/ticket-count",
        200,
        {"text": "3 open tickets", "response_type": "ephemeral"},
    ),
    (
        CommandReply(blocks=[Blocks({"type": "divider"})], response_type="in_channel"),
        "slack",
        "/x",
        200,
        {"blocks": [{"type": "divider"}], "response_type": "in_channel"},
    ),
    (
        Options([Option("Ada", "U1"), {"text": {"type": "plain_text", "text": "Bo"}, "value": "U2"}]),
        "slack",
        "block_suggestion",
        200,
        {
            "options": [
                {"text": {"type": "plain_text", "text": "Ada"}, "value": "U1"},
                {"text": {"type": "plain_text", "text": "Bo"}, "value": "U2"},
            ]
        },
    ),
    (Options([]), "slack", "block_suggestion", 200, {"options": []}),
    (
        OptionGroups([OptionGroup("Team", [Option("Ada", "U1", description="admin")])]),
        "slack",
        "block_suggestion",
        200,
        {
            "option_groups": [
                {
                    "label": {"type": "plain_text", "text": "Team"},
                    "options": [
                        {
                            "text": {"type": "plain_text", "text": "Ada"},
                            "value": "U1",
                            "description": {"type": "plain_text", "text": "admin"},
                        }
                    ],
                }
            ]
        },
    ),
    (
        ViewErrors({"ticket_title": "Required"}),
        "slack",
        "view_submission",
        200,
        {"response_action": "errors", "errors": {"ticket_title": "Required"}},
    ),
    (ViewUpdate(VIEW), "slack", "view_submission", 200, {"response_action": "update", "view": VIEW}),
    (ViewPush(Blocks(VIEW)), "slack", "view_submission", 200, {"response_action": "push", "view": VIEW}),
    (ViewClear(), "slack", "view_submission", 200, {"response_action": "clear"}),
    (InvokeResponse(), "teams", "signin/verifyState", 200, None),
    (InvokeResponse(404, {"error": "no such ticket"}), "teams", "task/fetch", 404, {"error": "no such ticket"}),
    (
        MessageExtensionResult([card_attachment(CARD, preview=preview_card("#1 Printer", "open"))]),
        "teams",
        "composeExtension/query",
        200,
        {
            "composeExtension": {
                "type": "result",
                "attachmentLayout": "list",
                "attachments": [
                    {
                        "contentType": "application/vnd.microsoft.card.adaptive",
                        "content": CARD,
                        "preview": {
                            "contentType": "application/vnd.microsoft.card.thumbnail",
                            "content": {"title": "#1 Printer", "text": "open"},
                        },
                    }
                ],
            }
        },
    ),
    (
        MessageExtensionResult([], layout="grid"),
        "teams",
        "composeExtension/query",
        200,
        {"composeExtension": {"type": "result", "attachmentLayout": "grid", "attachments": []}},
    ),
    (
        AdaptiveCardResponse(CARD),
        "teams",
        "adaptiveCard/action",
        200,
        {"statusCode": 200, "type": "application/vnd.microsoft.card.adaptive", "value": CARD},
    ),
    (
        AdaptiveCardMessage("Thanks!"),
        "teams",
        "adaptiveCard/action",
        200,
        {"statusCode": 200, "type": "application/vnd.microsoft.activity.message", "value": "Thanks!"},
    ),
    (
        TaskContinue(card=CARD, title="Edit", height="medium", width=400),
        "teams",
        "task/fetch",
        200,
        {
            "task": {
                "type": "continue",
                "value": {
                    "title": "Edit",
                    "height": "medium",
                    "width": 400,
                    "card": {"contentType": "application/vnd.microsoft.card.adaptive", "content": CARD},
                },
            }
        },
    ),
    (
        TaskContinue(url="https://example.com/form"),
        "teams",
        "task/fetch",
        200,
        {"task": {"type": "continue", "value": {"url": "https://example.com/form"}}},
    ),
    (TaskMessage("Saved"), "teams", "task/submit", 200, {"task": {"type": "message", "value": "Saved"}}),
]


@pytest.mark.parametrize(
    ("answer", "platform", "interaction", "status", "body"), CASES, ids=[type(c[0]).__name__ for c in CASES]
)
def test_each_answer_has_its_shape_and_passes_the_workers_check(
    answer: Response, platform: str, interaction: str, status: int, body: dict[str, Any] | None
) -> None:
    assert answer.to_reply_body() == (status, body)
    reply = answer.to_reply("corr-1")
    assert (reply.correlation_id, reply.status, reply.body, reply.error) == ("corr-1", status, body, None)
    assert problem(platform, interaction, reply) is None
    again = Reply.from_body(reply.to_body())  # what travels on the reply queue
    assert again == reply
    assert json.loads(reply.to_body()).get("body") == body


def test_answers_for_the_wrong_interaction_are_caught_by_the_workers_check() -> None:
    # the shapes are per interaction: the same answer in the wrong place is refused (the worker's fallback)
    assert problem("slack", "view_submission", CommandReply("hi").to_reply("c")) is not None
    assert problem("slack", "block_suggestion", ViewClear().to_reply("c")) is not None
    assert problem("slack", "/ticket", Options([]).to_reply("c")) is not None


@pytest.mark.parametrize(
    "build",
    [
        lambda: CommandReply(),
        lambda: CommandReply("x", response_type="public"),  # type: ignore[arg-type]
        lambda: ViewErrors({}),
        lambda: Option("", "v"),
        lambda: Option("x" * 76, "v"),
        lambda: Option("ok", "v" * 151),
        lambda: Options([Option("a", str(i)) for i in range(101)]),
        lambda: OptionGroups([OptionGroup(str(i), []) for i in range(101)]),
        lambda: InvokeResponse(99),
        lambda: MessageExtensionResult([], layout="carousel"),  # type: ignore[arg-type]
        lambda: TaskContinue(),
        lambda: TaskContinue(card=CARD, url="https://example.com"),
    ],
)
def test_answers_that_cannot_be_valid_fail_where_they_are_built(build: Any) -> None:
    with pytest.raises(ValueError):
        build()


def test_a_view_that_is_not_an_object_is_refused_when_the_reply_is_built() -> None:
    with pytest.raises(TypeError, match="view must be a dict"):
        ViewUpdate("not a view").to_reply("c")


def test_a_slack_answer_too_large_for_the_ack_frame_is_refused_by_the_check() -> None:
    big = Options([Option("x" * 70, f"{i:03d}" + "v" * 140) for i in range(100)])
    assert "20 KB" in (problem("slack", "block_suggestion", big.to_reply("c")) or "")
