"""The sandbox platforms `python -m devstack dev` runs when no real credentials are configured.

Each adapter starts a sandbox on loopback (port 0), says which settings point the worker and the
function app at it, plays a short scripted conversation whose replies close the loop, tells a person
how to send their own message (`injection`: ready-to-paste curl commands) and hands the console what
the bot said (`take_replies`):

- Slack: a user mentions the bot (answered in its thread), asks `/ticket-count` (answered in the ack),
  runs `/ticket` (an ephemeral note through its `response_url`, and the modal), submits the modal without
  a title (answered in the ack with `errors`) and with one (`clear`, and the ticket is posted), types into
  the assignee picker (answered in the ack with `options`) and clicks the ticket's button (the message is
  updated);
- Teams: a user writes to the bot (answered as a reply), searches the tickets message extension (the
  invoke answered with result cards), acknowledges a ticket card (`Action.Execute`, answered with the
  updated card) and clicks another card action (answered in the conversation).

What the bot answered inside the platform's deadline (Slack ack payloads, Teams invoke bodies) counts as a
reply and is shown on the console like the Web API and Bot Connector calls.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any, Self

from devstack.sandbox.slack import SlackSandbox
from devstack.sandbox.teams import TeamsSandbox

_SLACK_SCRIPT = ("mention", "count", "ticket", "untitled", "titled", "assignee", "button")
_SLACK_REPLIES = {"mention": 1, "count": 1, "ticket": 2, "untitled": 1, "titled": 2, "assignee": 1, "button": 1}
"""Replies each step brings: Web API calls and response_url posts, and an answer in the ack."""
_TEAMS_SCRIPT = ("message", "search", "acknowledge", "card")
_TICKET_METADATA = json.dumps({"channel": "C0SANDBOX"})
_WAIT = {"wait": True}
"""The injection endpoints then answer with what the bot answered in the ack or the invoke."""
_NOT_REPLIES = frozenset({"auth.test"})
_SLACK_MARKS = {"chat.update": " (edited)", "views.open": " (modal)", "views.update": " (modal updated)"}
_TEAMS_MARKS = {"PUT": " (edited)", "DELETE": " (deleted)"}


def curl_post(url: str, body: dict[str, object]) -> str:
    """A curl command that POSTs `body` as JSON (single-quoted for a POSIX shell)."""
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).replace("'", "'\\''")
    return f"curl -X POST {url} -H 'Content-Type: application/json' -d '{data}'"


class SlackDemo:
    name = "slack"
    title = "Slack"
    sandbox = True

    def __init__(self, sandbox: SlackSandbox) -> None:
        self._sandbox = sandbox
        self._shown_calls = 0
        self._shown_answers = 0
        self.url = sandbox.api_url
        self.description = "Socket Mode + Web API"

    @classmethod
    async def start(cls, stack: contextlib.AsyncExitStack) -> Self:
        return cls(await stack.enter_async_context(SlackSandbox()))

    def settings(self) -> dict[str, str]:
        return {
            "SLACK_APP_TOKEN": self._sandbox.app_token,
            "SLACK_API_URL": self._sandbox.api_url,
            "SLACK_BOT_TOKEN": self._sandbox.bot_token,
        }

    def injection(self) -> list[str]:
        """Commands that send a message (an app_mention) and a slash command as a user would."""
        events = f"{self._sandbox.api_url}_sandbox/events"
        return [
            curl_post(events, {"kind": "message", "text": "hello"}),
            curl_post(events, {"kind": "command", "command": "/ticket", "text": "printer on fire"}),
            curl_post(events, {"kind": "command", "command": "/ticket-count", **_WAIT}),
            curl_post(
                events, {"kind": "block_suggestion", "action_id": "ticket_assignee", "value": "gr", "wait": True}
            ),
        ]

    async def send(self, index: int) -> None:
        step = _SLACK_SCRIPT[index % len(_SLACK_SCRIPT)]
        n = index + 1
        sandbox = self._sandbox
        if step == "mention":
            await sandbox.send_user_message(f"hello from the sandbox ({n})")
        elif step == "count":
            await sandbox.send_slash_command("/ticket-count")
        elif step == "ticket":
            await sandbox.send_slash_command("/ticket", f"printer on fire ({n})")
        elif step in ("untitled", "titled"):
            title = f"printer on fire ({n})" if step == "titled" else ""
            values = {"ticket_title": {"title": title}}
            await sandbox.send_view_submission("ticket_modal", values, private_metadata=_TICKET_METADATA)
        elif step == "assignee":
            await sandbox.send_block_suggestion("ticket_assignee", "gr", block_id="ticket_assignee_block")
        else:
            await sandbox.send_block_action("ack_button", "ack")

    def expected_replies(self, sent: int) -> int:
        """Replies the first `sent` scripted steps bring (Web API calls, response_url posts, ack answers)."""
        return sum(_SLACK_REPLIES[_SLACK_SCRIPT[i % len(_SLACK_SCRIPT)]] for i in range(sent))

    def _answers(self) -> list[Any]:
        return [ack for ack in self._sandbox.acks if ack.payload is not None and not ack.late]

    def replies(self) -> int:
        calls = sum(1 for call in self._sandbox.replies if call.method not in _NOT_REPLIES)
        return calls + len(self._answers())

    def take_replies(self) -> list[str]:
        """What the bot said since the last call, one text per reply (answers in the ack included)."""
        calls = [call for call in self._sandbox.replies if call.method not in _NOT_REPLIES]
        answers = self._answers()
        said = [(call.text or "(no text)") + _SLACK_MARKS.get(call.method, "") for call in calls[self._shown_calls :]]
        said += [f"{_describe_slack_answer(ack.payload)} (in the ack)" for ack in answers[self._shown_answers :]]
        self._shown_calls, self._shown_answers = len(calls), len(answers)
        return said


class TeamsDemo:
    name = "teams"
    title = "Teams"
    sandbox = True

    def __init__(self, sandbox: TeamsSandbox) -> None:
        self._sandbox = sandbox
        self._shown_calls = 0
        self._shown_answers = 0
        self.url = sandbox.base_url
        self.description = "socket mode over SignalR + Bot Connector"

    @classmethod
    async def start(cls, stack: contextlib.AsyncExitStack) -> Self:
        return cls(await stack.enter_async_context(TeamsSandbox()))

    def settings(self) -> dict[str, str]:
        return {
            "TEAMS_APP_ID": self._sandbox.app_id,
            "TEAMS_TENANT_ID": self._sandbox.tenant_id,
            "TEAMS_BASE_URL": self._sandbox.base_url,
            "TEAMS_STATIC_TOKEN": self._sandbox.bot_token,
            "BOT_CONNECTOR_ALLOWED_HOSTS": "127.0.0.1",
        }

    def injection(self) -> list[str]:
        """Commands that send a message and an Adaptive Card action as a user would."""
        base = self._sandbox.base_url
        return [
            curl_post(f"{base}/_sandbox/messages", {"text": "hello"}),
            curl_post(
                f"{base}/_sandbox/compose-query", {"commandId": "searchTickets", "text": "printer", "wait": True}
            ),
            curl_post(
                f"{base}/_sandbox/card-actions", {"verb": "ackTicket", "data": {"ticketId": "101"}, "wait": True}
            ),
        ]

    async def send(self, index: int) -> None:
        step = _TEAMS_SCRIPT[index % len(_TEAMS_SCRIPT)]
        sandbox = self._sandbox
        if step == "message":
            await sandbox.send_user_message(f"hello from the sandbox ({index + 1})")
        elif step == "search":
            await sandbox.send_compose_query("searchTickets", "printer")
        elif step == "acknowledge":
            await sandbox.send_card_action({"ticketId": "101"}, verb="ackTicket")
        else:
            await sandbox.send_card_action({"choice": "yes"}, verb="approve")

    def expected_replies(self, sent: int) -> int:
        return sent  # one reply, or one invoke answer, per interaction

    def _answers(self) -> list[Any]:
        return [r for r in self._sandbox.invoke_responses if r.body is not None and r.status == 200 and not r.late]

    def replies(self) -> int:
        return len(self._sandbox.replies) + len(self._answers())

    def take_replies(self) -> list[str]:
        """What the bot said since the last call, one text per reply (invoke answers included)."""
        replies, answers = self._sandbox.replies, self._answers()
        said = [(r.text or "(no text)") + _TEAMS_MARKS.get(r.method, "") for r in replies[self._shown_calls :]]
        said += [f"{_describe_teams_answer(r.name, r.body)} (invoke answer)" for r in answers[self._shown_answers :]]
        self._shown_calls, self._shown_answers = len(replies), len(answers)
        return said


def _describe_slack_answer(payload: Any) -> str:
    if not isinstance(payload, dict):
        return "(an answer)"
    if "text" in payload:
        return str(payload["text"])
    if payload.get("response_action") == "errors":
        errors = payload.get("errors") or {}
        return "errors: " + "; ".join(f"{k}: {v}" for k, v in errors.items())
    if "response_action" in payload:
        return f"response_action {payload['response_action']}"
    if isinstance(payload.get("options"), list):
        names = [str((o.get("text") or {}).get("text", "")) for o in payload["options"] if isinstance(o, dict)]
        return f"{len(names)} option(s): " + ", ".join(names)
    return "(an answer)"


def _describe_teams_answer(name: str | None, body: Any) -> str:
    if not isinstance(body, dict):
        return f"{name}: (an answer)"
    extension = body.get("composeExtension")
    if isinstance(extension, dict):
        return f"{name}: {len(extension.get('attachments') or [])} result card(s)"
    if "statusCode" in body:
        if "card" in str(body.get("type")):
            return f"{name}: an updated card"
        return f"{name}: {body.get('value')}"
    return f"{name}: (an answer)"
