"""The ack rule: ack only after publish returned; duplicates acked only once the original is durable."""

from __future__ import annotations

import asyncio

import pytest

from shared.errors import PermanentPublishError, TransientPublishError
from tests.factories import slack_event
from worker.handoff import Handoff, Outcome
from worker.publish import EnvelopePublisher, QueueMessage
from worker.publish.memory import MemoryBackend


def make(latency: float = 0.0) -> tuple[Handoff, MemoryBackend]:
    backend = MemoryBackend(latency=latency)
    return Handoff(EnvelopePublisher(backend)), backend


async def test_publish_then_ack_and_count() -> None:
    handoff, backend = make()
    env = slack_event("Ev1")
    result = await handoff.hand_off(env, ("Ev1", "env-Ev1"))
    assert result.outcome is Outcome.PUBLISHED and result.ack and result.route == "slack_events"
    assert [m.message_id for m in backend.messages["slack-events"]] == ["Ev1"]
    m = handoff.metrics
    assert m.value("relaybus_envelopes_published_total", platform="slack", route="slack_events") == 1
    assert m.value("relaybus_envelopes_received_total", platform="slack", kind="events_api") == 1


async def test_a_retry_with_a_new_envelope_id_is_acked_and_dropped() -> None:
    handoff, backend = make()
    await handoff.hand_off(slack_event("Ev1", envelope_id="e1"), ("Ev1", "e1"))
    retry = slack_event("Ev1", envelope_id="e2")
    result = await handoff.hand_off(retry, ("Ev1", "e2"))
    assert result.outcome is Outcome.DUPLICATE and result.ack
    assert backend.count() == 1
    assert handoff.metrics.value("relaybus_duplicates_dropped_total", platform="slack", kind="events_api") == 1


async def test_failed_publish_is_not_acked_and_releases_its_keys() -> None:
    handoff, backend = make()
    backend.fail_all()
    env = slack_event("Ev1")
    failed = await handoff.hand_off(env, ("Ev1",))
    assert failed.outcome is Outcome.FAILED and not failed.ack
    assert backend.count() == 0
    backend.recover()
    again = await handoff.hand_off(env, ("Ev1",))
    assert again.outcome is Outcome.PUBLISHED
    assert backend.count() == 1


async def test_permanent_errors_are_not_acked_either() -> None:
    handoff, backend = make()
    backend.fail_with(PermanentPublishError("too large"))
    result = await handoff.hand_off(slack_event("Ev1"), ("Ev1",))
    assert not result.ack
    assert (
        handoff.metrics.value(
            "relaybus_publish_failed_total", platform="slack", kind="events_api", error="PermanentPublishError"
        )
        == 1
    )


async def test_duplicate_in_flight_waits_for_the_original_and_is_acked_after_it() -> None:
    handoff, backend = make(latency=0.05)
    first = asyncio.create_task(handoff.hand_off(slack_event("Ev1", envelope_id="e1"), ("Ev1", "e1")))
    await asyncio.sleep(0.01)
    second = await handoff.hand_off(slack_event("Ev1", envelope_id="e2"), ("Ev1", "e2"))
    assert first.done(), "the duplicate must not be acked before the original is durable"
    assert (await first).outcome is Outcome.PUBLISHED
    assert second.outcome is Outcome.DUPLICATE
    assert backend.count() == 1


async def test_duplicate_in_flight_is_not_acked_when_the_original_fails() -> None:
    handoff, backend = make(latency=0.05)
    failing: list[QueueMessage] = []

    def fail_once(message: QueueMessage) -> TransientPublishError | None:
        failing.append(message)
        return TransientPublishError("boom") if len(failing) == 1 else None

    backend.failing = fail_once
    first = asyncio.create_task(handoff.hand_off(slack_event("Ev1", envelope_id="e1"), ("Ev1", "e1")))
    await asyncio.sleep(0.01)
    second = await handoff.hand_off(slack_event("Ev1", envelope_id="e2"), ("Ev1", "e2"))
    assert (await first).outcome is Outcome.FAILED
    assert second.outcome is Outcome.FAILED and not second.ack
    # the platform redelivers; the redelivery is published exactly once
    third = await handoff.hand_off(slack_event("Ev1", envelope_id="e3"), ("Ev1", "e3"))
    assert third.outcome is Outcome.PUBLISHED
    assert backend.count() == 1


async def test_cancelled_publish_releases_keys() -> None:
    handoff, backend = make(latency=1.0)
    task = asyncio.create_task(handoff.hand_off(slack_event("Ev1"), ("Ev1",)))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    backend.latency = 0
    assert (await handoff.hand_off(slack_event("Ev1"), ("Ev1",))).outcome is Outcome.PUBLISHED
