"""Example answers: a ticket bot that answers Slack and Teams synchronously (inside the platform's deadline).

Slack:
- `/ticket [title]` says so to the user (an ephemeral message through the command's response_url) and opens
  a modal (views.open with the command's trigger_id);
- its submission (callback_id `ticket_modal`) is answered in the ack: `errors` when the title is empty (the
  modal stays open and shows the message under the input), else `clear` (the modal closes) after the ticket
  is posted in the channel the command came from;
- the modal's assignee picker is an external select (action_id `ticket_assignee`): its `block_suggestion`
  is answered with the people whose name contains what was typed;
- `/ticket-count` answers in the ack, only to the user who asked (`response_type: ephemeral`).

Teams:
- a search message extension (`composeExtension/query`, command id `searchTickets`) answers with a result
  card per ticket whose title contains the query text;
- the cards' Adaptive Card `Action.Execute` (verb `ackTicket`) is answered with the updated card.

The tickets and people are a fixed example list: replace them with your own store (`functions.state`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from functions import DeadLetterError, SlackContext, TeamsContext
from functions.responses import (
    AdaptiveCardResponse,
    CommandReply,
    MessageExtensionResult,
    Option,
    Options,
    ViewClear,
    ViewErrors,
    card_attachment,
    preview_card,
)
from handlers import bot

TICKET_MODAL = "ticket_modal"
TITLE_BLOCK = "ticket_title"
TITLE_INPUT = "title"
ASSIGNEE_BLOCK = "ticket_assignee_block"
ASSIGNEE = "ticket_assignee"
ACK_BUTTON = "ack_button"
"""The button on a posted ticket (`handlers/slack.py` answers it)."""
SEARCH_COMMAND = "searchTickets"
ACK_VERB = "ackTicket"


@dataclass(frozen=True)
class Ticket:
    id: str
    title: str
    status: str = "open"


TICKETS = (
    Ticket("101", "Printer on fire"),
    Ticket("102", "VPN drops every hour"),
    Ticket("103", "Printer out of toner"),
    Ticket("104", "New laptop for Grace", status="closed"),
)
PEOPLE = (
    ("Ada Lovelace", "U0ADA"),
    ("Alan Turing", "U0ALAN"),
    ("Grace Hopper", "U0GRACE"),
    ("Katherine Johnson", "U0KATHERINE"),
    ("Margaret Hamilton", "U0MARGARET"),
)


# -- Slack --------------------------------------------------------------------------------------------


@bot.slack.command("/ticket")
async def open_ticket_modal(ctx: SlackContext) -> None:
    """Say (only to the user, through the command's response_url) that the form is coming, and open the
    ticket modal with the command's text as its title."""
    command = ctx.command
    if not command.trigger_id:
        raise DeadLetterError("NoTriggerId", "/ticket without a trigger_id: no modal can be opened")
    title = command.text.strip()
    await ctx.respond(f"Opening a ticket form{f' for: {title}' if title else ''}", response_type="ephemeral")
    await ctx.client.open_view(command.trigger_id, ticket_modal(title, command.channel_id))
    ctx.log.info("ticket modal opened for %s", command.user_id)


@bot.slack.view(TICKET_MODAL)
async def submit_ticket(ctx: SlackContext) -> ViewErrors | ViewClear | None:
    """Refuse an empty title (the modal shows the error), else post the ticket and close the modal."""
    if ctx.payload.get("type") != "view_submission":
        return None  # view_closed: nothing to answer
    view = ctx.view
    title = str(view.value(TITLE_BLOCK, TITLE_INPUT) or "").strip()
    if not title:
        return ViewErrors({TITLE_BLOCK: "Give the ticket a title"})
    channel = _metadata(view.private_metadata).get("channel")
    if isinstance(channel, str) and channel:
        assignee = view.value(ASSIGNEE_BLOCK, ASSIGNEE)
        text = f"Ticket opened by <@{ctx.user_id}>: {title}" + (f" (assigned to <@{assignee}>)" if assignee else "")
        await ctx.client.post_message(channel, text, blocks=ticket_blocks(text))
    return ViewClear()


@bot.slack.options(ASSIGNEE)
async def assignee_options(ctx: SlackContext) -> Options:
    """The people whose name contains what was typed (all of them for an empty query)."""
    typed = ctx.suggestion.value.strip().lower()
    return Options([Option(name, user_id) for name, user_id in PEOPLE if typed in name.lower()])


@bot.slack.command("/ticket-count")
async def ticket_count(ctx: SlackContext) -> CommandReply:
    """Answered in the ack, visible only to the user who asked."""
    count = sum(1 for ticket in TICKETS if ticket.status == "open")
    return CommandReply(f"{count} open tickets", response_type="ephemeral")


def ticket_modal(title: str = "", channel: str | None = None) -> dict[str, Any]:
    title_input: dict[str, Any] = {"type": "plain_text_input", "action_id": TITLE_INPUT}
    if title:
        title_input["initial_value"] = title[:150]
    return {
        "type": "modal",
        "callback_id": TICKET_MODAL,
        "title": {"type": "plain_text", "text": "New ticket"},
        "submit": {"type": "plain_text", "text": "Open"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "private_metadata": json.dumps({"channel": channel} if channel else {}),
        "blocks": [
            {
                "type": "input",
                "block_id": TITLE_BLOCK,
                "optional": True,  # checked by the bot (`submit_ticket`), so that the answer shows the error
                "label": {"type": "plain_text", "text": "Title"},
                "element": title_input,
            },
            {
                "type": "input",
                "block_id": ASSIGNEE_BLOCK,
                "optional": True,
                "label": {"type": "plain_text", "text": "Assignee"},
                "element": {
                    "type": "external_select",
                    "action_id": ASSIGNEE,
                    "min_query_length": 0,
                    "placeholder": {"type": "plain_text", "text": "Type a name"},
                },
            },
        ],
    }


def ticket_blocks(text: str) -> list[dict[str, Any]]:
    return [
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        {
            "type": "actions",
            "elements": [
                {
                    "type": "button",
                    "action_id": ACK_BUTTON,
                    "text": {"type": "plain_text", "text": "Acknowledge"},
                    "style": "primary",
                    "value": "ack",
                }
            ],
        },
    ]


def _metadata(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# -- Teams --------------------------------------------------------------------------------------------


@bot.teams.invoke("composeExtension/query")
async def search_tickets(ctx: TeamsContext) -> MessageExtensionResult | None:
    """The search message extension: a result card per ticket whose title contains the query text."""
    value = ctx.payload.get("value")
    query: dict[str, Any] = value if isinstance(value, dict) else {}
    if query.get("commandId") != SEARCH_COMMAND:
        return None
    text = _query_text(query).lower()
    raw_options = query.get("queryOptions")
    options: dict[str, Any] = raw_options if isinstance(raw_options, dict) else {}
    skip = _int(options.get("skip"), 0)
    count = _int(options.get("count"), 25)
    found = [ticket for ticket in TICKETS if text in ticket.title.lower()][skip : skip + count]
    return MessageExtensionResult(
        [card_attachment(ticket_card(t), preview=preview_card(f"#{t.id} {t.title}", t.status)) for t in found]
    )


@bot.teams.invoke("adaptiveCard/action")
async def acknowledge_ticket(ctx: TeamsContext) -> AdaptiveCardResponse | None:
    """`Action.Execute` with verb `ackTicket`: the card comes back updated (acknowledged, no button)."""
    value = ctx.payload.get("value")
    action = value.get("action") if isinstance(value, dict) else None
    if not isinstance(action, dict) or action.get("verb") != ACK_VERB:
        return None
    raw_data = action.get("data")
    data: dict[str, Any] = raw_data if isinstance(raw_data, dict) else {}
    ticket_id = str(data.get("ticketId") or "")
    ticket = next((t for t in TICKETS if t.id == ticket_id), Ticket(ticket_id or "?", "(unknown ticket)"))
    sender = ctx.payload.get("from")
    who = str(sender.get("name") or "someone") if isinstance(sender, dict) else "someone"
    ctx.log.info("ticket %s acknowledged", ticket.id)
    return AdaptiveCardResponse(ticket_card(ticket, acknowledged_by=who))


def ticket_card(ticket: Ticket, *, acknowledged_by: str | None = None) -> dict[str, Any]:
    status = f"Acknowledged by {acknowledged_by}" if acknowledged_by else f"Status: {ticket.status}"
    card: dict[str, Any] = {
        "type": "AdaptiveCard",
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "version": "1.4",
        "body": [
            {"type": "TextBlock", "text": f"#{ticket.id} {ticket.title}", "weight": "Bolder", "wrap": True},
            {"type": "TextBlock", "text": status, "isSubtle": True, "wrap": True},
        ],
    }
    if acknowledged_by is None:
        card["actions"] = [
            {"type": "Action.Execute", "title": "Acknowledge", "verb": ACK_VERB, "data": {"ticketId": ticket.id}}
        ]
    return card


def _query_text(query: dict[str, Any]) -> str:
    """The typed text: the parameter named `query` (else the first), empty on the initial run."""
    parameters = [p for p in query.get("parameters") or [] if isinstance(p, dict)]
    chosen = next((p for p in parameters if p.get("name") == "query"), parameters[0] if parameters else None)
    if chosen is None or chosen.get("name") == "initialRun":
        return ""
    return str(chosen.get("value") or "").strip()


def _int(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 1000 else default
