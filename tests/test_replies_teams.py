"""Teams invokes answered in the completion by a function, through the sandbox hub and a real queue file.

The sandbox Teams service delivers the invoke over SignalR (with `deadlineMs`); the worker publishes it with
`reply_to` and waits; a stand-in for the function side answers through the reply queue; the completion
carries the answer's status and body, or the fallback: status 500 with `{"error": …}`. The sandbox then
redelivers the invoke (a non-200), which the worker recognises as a duplicate: 200 without a body, no second
publish. At the moment the sandbox records each invoke's completion, the envelope is in its queue.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from devstack.sandbox.teams import InvokeCompletion, TeamsSandbox
from localqueue import LocalQueueStore
from shared.envelope import Envelope
from shared.replies import Reply
from tests.replies_helpers import FunctionPlayer, eventually, in_queue, reply, worker_on

DEADLINE_MS = 900  # the sandbox's deadlineMs; with a 300 ms margin the worker waits 600 ms


def settings(teams: TeamsSandbox, margin: str = "300") -> dict[str, str]:
    return {
        "TEAMS_APP_ID": teams.app_id,
        "TEAMS_BASE_URL": teams.base_url,
        "TEAMS_STATIC_TOKEN": teams.bot_token,
        "TEAMS_GEOS": "amer",
        "TEAMS_ANSWER_MARGIN_MS": margin,
    }


TICKETS = ["Printer on fire", "Printer out of paper", "VPN down"]


def ticket_bot(envelope: Envelope) -> Reply | None:
    """What the example bot answers on Teams (issue 10), played here without the function side."""
    activity = envelope.payload
    if envelope.event_type == "composeExtension/query":
        value = activity["value"]
        assert value["commandId"] == "searchTickets"
        text = value["parameters"][0]["value"].lower()
        cards = [
            {
                "contentType": "application/vnd.microsoft.card.thumbnail",
                "content": {"title": t},
                "preview": {"contentType": "application/vnd.microsoft.card.thumbnail", "content": {"title": t}},
            }
            for t in TICKETS
            if text in t.lower()
        ]
        return reply(
            envelope, {"composeExtension": {"type": "result", "attachmentLayout": "list", "attachments": cards}}
        )
    if envelope.event_type == "adaptiveCard/action":
        action = activity["value"]["action"]
        assert action["verb"] == "ackTicket"
        card = {"type": "AdaptiveCard", "version": "1.5", "body": [{"type": "TextBlock", "text": "Acknowledged"}]}
        body = {"statusCode": 200, "type": "application/vnd.microsoft.card.adaptive", "value": card}
        return reply(envelope, body)
    return None


class CompletionWatch:
    """Records, when each invoke's completion reaches the sandbox, whether its envelope is in the queue file."""

    def __init__(self, teams: TeamsSandbox, path: Path) -> None:
        self.seen: list[tuple[str | None, int | None, bool]] = []
        self._path = path
        teams.on_completion = self._on

    def _on(self, response: InvokeCompletion) -> None:
        key = f"a:sandbox-conversation/{response.activity_id}"
        self.seen.append((response.activity_id, response.status, in_queue(self._path, key)))


