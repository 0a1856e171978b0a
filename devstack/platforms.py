"""The sandbox platforms `python -m devstack dev` runs when no real credentials are configured.

Each adapter starts a sandbox on loopback (port 0), says which settings point the worker and the
function app at it, plays a short scripted conversation whose replies close the loop, tells a person
how to send their own message (`injection`: ready-to-paste curl commands) and hands the console what
the bot said (`take_replies`):

- Slack: a user mentions the bot (answered in its thread), runs `/ticket` (answered through its
  `response_url` with a button) and clicks that button (the message is updated);
- Teams: a user writes to the bot (answered as a reply) and clicks an Adaptive Card action (an invoke,
  answered in the conversation).
"""

from __future__ import annotations

import contextlib
import json
from typing import Self

from devstack.sandbox.slack import SlackSandbox
from devstack.sandbox.teams import TeamsSandbox

_SLACK_SCRIPT = ("mention", "command", "action")
_TEAMS_SCRIPT = ("message", "card")
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
        self._shown = 0
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
        ]

    async def send(self, index: int) -> None:
        step = _SLACK_SCRIPT[index % len(_SLACK_SCRIPT)]
        if step == "mention":
            await self._sandbox.send_user_message(f"hello from the sandbox ({index + 1})")
        elif step == "command":
            await self._sandbox.send_slash_command("/ticket", f"printer on fire ({index + 1})")
        else:
            await self._sandbox.send_block_action("ack_button", "ack")

    def expected_replies(self, sent: int) -> int:
        return sent  # one Web API call or response_url post per interaction

    def replies(self) -> int:
        return sum(1 for call in self._sandbox.replies if call.method not in _NOT_REPLIES)

    def take_replies(self) -> list[str]:
        """What the bot said since the last call, one text per reply."""
        calls = self._sandbox.replies[self._shown :]
        self._shown += len(calls)
        return [
            (call.text or "(no text)") + _SLACK_MARKS.get(call.method, "")
            for call in calls
            if call.method not in _NOT_REPLIES
        ]


class TeamsDemo:
    name = "teams"
    title = "Teams"
    sandbox = True

    def __init__(self, sandbox: TeamsSandbox) -> None:
        self._sandbox = sandbox
        self._shown = 0
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
            curl_post(f"{base}/_sandbox/card-actions", {"verb": "approve", "data": {"choice": "yes"}}),
        ]

    async def send(self, index: int) -> None:
        step = _TEAMS_SCRIPT[index % len(_TEAMS_SCRIPT)]
        if step == "message":
            await self._sandbox.send_user_message(f"hello from the sandbox ({index + 1})")
        else:
            await self._sandbox.send_card_action({"choice": "yes"}, verb="approve")

    def expected_replies(self, sent: int) -> int:
        return sent

    def replies(self) -> int:
        return len(self._sandbox.replies)

    def take_replies(self) -> list[str]:
        """What the bot said since the last call, one text per reply."""
        replies = self._sandbox.replies[self._shown :]
        self._shown += len(replies)
        return [(reply.text or "(no text)") + _TEAMS_MARKS.get(reply.method, "") for reply in replies]
