"""Reconnect delays (pure). A policy is an iterator of delays in seconds."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence


def full_jitter(base: float = 1.0, cap: float = 15.0, rng: random.Random | None = None) -> Iterator[float]:
    """AWS-style full jitter: uniform(0, min(cap, base * 2**n)) for n = 0, 1, 2, ..."""
    rnd = rng or random.Random()
    attempt = 0
    while True:
        yield rnd.uniform(0, min(cap, base * (2**attempt)))
        attempt = min(attempt + 1, 32)


def schedule(delays: Sequence[float]) -> Iterator[float]:
    """A fixed schedule whose last delay repeats forever (the Teams draft's 0, 2, 10, 30 s)."""
    if not delays:
        raise ValueError("schedule needs at least one delay")
    yield from delays
    while True:
        yield delays[-1]