async def test_invokes_are_answered_with_the_functions_status_and_body(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    async with TeamsSandbox(deadline_ms=DEADLINE_MS) as teams, worker_on(path, settings(teams)) as worker:
        watch = CompletionWatch(teams, path)
        await teams.wait_sessions(1)
        async with FunctionPlayer(path, ticket_bot).running() as player:
            search = await teams.send_compose_query("searchTickets", "printer")
            card = await teams.send_card_action({"ticket": 7}, verb="ackTicket")
            found = await teams.wait_invoke_response(search)
            acked = await teams.wait_invoke_response(card)
    assert found.status == 200 and not found.late
    assert found.name == "composeExtension/query"
    result = found.body["composeExtension"]
    assert result["type"] == "result"
    assert [a["content"]["title"] for a in result["attachments"]] == ["Printer on fire", "Printer out of paper"]
    assert acked.status == 200 and acked.body["type"] == "application/vnd.microsoft.card.adaptive"
    assert acked.body["value"]["body"][0]["text"] == "Acknowledged"
    assert found.ms < 600 and acked.ms < 600
    assert sorted(watch.seen) == sorted([(search, 200, True), (card, 200, True)])
    assert [e.reply_to.session_id for e in player.received if e.reply_to] == [worker.replies.session_id] * 2
    assert worker.metrics.value("relaybus_replies_total", outcome="answered") == 2
    assert teams.stats["redeliveries"] == 0


async def test_a_status_other_than_200_is_passed_on(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    async with TeamsSandbox(deadline_ms=DEADLINE_MS) as teams, worker_on(path, settings(teams)):
        await teams.wait_sessions(1)
        refuse = FunctionPlayer(path, lambda e: reply(e, {"code": "BadRequest"}, status=400))
        async with refuse.running():
            card = await teams.send_card_action({"ticket": 7}, verb="ackTicket")
            response = await teams.wait_invoke_response(card)
    assert (response.status, response.body) == (400, {"code": "BadRequest"})
    assert teams.stats["redeliveries"] == 0  # a 400 is an answer, not a failure


async def test_no_answer_in_time_completes_500_then_the_redelivery_is_a_duplicate(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    async with TeamsSandbox(deadline_ms=DEADLINE_MS) as teams, worker_on(path, settings(teams)) as worker:
        watch = CompletionWatch(teams, path)
        await teams.wait_sessions(1)
        async with FunctionPlayer(path, lambda e: None).running() as player:
            card = await teams.send_card_action({"ticket": 1}, verb="ackTicket")
            await eventually(lambda: len([r for r in teams.invoke_responses if r.activity_id == card]) == 2, 3)
            await asyncio.sleep(0.1)
    first, second = [r for r in teams.invoke_responses if r.activity_id == card]
    assert (first.status, first.body, first.late) == (500, {"error": "bot did not answer in time"}, False)
    assert 550 <= first.ms < DEADLINE_MS
    assert (second.status, second.body) == (200, None)  # the redelivery: a duplicate of a durable envelope
    assert [s for _, s, _ in watch.seen] == [500, 200] and all(q for _, _, q in watch.seen)
    assert len(player.received) == 1  # published once
    assert worker.metrics.value("relaybus_answer_fallbacks_total", platform="teams", reason="timeout") == 1
    assert worker.metrics.value("relaybus_duplicates_dropped_total", platform="teams", kind="invoke") == 1


async def test_a_handler_error_completes_500_at_once(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    async with (
        TeamsSandbox(deadline_ms=5000) as teams,
        worker_on(path, settings(teams)) as worker,
        FunctionPlayer(path, lambda e: reply(e, error="RuntimeError: boom")).running(),
    ):
        watch = CompletionWatch(teams, path)
        await teams.wait_sessions(1)
        search = await teams.send_compose_query("searchTickets", "vpn")
        response = await teams.wait_invoke_response(search)
    assert (response.status, response.body) == (500, {"error": "bot handler error"})
    assert response.ms < 1000  # not the 4.7 s deadline
    assert watch.seen[0] == (search, 500, True)  # (the redelivery that follows a 500 may be seen too)
    assert all(present for _, _, present in watch.seen)
    assert worker.metrics.value("relaybus_answer_fallbacks_total", platform="teams", reason="handler_error") == 1


async def test_an_invoke_body_that_is_not_an_object_gets_the_fallback(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    async with (
        TeamsSandbox(deadline_ms=5000) as teams,
        worker_on(path, settings(teams)) as worker,
    ):
        await teams.wait_sessions(1)
        player = FunctionPlayer(path, lambda e: None)
        async with player.running():
            search = await teams.send_compose_query("searchTickets", "vpn")
            await eventually(lambda: bool(player.received), 3)
            (envelope,) = player.received
            assert player.backend is not None and envelope.reply_to is not None
            from shared.queue_message import QueueMessage

            body = b'{"schema_version":1,"correlation_id":"%s","status":200,"body":["not","an","object"]}'
            await player.backend.send(
                QueueMessage(
                    envelope.reply_to.queue,
                    "r1",
                    body % envelope.message_id.encode(),
                    session_id=envelope.reply_to.session_id,
                    correlation_id=envelope.message_id,
                )
            )
            response = await teams.wait_invoke_response(search)
    assert (response.status, response.body) == (500, {"error": "bot answer invalid"})
    assert worker.metrics.value("relaybus_answer_fallbacks_total", platform="teams", reason="invalid") == 1


async def test_a_late_reply_is_dropped_and_counted_never_sent(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"

    async def slow(envelope: Envelope) -> Reply:
        await asyncio.sleep(1.0)
        return reply(envelope, {"composeExtension": {"type": "result", "attachments": []}})

    async with TeamsSandbox(deadline_ms=DEADLINE_MS) as teams, worker_on(path, settings(teams)) as worker:
        await teams.wait_sessions(1)
        async with FunctionPlayer(path, slow).running():
            search = await teams.send_compose_query("searchTickets", "x")
            await eventually(lambda: worker.metrics.value("relaybus_replies_total", outcome="late") == 1, 4)
    bodies = [r.body for r in teams.invoke_responses if r.activity_id == search]
    assert {"error": "bot did not answer in time"} in bodies
    assert all(b is None or "error" in b for b in bodies)  # the late answer never reached Teams


async def test_messages_are_completed_200_without_waiting_and_carry_no_reply_to(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    async with TeamsSandbox(deadline_ms=DEADLINE_MS) as teams, worker_on(path, settings(teams)) as worker:
        await teams.wait_sessions(1)
        await teams.send_user_message("hello")
        await teams.wait_acked(1)
        assert worker.replies is not None and worker.replies.waiting == 0
    (result,) = teams.acked.values()
    assert result["status"] == 200 and "body" not in result
    with LocalQueueStore(path, create=False) as store:
        (message,) = store.messages()
    assert message.queue == "teams-activities" and message.reply_to is None
    body: dict[str, Any] = Envelope.from_body(message.body).model_dump()
    assert body["accepts_response"] is False and body["reply_to"] is None


async def test_a_completion_after_the_deadline_counts_as_missed(tmp_path: Path) -> None:
    """The sandbox enforces its deadline: a service that announces 2 s but gives up after 400 ms sees the
    worker's fallback (sent at 2 s - 300 ms) as late, and has redelivered meanwhile (a duplicate: 200)."""
    path = tmp_path / "queue.db"
    async with (
        TeamsSandbox(deadline_ms=400, announced_deadline_ms=2000) as teams,
        worker_on(path, settings(teams)),
        FunctionPlayer(path, lambda e: None).running(),
    ):
        await teams.wait_sessions(1)
        card = await teams.send_card_action({"ticket": 3}, verb="ackTicket")
        await eventually(lambda: any(r.late for r in teams.invoke_responses if r.activity_id == card), 4)
    responses = [r for r in teams.invoke_responses if r.activity_id == card]
    late = [r for r in responses if r.late]
    assert [(r.status, r.body) for r in late] == [(500, {"error": "bot did not answer in time"})]
    assert late[0].ms >= 1600
    assert teams.stats["late_completions"] == 1 and teams.stats["deadline_missed"] >= 1
    assert (200, None) in [(r.status, r.body) for r in responses if not r.late]  # the redelivery
