"""Per-conversation and per-user state for handlers, over any `StateStore`.

    state = ConversationState(store, ref)            # ref: functions.state.references.ConversationReference
    data = await state.get()                         # {} when nothing is stored (or it expired)
    await state.set({"topic": "billing"})            # replaces the whole value
    data = await state.update(lambda d: {**d, "count": d.get("count", 0) + 1})   # read-modify-write
    await state.clear()

    await UserState(store, ref).update(add_visit)    # the same, keyed by the reference's user

`update(fn)` reads the value, calls `fn` on a copy (it may return the new dict, or change the copy and
return None; it may be async), and writes the result only over the version it read (ETag). When another
writer got there first, it reads again and calls `fn` again, with a short jittered pause, up to
`max_attempts` times; then `ConflictError`. So `fn` must be free of side effects: it may run more than once.

Entries live in the store as `relaybus.state.<platform>.conversation / <conversation id>` and
`relaybus.state.<platform>.user / <user id>`; a `ttl` given to the helper applies to every write it makes.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from functions.state import TTL, ConflictError, Entry, StateStore
from functions.state.references import ConversationReference

Updater = Callable[[dict[str, Any]], "dict[str, Any] | Awaitable[dict[str, Any] | None] | None"]


class State:
    """One state document (a JSON object) in a store, with read-modify-write that retries on conflict."""

    def __init__(
        self,
        store: StateStore,
        partition: str,
        key: str,
        *,
        ttl: TTL | None = None,
        max_attempts: int = 10,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.store = store
        self.partition = partition
        self.key = key
        self.ttl = ttl
        self.max_attempts = max_attempts
        self._sleep = sleep
        self._rng = rng or random.Random()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.partition!r}, {self.key!r})"

    async def entry(self) -> Entry | None:
        return await self.store.get(self.partition, self.key)

    async def get(self) -> dict[str, Any]:
        entry = await self.entry()
        return {} if entry is None else entry.value

    async def set(self, value: Mapping[str, Any]) -> None:
        await self.store.put(self.partition, self.key, value, ttl=self.ttl)

    async def clear(self) -> None:
        await self.store.delete(self.partition, self.key)

    async def update(self, fn: Updater) -> dict[str, Any]:
        """Apply `fn` to the stored value and write it over exactly the version read; returns what was stored."""
        for attempt in range(self.max_attempts):
            entry = await self.entry()
            current = {} if entry is None else entry.value
            draft = copy.deepcopy(current)
            result = fn(draft)
            if inspect.isawaitable(result):
                result = await result
            new = draft if result is None else result
            try:
                if entry is None:
                    await self.store.put(self.partition, self.key, new, if_not_exists=True, ttl=self.ttl)
                else:
                    await self.store.put(self.partition, self.key, new, etag=entry.etag, ttl=self.ttl)
            except ConflictError:
                if attempt + 1 < self.max_attempts:
                    await self._sleep(self._rng.uniform(0, min(0.5, 0.01 * 2**attempt)))
                continue
            return dict(new)
        raise ConflictError(
            f"state {self.partition}/{self.key}: update lost to other writers {self.max_attempts} times in a row"
        )


class ConversationState(State):
    """The state of one conversation (Teams conversation, Slack channel)."""

    def __init__(self, store: StateStore, ref: ConversationReference, **options: Any) -> None:
        super().__init__(store, f"relaybus.state.{ref.platform.value}.conversation", ref.conversation_id, **options)
        self.ref = ref


class UserState(State):
    """The state of one user (across conversations): keyed by the reference's `user_id`."""

    def __init__(self, store: StateStore, ref: ConversationReference, **options: Any) -> None:
        if ref.user_id is None:
            raise ValueError(f"the reference to {ref.conversation_id!r} names no user")
        super().__init__(store, f"relaybus.state.{ref.platform.value}.user", ref.user_id, **options)
        self.ref = ref
