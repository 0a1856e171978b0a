"""The dedupe window: pending, done, release, expiry, capacity."""

from __future__ import annotations

from worker.dedupe import DedupeWindow, KeyState


def test_states_move_from_new_to_pending_to_done() -> None:
    w = DedupeWindow(ttl=600)
    assert w.state(["a", "b"], now=0) is KeyState.NEW
    w.begin(["a", "b"])
    assert w.state(["b"], now=0) is KeyState.PENDING
    w.confirm(["a", "b"], now=0)
    assert w.state(["x", "b"], now=1) is KeyState.DONE


def test_release_forgets_a_failed_publish() -> None:
    w = DedupeWindow(ttl=600)
    w.begin(["a"])
    w.release(["a"])
    assert w.state(["a"], now=0) is KeyState.NEW


def test_keys_expire_after_the_ttl_covering_slacks_retry_schedule() -> None:
    w = DedupeWindow(ttl=600)
    w.begin(["a"])
    w.confirm(["a"], now=100)
    assert w.state(["a"], now=100 + 5 * 60) is KeyState.DONE  # Slack's last retry is ~5 min later
    assert w.state(["a"], now=100 + 600) is KeyState.NEW
    assert len(w) == 0


def test_capacity_evicts_the_oldest() -> None:
    w = DedupeWindow(ttl=600, max_keys=3)
    for i in range(5):
        w.begin([str(i)])
        w.confirm([str(i)], now=i)
    assert w.state(["0"], now=5) is KeyState.NEW
    assert w.state(["4"], now=5) is KeyState.DONE
