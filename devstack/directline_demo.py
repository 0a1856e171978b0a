"""The Direct Line bridge in `python -m devstack dev --directline` (what `make dev` runs): a sandbox Direct Line
agent (`devstack.sandbox.directline`) bridged into the sandbox Slack.

The worker holds the agent's conversations (the `directline` connector); the function app's example bridge
(`handlers/bridge.py`, on because `DIRECTLINE_SECRET` is set) sends each Slack mention to the agent as the Slack
user and posts the agent's answers in the same thread. The scripted demo mentions the bot in Slack with words the
sandbox agent acts on (`hello`, `card`, `suggest`, `late`); the console shows both sides of the exchange:

      directline → agent: hello agent (1)      (what the Slack user said, as the bridge posted it)
      directline ← agent: Echo: hello agent (1)

Needs the Slack sandbox (with a real Slack, point `DIRECTLINE_*` at a real bot and run the bridge as is).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Self

from devstack.sandbox.directline import DirectLineSandbox
from devstack.sandbox.slack import SlackSandbox
from functions.directline import to_slack

if TYPE_CHECKING:
    from devstack.dev import PlatformChoice

_SCRIPT = ("hello agent", "card", "suggest", "late")


class DirectLineDemo:
    name = "directline"
    title = "Direct Line"
    sandbox = True

    def __init__(self, sandbox: DirectLineSandbox, slack: SlackSandbox, folder: Path) -> None:
        self._sandbox = sandbox
        self._slack = slack
        self._folder = folder
        self._shown = 0
        self.url = sandbox.base_url
        self.description = "Direct Line 3.0 with a scripted agent, bridged into the sandbox Slack"

    @classmethod
    async def start(cls, stack: contextlib.AsyncExitStack, slack: SlackSandbox, folder: Path) -> Self:
        sandbox = await stack.enter_async_context(DirectLineSandbox(late_delay=2.0, proactive_delay=3.0))
        return cls(sandbox, slack, folder)

    def settings(self) -> dict[str, str]:
        return {
            "DIRECTLINE_SECRET": self._sandbox.secret,
            "DIRECTLINE_BASE_URL": self._sandbox.base_url,
            "DIRECTLINE_STORE": "sqlite",
            "DIRECTLINE_STORE_PATH": str(self._folder / "directline.db"),
            "DIRECTLINE_SCAN_SECONDS": "0.5",
        }

    def injection(self) -> list[str]:
        """Talk to the agent yourself: mention the bot in the sandbox Slack (it answers in the thread)."""
        events = f"{self._slack.api_url}_sandbox/events"
        return [
            f"curl -X POST {events} -H 'Content-Type: application/json' "
            '-d \'{"kind":"message","text":"card"}\'   # the agent answers with an Adaptive Card'
        ]

    async def send(self, index: int) -> None:
        word = _SCRIPT[index % len(_SCRIPT)]
        await self._slack.send_user_message(f"{word} ({index + 1})" if word == "hello agent" else word)

    def expected_replies(self, sent: int) -> int:
        """One answer in Slack for each scripted message this demo sent (the Slack demo's own mentions reach the
        agent too, and are shown, but `--once` waits only for the answers to these)."""
        return sent

    def _answered(self) -> int:
        """Scripted messages of this demo whose agent answer (the next bot message of the conversation) is posted
        in Slack: a `late` one counts once its late answer is there."""
        posted = {c.body.get("text") for c in self._slack.replies if c.method == "chat.postMessage"}
        answered = 0
        for conversation in list(self._sandbox.conversations.values()):
            waiting = False
            for activity in conversation.activities:
                if activity.get("type") != "message":
                    continue
                if (activity.get("from") or {}).get("role") != "bot":
                    text = str(activity.get("text") or "")
                    waiting = any(text == w or text.startswith(f"{w} (") for w in _SCRIPT)
                    continue
                message = to_slack(activity)
                if waiting and message is not None and message.text in posted:
                    answered += 1
                    waiting = False
        return answered

    def _exchange(self) -> list[tuple[str, str]]:
        said: list[tuple[str, str]] = []
        for conversation in list(self._sandbox.conversations.values()):
            for activity in conversation.activities:
                if activity.get("type") != "message":
                    continue
                role = (activity.get("from") or {}).get("role")
                if role == "bot":
                    message = to_slack(activity)
                    said.append(("bot", message.text if message is not None else ""))
                else:
                    said.append(("user", str(activity.get("text") or activity.get("value") or "")))
        return said

    def replies(self) -> int:
        """Scripted messages answered in Slack (see `_answered`)."""
        return self._answered()

    def take_replies(self) -> list[str]:
        exchange = self._exchange()
        lines = [f"← agent: {text}" if who == "bot" else f"→ agent: {text}" for who, text in exchange[self._shown :]]
        self._shown = len(exchange)
        return lines


async def choose(
    args: object, env: Mapping[str, str], choices: list[PlatformChoice], stack: contextlib.AsyncExitStack, folder: Path
) -> PlatformChoice | None:
    """What `dev --directline` does: the sandbox agent bridged into the sandbox Slack, or why not."""
    from devstack.dev import PlatformChoice

    if not getattr(args, "directline", False):
        return None
    if env.get("DIRECTLINE_SECRET"):
        return PlatformChoice("directline", "Direct Line", "real", "DIRECTLINE_SECRET is set")
    slack = next((c.demo for c in choices if c.name == "slack" and c.demo is not None), None)
    sandbox = getattr(slack, "_sandbox", None)
    if not isinstance(sandbox, SlackSandbox):
        return PlatformChoice("directline", "Direct Line", "off", "the bridge demo needs the sandbox Slack")
    demo = await DirectLineDemo.start(stack, sandbox, folder)
    return PlatformChoice("directline", "Direct Line", "sandbox", "DIRECTLINE_SECRET is not set", demo)
