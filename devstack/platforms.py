"""The sandbox platforms `python -m worker dev` runs when no real credentials are configured.

Each adapter starts a sandbox on loopback (port 0), says which settings point the worker and the
function app at it, and plays a short scripted conversation whose replies close the loop:

- Slack: a user mentions the bot (answered in its thread), runs `/ticket` (answered through its
  `response_url` with a button) and clicks that button (the message is updated);
- Teams: a user writes to the bot (answered as a reply) and clicks an Adaptive Card action (an invoke,
  answered in the conversation).
"""

from __future__ import annotations

import contextlib
from typing import Self

from devstack.sandbox.slack import SlackSandbox
from devstack.sandbox.teams import TeamsSandbox

_SLACK_SCRIPT = ("mention", "command", "action")
_TEAMS_SCRIPT = ("message", "card")
_NOT_REPLIES = frozenset({"auth.test"})


class SlackDemo:
    name = "slack"
    sandbox = True

    def __init__(self, sandbox: SlackSandbox) -> None:
        self._sandbox = sandbox
        self.description = f"sandbox Slack at {sandbox.api_url} (Socket Mode + Web API)"

    @classmethod
    async def start(cls, stack: contextlib.AsyncExitStack) -> Self:
        return cls(await stack.enter_async_context(SlackSandbox()))

    def settings(self) -> dict[str, str]:
        return {
            "SLACK_APP_TOKEN": self._sandbox.app_token,
            "SLACK_API_URL": self._sandbox.api_url,
            "SLACK_BOT_TOKEN": self._sandbox.bot_token,
        }

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


class TeamsDemo:
    name = "teams"
    sandbox = True

    def __init__(self, sandbox: TeamsSandbox) -> None:
        self._sandbox = sandbox
        self.description = f"sandbox Teams at {sandbox.base_url} (socket mode over SignalR + Bot Connector)"

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
