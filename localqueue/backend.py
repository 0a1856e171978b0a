"""`LocalQueueBackend`: the local queue for asyncio, group-committed durable sends and a receiver API.

Disk I/O never runs on the event loop: sends go to one writer thread, receives and settlements to one
reader thread, each with its own `LocalQueueStore` connection. See `localqueue.store` for the
semantics and the durability argument.

`close()` is bounded by `close_timeout` (the worker passes RELAYBUS_SHUTDOWN_TIMEOUT_SECONDS): it lets
the writer commit the sends already accepted for at most that long. A commit still not done then (stuck
on a lock another process holds, a stalled disk) is given up: its sends and any still pending raise
`TransientPublishError`, so nothing is acked that is not durable (if the stuck commit lands later, the
platform's redelivery is a duplicate the next run drops). The threads are not waited for; each closes its
connection when its current operation ends.

Commit pacing (`commit_interval`, the worker's `RELAYBUS_LOCAL_QUEUE_COMMIT_INTERVAL_MS`): a commit starts no
sooner than `commit_interval` after the previous one started. While envelopes arrive one at a time at a moderate
rate (1,000/s: one every millisecond), this turns one commit (an fsync and two thread hand-offs) per envelope
into one per interval, shared by every envelope that arrived meanwhile, and their acks leave in one socket
write. It adapts by itself: after a quiet moment (the last commit started longer than the interval ago) a send
commits at once, so a lone envelope pays nothing; flat out, commits follow each other anyway (each takes about
as long as the interval) and batches grow. The price is at most one interval of extra latency per send
(5 ms by default, inside the platforms' 3 s by far); 0 turns pacing off.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import ParamSpec, TypeVar

from localqueue.store import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Disposition,
    LocalQueueError,
    LocalQueueStore,
    QueueConfig,
    QueueStats,
    SessionLease,
    StoredMessage,
    Synchronous,
    check_message,
    queue_configs,
)
from shared.errors import PermanentPublishError, PublishError, TransientPublishError
from shared.queue_message import QueueMessage
from shared.routes import ROUTES, RouteTable

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_COMMIT_INTERVAL = 0.005
"""Seconds between the starts of two commits while sends keep coming (see the module docstring)."""

_CLOSE_GRACE = 0.05
"""Seconds `close()` gives idle threads to close their connections once `close_timeout` is spent."""


@dataclass(slots=True)
class _Pending:
    message: QueueMessage
    available_at: float | None
    future: asyncio.Future[bool]


class LocalQueueBackend:
    """The local queue as a `QueueBackend` (group-committed durable sends) with an async receiver API.

    `LocalQueueBackend(path, routes, queue_settings)` configures one queue per route (queue names
    from `queue_settings`, the app settings such as `SLACK_EVENTS_QUEUE`); `queues=` replaces that
    with explicit configurations (tests use short lock durations this way).
    """

    def __init__(
        self,
        path: str | Path,
        routes: RouteTable = ROUTES,
        queue_settings: Mapping[str, str] | None = None,
        *,
        queues: Mapping[str, QueueConfig] | None = None,
        clock: Callable[[], float] = time.time,
        synchronous: Synchronous = "FULL",
        max_batch: int = 1024,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        busy_timeout: float = 10.0,
        close_timeout: float = 20.0,
        commit_interval: float = DEFAULT_COMMIT_INTERVAL,
    ) -> None:
        if close_timeout < 0:
            raise ValueError(f"close_timeout must be at least 0, got {close_timeout}")
        if not 0 <= commit_interval <= 1:
            raise ValueError(f"commit_interval must be 0 to 1 second, got {commit_interval}")
        self.commit_interval = commit_interval
        self.path = Path(path)
        self.queues: dict[str, QueueConfig] = (
            dict(queues) if queues is not None else queue_configs(routes, queue_settings)
        )
        self.clock = clock
        self._writer = LocalQueueStore(
            self.path, self.queues, clock=clock, synchronous=synchronous, busy_timeout=busy_timeout
        )
        self._reader = LocalQueueStore(
            self.path, self.queues, clock=clock, synchronous="NORMAL", busy_timeout=busy_timeout
        )
        self._write_pool = ThreadPoolExecutor(1, thread_name_prefix="relaybus-queue-writer")
        self._read_pool = ThreadPoolExecutor(1, thread_name_prefix="relaybus-queue-reader")
        self._max_batch = max_batch
        self._max_bytes = max_message_bytes
        self._pending: list[_Pending] = []
        self._wakeup = asyncio.Event()
        self._arrivals = asyncio.Event()
        self._writer_task: asyncio.Task[None] | None = None
        self._in_flight: list[_Pending] = []
        self._closed = False
        self._close_timeout = close_timeout
        self._stop_reason = "local queue writer stopped"
        self.stored = 0
        self.duplicates = 0
        self.batches = 0
        self._last_commit = -1e9

    # -- lifecycle ---------------------------------------------------------------------------------

    async def open(self) -> None:
        """Create or open the file now (otherwise the first operation does), off the event loop.

        Raises `PermanentPublishError` when the file is not a queue or cannot be created (the worker
        stops with that message) and `TransientPublishError` when SQLite is busy or failing."""
        try:
            await self._on_writer(self._writer.open)
            await self._on_reader(self._reader.open)
        except (LocalQueueError, sqlite3.Error, OSError) as exc:
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            what = f"local queue: {detail}" if str(self.path) in detail else f"local queue {self.path}: {detail}"
            if isinstance(exc, sqlite3.OperationalError):
                raise TransientPublishError(what) from None
            raise PermanentPublishError(what) from None

    async def close(self) -> None:
        """Finish the sends already accepted (for at most `close_timeout` seconds), then close.

        Sends not committed by then raise `TransientPublishError`; see the module docstring."""
        if self._closed:
            return
        self._closed = True
        self._wakeup.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._close_timeout
        task = self._writer_task
        if task is not None and not task.done():
            await asyncio.wait({task}, timeout=self._close_timeout)
            if not task.done():
                waiting = len(self._pending) + len(self._in_flight)
                log.warning(
                    "local queue close timed out path=%s timeout=%.1fs uncommitted=%d: failing them (not acked)",
                    self.path,
                    self._close_timeout,
                    waiting,
                )
                self._stop_reason = (
                    f"local queue {self.path}: not committed within the {self._close_timeout:g}s close timeout"
                )
                task.cancel()
                await asyncio.wait({task})  # the cancellation only runs the task's `finally`
        try:
            closing = {asyncio.wrap_future(self._write_pool.submit(self._writer.close)): "writer"}
            closing[asyncio.wrap_future(self._read_pool.submit(self._reader.close))] = "reader"
            # An idle thread closes at once: a short grace even when the timeout is spent.
            done, busy = await asyncio.wait(closing, timeout=max(_CLOSE_GRACE, deadline - loop.time()))
            for future in busy:
                log.warning(
                    "local queue %s: the %s is still busy at close; its connection closes when that ends",
                    self.path,
                    closing[future],
                )
            for future in done:
                future.result()
        finally:
            self._write_pool.shutdown(wait=False)
            self._read_pool.shutdown(wait=False)

    async def __aenter__(self) -> LocalQueueBackend:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- QueueBackend --------------------------------------------------------------------------------

    async def send(self, message: QueueMessage) -> None:
        """Return once the message is committed to disk (or was a duplicate within the window).

        A message with a `scheduled_enqueue_time` becomes available then (as `schedule()`); `time_to_live`,
        `correlation_id`, `reply_to` and `reply_to_session_id` are stored with it."""
        await self._enqueue(message, None)

    async def schedule(self, message: QueueMessage, available_at: datetime) -> None:
        """Store a message that becomes available at `available_at` (Service Bus scheduled messages)."""
        await self._enqueue(message, available_at.timestamp())

    async def _enqueue(self, message: QueueMessage, available_at: float | None) -> None:
        self._check(message)
        if self._closed:
            raise TransientPublishError(f"local queue {self.path} is closed (message {message.message_id})")
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(message, available_at, future))
        if self._writer_task is None:
            self._writer_task = asyncio.get_running_loop().create_task(self._write_loop(), name="local-queue-writer")
        self._wakeup.set()
        await future

    def _check(self, message: QueueMessage) -> None:
        check_message(self.queues, message, self._max_bytes)

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not self._pending:
                    if self._closed:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                pause = self._last_commit + self.commit_interval - loop.time()
                if pause > 0 and not self._closed and len(self._pending) < self._max_batch:
                    # the previous commit started moments ago: let this one gather company (pacing)
                    await asyncio.sleep(pause)
                self._last_commit = loop.time()
                batch = self._in_flight = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                items = [(p.message, p.available_at) for p in batch]
                try:
                    results = await loop.run_in_executor(self._write_pool, self._writer.send_batch, items)
                except Exception as exc:
                    log.warning("local queue commit failed path=%s messages=%d error=%s", self.path, len(batch), exc)
                    for p in batch:
                        if not p.future.done():
                            p.future.set_exception(_publish_error(exc, self.path, p.message))
                    self._in_flight = []
                    continue
                self.batches += 1
                for p, stored in zip(batch, results, strict=True):
                    if stored:
                        self.stored += 1
                    else:
                        self.duplicates += 1
                        log.debug("duplicate dropped queue=%s message_id=%s", p.message.queue, p.message.message_id)
                    if not p.future.done():
                        p.future.set_result(stored)
                self._in_flight = []
                if any(results):
                    self._arrivals.set()
                    self._arrivals.clear()
        finally:
            # Only on cancellation (close timed out, loop teardown): nothing still waiting may believe
            # it is durable.
            for p in [*self._in_flight, *self._pending]:
                if not p.future.done():
                    p.future.set_exception(TransientPublishError(f"{self._stop_reason} ({p.message.message_id})"))
            self._in_flight = []
            self._pending.clear()

    # -- receiver API (used by the local functions host) ----------------------------------------------

    async def wait_for_messages(self, max_wait: float) -> None:
        """Return when this process committed new messages, or after `max_wait` seconds (poll)."""
        try:
            await asyncio.wait_for(self._arrivals.wait(), max_wait)
        except TimeoutError:
            return

    async def receive(self, queue: str, max_messages: int = 1) -> list[StoredMessage]:
        return await self._on_reader(self._reader.receive, queue, max_messages)

    async def accept_next_session(self, queue: str) -> SessionLease | None:
        return await self._on_reader(self._reader.accept_next_session, queue)

    async def accept_session(self, queue: str, session_id: str) -> SessionLease | None:
        return await self._on_reader(self._reader.accept_session, queue, session_id)

    async def receive_from_session(self, lease: SessionLease) -> StoredMessage | None:
        return await self._on_reader(self._reader.receive_from_session, lease)

    async def poll_session(
        self, lease: SessionLease, known_version: int | None = None
    ) -> tuple[int, StoredMessage | None]:
        """`LocalQueueStore.poll_session`: a receive that costs nothing while no other connection wrote."""
        return await self._on_reader(self._reader.poll_session, lease, known_version)

    async def renew_session_lock(self, lease: SessionLease) -> float:
        return await self._on_reader(self._reader.renew_session_lock, lease)

    async def release_session(self, lease: SessionLease) -> None:
        await self._on_reader(self._reader.release_session, lease)

    async def complete(self, lock_token: str) -> None:
        await self._on_reader(self._reader.complete, lock_token)

    async def abandon(self, lock_token: str) -> Disposition:
        return await self._on_reader(self._reader.abandon, lock_token)

    async def dead_letter(self, lock_token: str, reason: str, description: str = "") -> None:
        await self._on_reader(self._reader.dead_letter, lock_token, reason, description)

    async def renew_lock(self, lock_token: str) -> float:
        return await self._on_reader(self._reader.renew_lock, lock_token)

    @property
    def expired(self) -> int:
        """Expired messages this backend's receivers removed (dead-lettered or deleted)."""
        return self._reader.expired + self._writer.expired

    async def stats(self) -> list[QueueStats]:
        return await self._on_reader(self._reader.stats)

    async def peek(self, queue: str | None = None, limit: int | None = 10) -> list[StoredMessage]:
        return await self._on_reader(self._reader.peek, queue, limit)

    async def dead_letters(self, queue: str | None = None) -> list[StoredMessage]:
        return await self._on_reader(self._reader.dead_letters, queue)

    async def resubmit(self, queue: str | None = None, message_id: str | None = None) -> int:
        return await self._on_reader(self._reader.resubmit, queue, message_id)

    async def _on_reader(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._read_pool, functools.partial(fn, *args, **kwargs))

    async def _on_writer(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._write_pool, functools.partial(fn, *args, **kwargs))


def _publish_error(exc: Exception, path: Path, message: QueueMessage) -> PublishError:
    what = f"local queue {path}: {type(exc).__name__}: {exc} (message {message.message_id})"
    if isinstance(exc, PublishError):
        return type(exc)(what)
    if isinstance(exc, sqlite3.OperationalError):
        # busy beyond busy_timeout, disk full, I/O error: worth retrying
        return TransientPublishError(what)
    return PermanentPublishError(what)
