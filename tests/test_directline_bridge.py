"""The bridge end to end on loopback: sandbox Slack → worker (Slack socket) → local queue → the bridge's function
(local functions host) → sandbox Direct Line agent → worker (Direct Line socket) → queue → the bridge's function →
the same Slack thread. Cards, suggested actions, a button click back to the agent, typing, late and proactive
answers; and `ctx.directline` for a handler of one's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest

from devstack.funchost import LocalFunctionsHost
from devstack.sandbox.directline import DirectLineSandbox
from devstack.sandbox.slack import RecordedCall, SlackSandbox
from devstack.sandbox.teams import TeamsSandbox
from functions import Bot, SlackContext
from functions.directline import KEY_PARTITION, DirectLineBridgeSettings, chat_user, slack_key
from functions.settings import FunctionSettings
from functions.triggers import register_routes
from handlers.bridge import Bridge, install
from localqueue import LocalQueueBackend
from shared.errors import ConfigurationError
from worker.runtime import Worker
from worker.settings import load_settings

FAST_DIRECTLINE = {
    "DIRECTLINE_SCAN_SECONDS": "0.05",
    "DIRECTLINE_FLUSH_SECONDS": "0.05",
    "DIRECTLINE_LEASE_SECONDS": "2",
    "DIRECTLINE_RECONNECT_MIN_SECONDS": "0.01",
    "DIRECTLINE_RECONNECT_MAX_SECONDS": "0.05",
}


@dataclass
class Stack:
    slack: SlackSandbox
    directline: DirectLineSandbox
    worker: Worker
    host: LocalFunctionsHost
    bridge: Bridge | None
    env: dict[str, str]

    def posts(self, thread: str | None = None) -> list[RecordedCall]:
        return [
            r
            for r in self.slack.replies
            if r.method == "chat.postMessage" and (thread is None or r.body.get("thread_ts") == thread)
        ]

    async def until(self, predicate: Callable[[], bool], within: float = 15.0, what: str = "it") -> None:
        deadline = time.monotonic() + within
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {within} s waiting for {what}: {self.slack.replies[-3:]}")
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def local_stack(tmp_path: Path, bot: Bot, *, with_bridge: bool = True, **sandbox: Any) -> AsyncIterator[Stack]:
    async with SlackSandbox() as slack, DirectLineSandbox(**sandbox) as directline:
        env = {
            "SLACK_APP_TOKEN": slack.app_token,
            "SLACK_API_URL": slack.api_url,
            "SLACK_BOT_TOKEN": slack.bot_token,
            "DIRECTLINE_SECRET": directline.secret,
            "DIRECTLINE_BASE_URL": directline.base_url,
            "DIRECTLINE_STORE_PATH": str(tmp_path / "directline.db"),
            "RELAYBUS_LOCAL_QUEUE_PATH": str(tmp_path / "queue.db"),
            "RELAYBUS_STATE_PATH": str(tmp_path / "state.db"),
            "RELAYBUS_HTTP_PORT": "0",
            **FAST_DIRECTLINE,
        }
        bridge = install(bot, DirectLineBridgeSettings.model_validate(env)) if with_bridge else None
        worker = Worker(load_settings(env), serve_http=False)
        app = func.FunctionApp()
        clients = register_routes(app, bot, FunctionSettings.from_env(env))
        clients.directline_settings = DirectLineBridgeSettings.model_validate(env)  # else read from os.environ
        assert isinstance(worker.backend, LocalQueueBackend)
        host = LocalFunctionsHost(app, worker.backend, None, env, poll_interval=0.01)
        stopping = asyncio.Event()
        worker_task = asyncio.create_task(worker.run(stopping))
        await slack.wait_connections(1, within=15)  # the worker opened the queue file: the host may too
        host_task = asyncio.create_task(host.run(stopping))
        try:
            yield Stack(slack, directline, worker, host, bridge, env)
        finally:
            stopping.set()
            async with asyncio.timeout(30):
                await asyncio.gather(worker_task, host_task, return_exceptions=True)
            await clients.aclose()
            for client in list(bridge._clients.values()) if bridge else []:
                await client.aclose()
        assert worker_task.result().ok


async def test_a_mention_goes_to_the_agent_and_its_answers_come_back_in_the_same_thread(tmp_path: Path) -> None:
    async with local_stack(tmp_path, Bot(), late_delay=0.8, proactive_delay=0.8) as s:
        await s.slack.send_user_message("hello there")
        await s.until(lambda: any(r.body.get("text") == "Echo: hello there" for r in s.posts()), what="the echo")
        [answer] = s.posts()
        thread = str(answer.body["thread_ts"])
        assert answer.body["channel"] == "C0SANDBOX"
        # the agent heard the Slack user, under a stable bridge id, not the bot's own messages
        [conversation] = s.directline.conversations.values()
        [said] = s.directline.user_activities(conversation.id)
        assert said["text"] == "hello there"
        assert said["from"]["id"] == chat_user("slack", s.slack.team_id, "U0SANDBOXUSER").id

        # a second mention in the thread: the same agent conversation
        await s.slack.send_event(_mention(s.slack, "card", thread))
        await s.until(lambda: len(s.posts(thread)) == 2, what="the card")
        card = s.posts(thread)[-1].body
        kinds = [b["type"] for b in card["blocks"]]
        assert "header" in kinds and "section" in kinds and kinds[-1] == "actions"
        buttons = card["blocks"][-1]["elements"]
        submit = next(b for b in buttons if "value" in b)
        assert any("url" in b for b in buttons)  # Action.OpenUrl as a link button
        assert len(s.directline.conversations) == 1

        # the click goes back to the agent as a `value` message, the answer to the same thread
        await s.slack.deliver("interactive", _click(s.slack, submit, thread, s.posts(thread)[-1]))
        await s.until(lambda: any("You chose" in r.text for r in s.posts(thread)), what="the submit's answer")
        clicked = s.directline.user_activities(conversation.id)[-1]
        assert clicked["value"] and "text" not in clicked

        # suggested actions → buttons
        await s.slack.send_event(_mention(s.slack, "suggest", thread))
        await s.until(lambda: any(r.body.get("text") == "Pick one:" for r in s.posts(thread)), what="suggestions")
        suggestion = s.posts(thread)[-1].body["blocks"][-1]
        assert [b["text"]["text"] for b in suggestion["elements"]] == ["Red", "Blue"]

        # late and proactive answers: no five-second window
        await s.slack.send_event(_mention(s.slack, "late", thread))
        await s.slack.send_event(_mention(s.slack, "proactive", thread))
        await s.until(
            lambda: {"Here is the late answer.", "A proactive message."} <= {r.text for r in s.posts(thread)},
            what="the late and the proactive answer",
        )
        # typing (streamed only, never replayed: the socket is up by now) as the thread's status
        typing = [r for r in s.slack.replies if r.method == "assistant.threads.setStatus"]
        assert typing and {r.body["thread_ts"] for r in typing} == {thread}
        # each agent message posted exactly once (the worker's watermark is the ack, MessageId the activity id)
        texts = [r.text for r in s.posts(thread)]
        assert len(texts) == len(set(texts)) == len(s.directline.bot_activities(conversation.id)) - _typing(s)
        assert s.bridge is not None and s.bridge.stats["to_slack"] == len(texts)


async def test_an_answer_too_large_for_slack_is_cut_and_counted_and_the_conversation_goes_on(tmp_path: Path) -> None:
    async with local_stack(tmp_path, Bot()) as s:
        await s.slack.send_user_message("big")
        await s.until(lambda: len(s.posts()) == 1, what="the big answer")
        thread = str(s.posts()[0].body["thread_ts"])
        assert len(s.posts()[0].body["text"]) <= 40_000
        await s.slack.send_event(_mention(s.slack, "still there?", thread))
        await s.until(lambda: any(r.text == "Echo: still there?" for r in s.posts(thread)), what="the next answer")
        assert s.bridge is not None and s.bridge.stats["too_large"] == 1  # 50,000 > 40,000 characters: cut
        assert s.bridge.stats["not_shown"] == 0


async def test_ctx_directline_starts_posts_and_ends_a_conversation_per_key(tmp_path: Path) -> None:
    bot = Bot()
    keys: list[str] = []

    @bot.slack.event("app_mention")
    async def ask(ctx: SlackContext) -> None:
        thread = ctx.event.thread_ts or ctx.event.ts or ""
        key = slack_key(ctx.envelope.tenant, ctx.channel_id or "", thread)
        user = chat_user("slack", ctx.envelope.tenant, ctx.event.user or "")
        text = ctx.text(strip_mentions=True)
        if text == "bye":
            await ctx.directline.end(key, user=user)
        else:
            await ctx.directline.post(key, user=user, text=text, chat={"platform": "slack"})
        keys.append(key)

    async with local_stack(tmp_path, bot, with_bridge=False) as s:
        await s.slack.send_user_message("one")
        await s.slack.send_user_message("two")
        await s.until(lambda: len(keys) == 2, what="two posts")
        assert len(s.directline.conversations) == 2  # one conversation per key (two threads)
        from functions.state import state_store

        store = state_store(FunctionSettings.from_env(s.env))
        try:
            mapped = {k: await store.get(KEY_PARTITION, k) for k in keys}
            assert {e.value["conversation_id"] for e in mapped.values() if e} == set(s.directline.conversations)
            first_thread = keys[0].rsplit(":", 1)[1]
            first = mapped[keys[0]]
            assert first is not None
            cid = first.value["conversation_id"]
            await s.slack.send_event(_mention(s.slack, "again", first_thread))
            await s.until(lambda: len(keys) == 3, what="a post in the same thread")
            assert len(s.directline.conversations) == 2  # resumed, not started again
            texts = [a["text"] for a in s.directline.user_activities(cid)]
            assert len(texts) == 2 and texts[0] in ("one", "two") and texts[1] == "again"
            user_ids = {a["from"]["id"] for c in s.directline.conversations for a in s.directline.user_activities(c)}
            assert user_ids == {chat_user("slack", s.slack.team_id, "U0SANDBOXUSER").id}  # stable per chat user
            await s.slack.send_event(_mention(s.slack, "bye", first_thread))
            await s.until(lambda: len(keys) == 4, what="the end")
            assert s.directline.user_activities(cid)[-1]["type"] == "endOfConversation"
            assert await store.get(KEY_PARTITION, keys[0]) is None
        finally:
            await store.aclose()


def test_ctx_directline_without_a_secret_names_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from functions.context import ReplyClients

    monkeypatch.delenv("DIRECTLINE_SECRET", raising=False)
    clients = ReplyClients(FunctionSettings.from_env({"RELAYBUS_STATE_PATH": str(tmp_path / "s.db")}))

    async def use() -> None:
        _ = clients.directline

    with pytest.raises(ConfigurationError) as info:
        asyncio.run(use())
    assert info.value.setting == "DIRECTLINE_SECRET"


# --- helpers ------------------------------------------------------------------------------------------------


def _typing(s: Stack) -> int:
    return sum(
        1 for c in s.directline.conversations for a in s.directline.bot_activities(c) if a.get("type") == "typing"
    )


def _mention(slack: SlackSandbox, text: str, thread: str) -> dict[str, Any]:
    ts = f"{time.time():.6f}"
    return {
        "type": "app_mention",
        "user": "U0SANDBOXUSER",
        "text": f"<@{slack.bot_user_id}> {text}",
        "ts": ts,
        "thread_ts": thread,
        "channel": "C0SANDBOX",
        "event_ts": ts,
    }


def _click(slack: SlackSandbox, button: dict[str, Any], thread: str, message: RecordedCall) -> dict[str, Any]:
    """A `block_actions` payload for a click on `button` of a bot message in `thread` (as Slack sends it)."""
    return {
        "type": "block_actions",
        "user": {"id": "U0SANDBOXUSER", "team_id": slack.team_id},
        "api_app_id": slack.app_id,
        "team": {"id": slack.team_id},
        "channel": {"id": "C0SANDBOX"},
        "container": {
            "type": "message",
            "message_ts": f"{time.time():.6f}",
            "thread_ts": thread,
            "channel_id": "C0SANDBOX",
            "is_ephemeral": False,
        },
        "message": {"type": "message", "text": message.text, "blocks": message.body.get("blocks", [])},
        "trigger_id": "sandbox-trigger",
        "response_url": f"{slack.api_url}_sandbox/response/x",
        "actions": [
            {
                "action_id": button["action_id"],
                "block_id": "b",
                "value": button["value"],
                "type": "button",
                "action_ts": f"{time.time():.6f}",
            }
        ],
    }


async def test_teams_messages_go_to_the_agent_and_its_cards_pass_through(tmp_path: Path) -> None:
    async with TeamsSandbox() as teams, DirectLineSandbox() as directline:
        env = {
            "TEAMS_APP_ID": teams.app_id,
            "TEAMS_TENANT_ID": teams.tenant_id,
            "TEAMS_BASE_URL": teams.base_url,
            "TEAMS_STATIC_TOKEN": teams.bot_token,
            "BOT_CONNECTOR_ALLOWED_HOSTS": "127.0.0.1",
            "DIRECTLINE_SECRET": directline.secret,
            "DIRECTLINE_BASE_URL": directline.base_url,
            "DIRECTLINE_STORE_PATH": str(tmp_path / "directline.db"),
            "RELAYBUS_LOCAL_QUEUE_PATH": str(tmp_path / "queue.db"),
            "RELAYBUS_STATE_PATH": str(tmp_path / "state.db"),
            **FAST_DIRECTLINE,
        }
        bot = Bot()
        bridge = install(bot, DirectLineBridgeSettings.model_validate(env))
        worker = Worker(load_settings(env), serve_http=False)
        app = func.FunctionApp()
        clients = register_routes(app, bot, FunctionSettings.from_env(env))
        assert isinstance(worker.backend, LocalQueueBackend)
        host = LocalFunctionsHost(app, worker.backend, None, env, poll_interval=0.01)
        stopping = asyncio.Event()
        worker_task = asyncio.create_task(worker.run(stopping))
        await teams.wait_sessions(1, within=15)
        host_task = asyncio.create_task(host.run(stopping))
        try:
            await teams.send_user_message("hello from teams")
            await teams.wait_for(lambda: any(r.text == "Echo: hello from teams" for r in teams.replies), 15)
            await teams.send_user_message("card")
            await teams.wait_for(lambda: any((r.body or {}).get("attachments") for r in teams.replies), 15)
            card = next(r.body for r in teams.replies if (r.body or {}).get("attachments"))
            assert card is not None
            [conversation] = directline.conversations.values()
            [agent_card] = [a for a in directline.bot_activities(conversation.id) if a.get("attachments")]
            assert card["attachments"] == agent_card["attachments"]  # the Adaptive Card as the agent sent it
            said = directline.user_activities(conversation.id)
            assert [a["text"] for a in said] == ["hello from teams", "card"]
            assert all(a["from"]["id"].startswith("relaybus-u-") for a in said)
            async with asyncio.timeout(5):  # counted once the send returned
                while bridge.stats["to_teams"] != 2:
                    await asyncio.sleep(0.02)
        finally:
            stopping.set()
            async with asyncio.timeout(30):
                await asyncio.gather(worker_task, host_task, return_exceptions=True)
            await clients.aclose()
            for client in list(bridge._clients.values()):
                await client.aclose()
