"""The ack rule: ack only after publish returned; duplicates acked only once the original is durable.

The connector hands `Handoff.deliver` its answer action; these tests are that action's point of view.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from shared.errors import PermanentPublishError, TransientPublishError
from tests.factories import slack_event, teams_message
from worker.handoff import AckPolicy, Breaker, Handoff, Outcome, Verdict
from worker.publish import EnvelopePublisher, QueueMessage
from worker.publish.memory import MemoryBackend


class Answers:
    """An answer action that records every verdict and says the socket took it."""

    def __init__(self, reaches_socket: bool = True) -> None:
        self.verdicts: list[Verdict] = []
        self.reaches_socket = reaches_socket

    def __call__(self, verdict: Verdict) -> bool:
        self.verdicts.append(verdict)
        return self.reaches_socket

    @property
    def acks(self) -> list[bool]:
        return [v.ack for v in self.verdicts]


def make(latency: float = 0.0, **options: object) -> tuple[Handoff, MemoryBackend]:
    backend = MemoryBackend(latency=latency)
    return Handoff(EnvelopePublisher(backend), **options), backend  # type: ignore[arg-type]


def acked(handoff: Handoff) -> float:
    return handoff.metrics.total("relaybus_envelopes_acked_total")


async def test_publish_then_ack_and_count_once_it_reached_the_socket() -> None:
    handoff, backend = make()
    answers = Answers()
    env = slack_event("Ev1")
    outcome = await handoff.deliver(env, answers, also=("env-Ev1",))
    assert outcome is Outcome.PUBLISHED and answers.acks == [True]
    assert [m.message_id for m in backend.messages["slack-events"]] == ["Ev1"]
    m = handoff.metrics
    assert m.value("relaybus_envelopes_published_total", platform="slack", route="slack_events") == 1
    assert m.value("relaybus_envelopes_received_total", platform="slack", kind="events_api") == 1
    assert acked(handoff) == 1


async def test_an_ack_that_never_reached_the_socket_is_not_counted() -> None:
    handoff, _ = make()
    await handoff.deliver(slack_event("Ev1"), Answers(reaches_socket=False))
    assert acked(handoff) == 0


async def test_a_retry_with_a_new_envelope_id_is_acked_and_dropped() -> None:
    handoff, backend = make()
    await handoff.deliver(slack_event("Ev1", envelope_id="e1"), Answers(), also=("e1",))
    answers = Answers()
    outcome = await handoff.deliver(slack_event("Ev1", envelope_id="e2"), answers, also=("e2",))
    assert outcome is Outcome.DUPLICATE and answers.acks == [True]
    assert backend.count() == 1
    assert handoff.metrics.value("relaybus_duplicates_dropped_total", platform="slack", kind="events_api") == 1


async def test_a_redelivery_recognised_by_its_transport_id_alone() -> None:
    # the transport id (envelope_id) comes after the stable key, the same order on every platform
    handoff, backend = make()
    await handoff.deliver(teams_message("a1"), Answers(), also=("envelope-1",))
    other = teams_message("a2")  # another activity id, but the same envelopeId: the service's redelivery
    assert await handoff.deliver(other, Answers(), also=("envelope-1",)) is Outcome.DUPLICATE
    assert backend.count() == 1


async def test_failed_publish_is_nacked_and_releases_its_keys() -> None:
    handoff, backend = make()
    backend.fail_all()
    env = slack_event("Ev1")
    answers = Answers()
    assert await handoff.deliver(env, answers) is Outcome.FAILED
    assert answers.acks == [False] and backend.count() == 0 and acked(handoff) == 0
    backend.recover()
    assert await handoff.deliver(env, Answers()) is Outcome.PUBLISHED
    assert backend.count() == 1


async def test_permanent_errors_are_not_acked_either() -> None:
    handoff, backend = make()
    backend.fail_with(PermanentPublishError("too large"))
    answers = Answers()
    await handoff.deliver(slack_event("Ev1"), answers)
    assert answers.acks == [False]
    failed = handoff.metrics.value(
        "relaybus_publish_failed_total", platform="slack", kind="events_api", error="PermanentPublishError"
    )
    assert failed == 1


async def test_duplicate_in_flight_waits_for_the_original_and_is_acked_after_it() -> None:
    handoff, backend = make(latency=0.05)
    first_answers = Answers()
    first = asyncio.create_task(handoff.deliver(slack_event("Ev1", envelope_id="e1"), first_answers, also=("e1",)))
    await asyncio.sleep(0.01)
    second = await handoff.deliver(slack_event("Ev1", envelope_id="e2"), Answers(), also=("e2",))
    assert first.done(), "the duplicate must not be acked before the original is durable"
    assert await first is Outcome.PUBLISHED
    assert second is Outcome.DUPLICATE
    assert backend.count() == 1


async def test_duplicate_in_flight_is_nacked_when_the_original_fails() -> None:
    handoff, backend = make(latency=0.05)
    failing: list[QueueMessage] = []

    def fail_once(message: QueueMessage) -> TransientPublishError | None:
        failing.append(message)
        return TransientPublishError("boom") if len(failing) == 1 else None

    backend.failing = fail_once
    first = asyncio.create_task(handoff.deliver(slack_event("Ev1", envelope_id="e1"), Answers(), also=("e1",)))
    await asyncio.sleep(0.01)
    answers = Answers()
    second = await handoff.deliver(slack_event("Ev1", envelope_id="e2"), answers, also=("e2",))
    assert await first is Outcome.FAILED
    assert second is Outcome.FAILED and answers.acks == [False]
    # the platform redelivers; the redelivery is published exactly once
    assert await handoff.deliver(slack_event("Ev1", envelope_id="e3"), Answers(), also=("e3",)) is Outcome.PUBLISHED
    assert backend.count() == 1


async def test_cancelled_publish_releases_keys_and_answers_nothing() -> None:
    handoff, backend = make(latency=1.0)
    answers = Answers()
    task = asyncio.create_task(handoff.deliver(slack_event("Ev1"), answers))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert answers.verdicts == []
    backend.latency = 0
    assert await handoff.deliver(slack_event("Ev1"), Answers()) is Outcome.PUBLISHED


# --- the circuit breaker ------------------------------------------------------------------------------------


async def test_a_failing_backend_opens_the_breaker_and_publish_attempts_slow_down() -> None:
    breaker = Breaker(threshold=3, base_pause=0.1, max_pause=0.4)
    handoff, backend = make(breaker=breaker)
    backend.fail_all()
    started = time.monotonic()
    n = 0
    while time.monotonic() - started < 1.0:  # a platform redelivering as fast as it is nacked
        await handoff.deliver(slack_event(f"Ev{n}"), Answers())
        n += 1
    # without the breaker this loop would make thousands of attempts; with it, 3 + about one probe per pause
    assert backend.sends <= 3 + 6, backend.sends
    assert breaker.opened == 1 and breaker.is_open
    assert handoff.metrics.value("relaybus_publish_breaker_open") == 1
    assert handoff.paused() or breaker.remaining() == 0
    backend.recover()
    await asyncio.sleep(breaker.remaining())
    assert await handoff.deliver(slack_event("after"), Answers()) is Outcome.PUBLISHED
    assert not breaker.is_open and handoff.metrics.value("relaybus_publish_breaker_open") == 0


async def test_while_open_one_probe_goes_and_the_others_wait_for_it() -> None:
    breaker = Breaker(threshold=1, base_pause=0.05, max_pause=0.05)
    handoff, backend = make(latency=0.05, breaker=breaker)
    backend.fail_all()
    await handoff.deliver(slack_event("first"), Answers())
    assert breaker.is_open
    backend.recover()
    sends = backend.sends
    results = await asyncio.gather(*(handoff.deliver(slack_event(f"Ev{i}"), Answers()) for i in range(20)))
    assert all(r is Outcome.PUBLISHED for r in results)
    assert backend.sends == sends + 20  # the probe, then the others after it succeeded


# --- envelopes a platform cannot redeliver (Teams draft) --------------------------------------------------


async def test_kept_envelopes_become_durable_when_the_backend_recovers() -> None:
    handoff, backend = make(breaker=Breaker(threshold=100, base_pause=0.02, max_pause=0.05))
    backend.fail_all()
    retry = asyncio.create_task(handoff.retry_kept())
    try:
        outcomes = [
            await handoff.deliver(teams_message(f"a{i}"), policy=AckPolicy.KEEP_UNTIL_DURABLE) for i in range(5)
        ]
        assert outcomes == [Outcome.KEPT] * 5 and handoff.kept == 5
        assert handoff.metrics.value("relaybus_retry_buffer_envelopes") == 5
        # a copy of a kept envelope (every draft slot receives every event) is not kept twice
        assert await handoff.deliver(teams_message("a0"), policy=AckPolicy.KEEP_UNTIL_DURABLE) is Outcome.DUPLICATE
        backend.recover()
        async with asyncio.timeout(2):
            while handoff.kept:
                await asyncio.sleep(0.01)
    finally:
        retry.cancel()
    assert sorted(m.message_id for m in backend.all_messages()) == sorted(
        teams_message(f"a{i}").dedupe_key for i in range(5)
    )
    assert handoff.metrics.value("relaybus_retry_buffer_envelopes") == 0


async def test_a_full_retry_buffer_says_so_and_counts_the_loss(caplog: pytest.LogCaptureFixture) -> None:
    handoff, backend = make(retry_buffer=2, breaker=Breaker(threshold=100))
    backend.fail_all()
    outcomes = [await handoff.deliver(teams_message(f"a{i}"), policy=AckPolicy.KEEP_UNTIL_DURABLE) for i in range(3)]
    assert outcomes == [Outcome.KEPT, Outcome.KEPT, Outcome.DROPPED]
    assert handoff.metrics.value("relaybus_retry_buffer_dropped_total", platform="teams") == 1
    assert any("RETRY BUFFER FULL" in r.message and r.levelname == "ERROR" for r in caplog.records)


async def test_flush_on_shutdown_is_bounded_and_reports_what_is_left() -> None:
    handoff, backend = make(breaker=Breaker(threshold=100, base_pause=0.02))
    backend.fail_all()
    await handoff.deliver(teams_message("a1"), policy=AckPolicy.KEEP_UNTIL_DURABLE)
    started = time.monotonic()
    assert await handoff.flush(0.3) == 1
    assert time.monotonic() - started < 1.0
    backend.recover()
    assert await handoff.flush(1.0) == 0
    assert backend.count() == 1
