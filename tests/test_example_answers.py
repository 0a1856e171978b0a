"""The example bot's synchronous answers (handlers/tickets.py), through its registered functions and the local
functions host over a real local queue file; Web API calls go to the sandbox Slack."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from devstack.sandbox.slack import SlackSandbox
from handlers import bot
from handlers.tickets import PEOPLE
from shared.envelope import Envelope
from shared.replies import Reply, problem
from tests.functions_local import (
    LocalStack,
    block_suggestion,
    slash_command,
    teams_invoke,
    view_submission,
)


async def answers(tmp_path: Path, *envelopes: Envelope, env: dict[str, str] | None = None) -> list[Reply]:
    """Run the example bot on `envelopes`; their answers, in the envelopes' order, each checked as the worker does."""
    stack = LocalStack(tmp_path, bot, env)

    async def scenario(s: LocalStack) -> None:
        for envelope in envelopes:
            await s.send(envelope)
        await s.outcome(len(envelopes))

    await stack.run(scenario)
    by_correlation = {m.correlation_id: reply for m, reply in stack.replies()}
    found = [by_correlation[e.message_id] for e in envelopes]
    for envelope, reply in zip(envelopes, found, strict=True):
        platform = envelope.platform.value
        interaction = envelope.event_type
        assert reply.error is None, reply
        assert problem(platform, interaction, reply) is None, (interaction, reply)
    return found


def sandbox_env(slack: SlackSandbox) -> dict[str, str]:
    return {"SLACK_BOT_TOKEN": slack.bot_token, "SLACK_API_URL": slack.api_url}


async def test_ticket_opens_the_modal_and_acks_plainly(tmp_path: Path) -> None:
    async with SlackSandbox() as slack:
        command = slash_command("/ticket", "printer on fire")
        command.payload["response_url"] = slack.new_response_url()
        [reply] = await answers(tmp_path, command, env=sandbox_env(slack))
        assert reply.body is None  # the plain ack: Slack shows the modal
        [note] = [r for r in slack.replies if r.method == "response_url"]
        assert note.body["response_type"] == "ephemeral" and "printer on fire" in note.body["text"]
        [opened] = [r for r in slack.replies if r.method == "views.open"]
        assert opened.body["trigger_id"] == command.payload["trigger_id"]
        view = opened.body["view"]
        view = json.loads(view) if isinstance(view, str) else view
        assert view["callback_id"] == "ticket_modal"
        assert view["blocks"][0]["element"]["initial_value"] == "printer on fire"
        assert view["blocks"][1]["element"] == {
            "type": "external_select",
            "action_id": "ticket_assignee",
            "min_query_length": 0,
            "placeholder": {"type": "plain_text", "text": "Type a name"},
        }
        assert json.loads(view["private_metadata"]) == {"channel": "C01"}


def title(value: str | None) -> dict[str, Any]:
    return {"ticket_title": {"title": {"type": "plain_text_input", "value": value}}}


async def test_the_modal_submission_returns_errors_for_an_empty_title_and_clear_otherwise(tmp_path: Path) -> None:
    async with SlackSandbox() as slack:
        empty = view_submission(title("   "), metadata=json.dumps({"channel": "C01"}))
        missing = view_submission(title(None))
        good = view_submission(
            {
                **title("Printer on fire"),
                "ticket_assignee_block": {
                    "ticket_assignee": {"type": "external_select", "selected_option": {"value": "U0GRACE"}}
                },
            },
            metadata=json.dumps({"channel": "C01"}),
        )
        refused, refused_too, cleared = await answers(tmp_path, empty, missing, good, env=sandbox_env(slack))
        assert refused.body == {"response_action": "errors", "errors": {"ticket_title": "Give the ticket a title"}}
        assert refused_too.body == refused.body
        assert cleared.body == {"response_action": "clear"}
        [posted] = [r for r in slack.replies if r.method == "chat.postMessage"]  # only for the valid one
        assert posted.body["channel"] == "C01"
        assert posted.body["text"] == "Ticket opened by <@U01>: Printer on fire (assigned to <@U0GRACE>)"


async def test_the_assignee_select_gets_the_people_matching_what_was_typed(tmp_path: Path) -> None:
    typed, everyone, nobody = await answers(
        tmp_path,
        block_suggestion("ticket_assignee", "HO"),
        block_suggestion("ticket_assignee", ""),
        block_suggestion("ticket_assignee", "zz"),
    )
    assert typed.body == {"options": [{"text": {"type": "plain_text", "text": "Grace Hopper"}, "value": "U0GRACE"}]}
    assert everyone.body is not None
    assert [o["text"]["text"] for o in everyone.body["options"]] == [name for name, _ in PEOPLE]
    assert nobody.body == {"options": []}


async def test_ticket_count_answers_in_the_ack_ephemerally(tmp_path: Path) -> None:
    [reply] = await answers(tmp_path, slash_command("/ticket-count"))
    assert reply.body == {"text": "3 open tickets", "response_type": "ephemeral"}


def search(text: str | None, command: str = "searchTickets") -> Envelope:
    parameters = [{"name": "initialRun", "value": "true"}] if text is None else [{"name": "query", "value": text}]
    return teams_invoke(
        "composeExtension/query",
        {"commandId": command, "parameters": parameters, "queryOptions": {"skip": 0, "count": 25}},
    )


async def test_the_search_message_extension_returns_a_card_per_matching_ticket(tmp_path: Path) -> None:
    printer, initial, other_command = await answers(tmp_path, search("printer"), search(None), search("x", "other"))
    assert printer.status == 200 and printer.body is not None
    result = printer.body["composeExtension"]
    assert (result["type"], result["attachmentLayout"]) == ("result", "list")
    previews = [a["preview"]["content"]["title"] for a in result["attachments"]]
    assert previews == ["#101 Printer on fire", "#103 Printer out of toner"]
    first = result["attachments"][0]
    assert first["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert first["content"]["actions"][0] == {
        "type": "Action.Execute",
        "title": "Acknowledge",
        "verb": "ackTicket",
        "data": {"ticketId": "101"},
    }
    assert initial.body is not None and len(initial.body["composeExtension"]["attachments"]) == 4
    assert other_command.body is None  # not this extension's command: a plain 200


async def test_ack_ticket_returns_the_updated_card(tmp_path: Path) -> None:
    envelope = teams_invoke(
        "adaptiveCard/action",
        {"action": {"type": "Action.Execute", "verb": "ackTicket", "data": {"ticketId": "102"}}, "trigger": "manual"},
    )
    [reply] = await answers(tmp_path, envelope)
    assert reply.status == 200 and reply.body is not None
    assert reply.body["statusCode"] == 200
    assert reply.body["type"] == "application/vnd.microsoft.card.adaptive"
    card = reply.body["value"]
    assert [b["text"] for b in card["body"]] == ["#102 VPN drops every hour", "Acknowledged by Grace"]
    assert "actions" not in card  # acknowledged: no button any more
