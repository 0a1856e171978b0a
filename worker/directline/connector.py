"""`DirectLineConnector`: the worker's Direct Line connector (implements `worker.connector.Connector`).

    connector = DirectLineConnector(settings.directline, handoff, metrics)
    await connector.run(stopping)

It holds the conversations the directory lists (`shared.directline`: the function side registers each one it
starts, and marks it wanted on every outgoing message), at most `max_conversations` of them, each under a lease
(`worker.directline.watermarks`): exactly one replica holds a conversation at a time.

Its tasks, all in one TaskGroup: the directory scan (claims free or lapsed conversations), the lease renewal
(every third of `lease_seconds`; it also wakes parked conversations whose `wanted_at` moved; a replica that could
not renew for most of its lease stops its conversations before another one may take them: self-fencing), the
watermark flusher (one transaction every `flush_seconds` for every conversation whose published watermark
advanced) and one task per conversation (`worker.directline.conversation`).

Reporting: one status board entry, `directline/conversations`, Online while the directory works, whose detail
counts conversations per state (`Online=12 Parked=300 Connecting=1`); `/metrics` has
`relaybus_directline_conversations{state}` and `relaybus_directline_events_total{event}` (refreshes,
expired_tokens, reconnects, collisions, polls, parked, resumed, ended, …): counts, never one series per
conversation. On stop: sockets closed, in-flight publishes finished, watermarks flushed, leases released (another
replica takes over at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import socket
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable

import httpx
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from worker.directline.api import DirectLineApi
from worker.directline.conversation import PARKED, DirectLineConversation
from worker.directline.settings import DirectLineSettings
from worker.directline.watermarks import DirectLineStore, DirectoryError, SqliteDirectLineStore
from worker.handoff import Handoff
from worker.lifecycle import ConnectionStatus
from worker.metrics import Metrics

log = logging.getLogger(__name__)

PLATFORM = "directline"
BOARD_NAME = "conversations"
STATES = (*(status.value for status in ConnectionStatus), PARKED)


def build_store(settings: DirectLineSettings) -> DirectLineStore:
    """The directory `DIRECTLINE_STORE` names: the SQLite file, or Table Storage (replicas on several machines)."""
    if settings.store == "table":
        from worker.directline.table import TableDirectLineStore

        return TableDirectLineStore(settings)
    return SqliteDirectLineStore(settings.store_path)


def replica_id() -> str:
    """This process's name in the directory's `owner` column (host, pid, and a random part)."""
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(3)}"


class DirectLineConnector:
    platform: str = PLATFORM

    def __init__(
        self,
        settings: DirectLineSettings,
        handoff: Handoff,
        metrics: Metrics,
        *,
        store: DirectLineStore | None = None,
        http_client: httpx.AsyncClient | None = None,
        owner: str | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self._handoff = handoff
        self._metrics = metrics
        self._store: DirectLineStore = store or build_store(settings)
        self._owns_store = store is None
        self._http_client = http_client
        self.owner = owner or replica_id()
        self._clock = clock
        self._rng = rng or random.Random()
        self.conversations: dict[str, DirectLineConversation] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wanted: dict[str, float] = {}
        self.events: Counter[str] = Counter()
        self._last_renewed = time.monotonic()
        self._api: DirectLineApi | None = None
        self._changed = asyncio.Event()
        self._board = ConnectionStatus.UNINITIALIZED
        _collector_for(metrics.registry).connectors.add(self)

    # --- what others see ----------------------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Conversations per state (a `ConnectionStatus` value, or `Parked`)."""
        counted = Counter(c.state for c in self.conversations.values())
        return {state: counted.get(state, 0) for state in STATES}

    def wake(self, conversation_id: str) -> bool:
        """Resume a parked conversation now (what a directory scan does when `wanted_at` moved)."""
        conversation = self.conversations.get(conversation_id)
        if conversation is None:
            return False
        conversation.wake()
        return True

    def event(self, name: str) -> None:
        self.events[name] += 1

    # --- the run --------------------------------------------------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        s = self.settings
        self._api = DirectLineApi(
            s.base_url, s.secret.get_secret_value(), client=self._http_client, timeout=s.http_timeout, clock=self._clock
        )
        log.info("direct line connector starting: %s, directory %r, replica %s", s.base_url, self._store, self.owner)
        self._report(ConnectionStatus.CONNECTING, "reading the directory")
        try:
            async with asyncio.TaskGroup() as tg:
                scan = tg.create_task(self._scan_loop(tg, stopping), name="directline-scan")
                renew = tg.create_task(self._renew_loop(stopping), name="directline-leases")
                flush = tg.create_task(self._flush_loop(stopping), name="directline-watermarks")
                report = tg.create_task(self._report_loop(stopping), name="directline-report")
                await stopping.wait()
                scan.cancel()
                # conversations drain (in-flight publishes), then the last watermarks are written
                if self._tasks:
                    await asyncio.wait(list(self._tasks.values()), timeout=s.open_timeout)
                renew.cancel()
                flush.cancel()
                report.cancel()
            await self._flush()
        finally:
            with contextlib.suppress(DirectoryError):
                await self._store.release(self.owner)
            self._report(ConnectionStatus.ENDED, self._detail())
            if self._api is not None:
                await self._api.aclose()
            if self._owns_store:
                await self._store.aclose()
            log.info("direct line connector stopped (%s)", self._detail())

    async def _scan_loop(self, tg: asyncio.TaskGroup, stopping: asyncio.Event) -> None:
        s = self.settings
        while not stopping.is_set():
            try:
                await self._scan(tg, stopping)
            except DirectoryError as exc:
                log.warning("direct line directory scan failed: %s", exc)
                self._report(ConnectionStatus.FAILED_TO_CONNECT, str(exc))
            else:
                self._report(ConnectionStatus.ONLINE, self._detail())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(s.scan_seconds):
                    await stopping.wait()

    async def _scan(self, tg: asyncio.TaskGroup, stopping: asyncio.Event) -> None:
        s = self.settings
        now = self._clock()
        room = s.max_conversations - len(self.conversations)
        if room > 0:
            for row in await self._store.candidates(self.owner, now, room):
                if row.conversation_id in self.conversations:
                    continue
                claimed = await self._store.claim(row.conversation_id, self.owner, now, s.lease_seconds)
                if claimed is None:
                    continue  # another replica was quicker
                self._start(tg, claimed.conversation_id, claimed.watermark, claimed.wanted_at, stopping)
        # leases (and the wake-ups of parked conversations someone wants again) are the renew loop's, every
        # third of the lease: a scan that renewed every row too would cost a write per conversation per scan

    def _check_held(self, held: dict[str, float]) -> None:
        """Wake conversations someone wants again; stop those whose lease is gone (another replica has them)."""
        for conversation_id, wanted_at in held.items():
            if wanted_at > self._wanted.get(conversation_id, wanted_at):
                self.wake(conversation_id)
            self._wanted[conversation_id] = wanted_at
        lost = [cid for cid in self.conversations if cid not in held]
        self._stop_conversations(lost, "its lease is no longer this replica's")

    def _start(
        self,
        tg: asyncio.TaskGroup,
        conversation_id: str,
        watermark: str | None,
        wanted_at: float,
        stopping: asyncio.Event,
    ) -> None:
        assert self._api is not None
        conversation = DirectLineConversation(
            conversation_id,
            watermark,
            settings=self.settings,
            api=self._api,
            handoff=self._handoff,
            metrics=self._metrics,
            event=self.event,
            on_change=self._on_change,
            clock=self._clock,
            rng=random.Random(self._rng.random()),
        )
        self.conversations[conversation_id] = conversation
        self._wanted[conversation_id] = wanted_at
        self._tasks[conversation_id] = tg.create_task(
            self._hold(conversation, stopping), name=f"directline-conversation-{conversation.name}"
        )
        self.event("taken")
        log.info("direct line: holding conversation %s from watermark %s", conversation.name, watermark or "(start)")

    async def _hold(self, conversation: DirectLineConversation, stopping: asyncio.Event) -> None:
        async def follow() -> None:
            await stopping.wait()
            conversation.stopping.set()

        follower = asyncio.create_task(follow())
        try:
            reason = await conversation.run(conversation.stopping)
        except Exception:
            log.exception("direct line conversation %s crashed: released for another try", conversation.name)
            reason = None
        finally:
            follower.cancel()
        await self._flush_one(conversation)
        if reason is not None:
            self.event("ended")
            log.warning("direct line conversation %s ended: %s", conversation.name, reason)
            with contextlib.suppress(DirectoryError):
                await self._store.end(self.owner, conversation.id, reason, self._clock())
        elif not stopping.is_set():
            with contextlib.suppress(DirectoryError):
                await self._store.release(self.owner, [conversation.id])
        self.conversations.pop(conversation.id, None)
        self._tasks.pop(conversation.id, None)
        self._wanted.pop(conversation.id, None)
        self._changed.set()

    def _stop_conversations(self, conversation_ids: Iterable[str], why: str) -> None:
        for conversation_id in conversation_ids:
            conversation = self.conversations.get(conversation_id)
            if conversation is not None and not conversation.stopping.is_set():
                log.warning("direct line: letting go of conversation %s: %s", conversation_id[:24], why)
                self.event("lost")
                conversation.stopping.set()

    async def _renew_loop(self, stopping: asyncio.Event) -> None:
        s = self.settings
        while True:
            await asyncio.sleep(s.lease_seconds / 3)
            try:
                held = await self._store.renew(self.owner, self._clock(), s.lease_seconds)
            except DirectoryError as exc:
                silent = time.monotonic() - self._last_renewed
                log.warning("direct line leases not renewed for %.1f s: %s", silent, exc)
                if silent > s.lease_seconds * 0.8:
                    self._stop_conversations(list(self.conversations), "its lease could not be renewed in time")
                continue
            self._last_renewed = time.monotonic()
            self._check_held(held)

    async def _flush_loop(self, stopping: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(self.settings.flush_seconds)
            try:
                await self._flush()
            except DirectoryError as exc:
                log.warning("direct line watermarks not written yet (they are kept, and written later): %s", exc)

    async def _flush(self) -> None:
        """Write every published watermark that moved since the last write (one transaction)."""
        pairs = [
            (c.id, c.watermark)
            for c in list(self.conversations.values())
            if c.watermark is not None and c.watermark != c.stored_watermark
        ]
        if not pairs:
            return
        written = [(cid, wm) for cid, wm in pairs if wm is not None]
        lost = await self._store.advance_many(self.owner, written, self._clock())
        for cid, wm in written:
            conversation = self.conversations.get(cid)
            if conversation is not None and cid not in lost:
                conversation.stored_watermark = wm
        self._stop_conversations(lost, "another replica took its lease")

    async def _flush_one(self, conversation: DirectLineConversation) -> None:
        watermark = conversation.watermark
        if watermark is None or watermark == conversation.stored_watermark:
            return
        with contextlib.suppress(DirectoryError):
            lost = await self._store.advance_many(self.owner, [(conversation.id, watermark)], self._clock())
            if conversation.id not in lost:
                conversation.stored_watermark = watermark

    # --- reporting ------------------------------------------------------------------------------------------------

    def _on_change(self, _conversation: DirectLineConversation) -> None:
        self._changed.set()

    async def _report_loop(self, stopping: asyncio.Event) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            if self._board is ConnectionStatus.ONLINE:
                self._report(ConnectionStatus.ONLINE, self._detail())
            await asyncio.sleep(0.2)  # at most five board updates a second, however many conversations change

    def _detail(self) -> str:
        counts = self.counts()
        shown = " ".join(f"{state}={n}" for state, n in counts.items() if n)
        return shown or "no conversations"

    def _report(self, status: ConnectionStatus, detail: str) -> None:
        self._board = status
        self._metrics.status.set(PLATFORM, BOARD_NAME, status, detail)


class _DirectLineCollector(Collector):
    """Per-state gauges and event counters of every Direct Line connector on one registry."""

    def __init__(self) -> None:
        self.connectors: weakref.WeakSet[DirectLineConnector] = weakref.WeakSet()

    def collect(self) -> Iterable[Metric]:
        gauge = GaugeMetricFamily(
            "relaybus_directline_conversations", "Direct Line conversations held, per state", labels=("state",)
        )
        events = CounterMetricFamily(
            "relaybus_directline_events",
            "Direct Line lifecycle events (refreshes, expired_tokens, reconnects, collisions, polls, parked, ...)",
            labels=("event",),
        )
        totals: Counter[str] = Counter()
        happened: Counter[str] = Counter()
        for connector in list(self.connectors):
            totals.update(connector.counts())
            happened.update(connector.events)
        for state in STATES:
            gauge.add_metric([state], totals.get(state, 0))
        for name, n in sorted(happened.items()):
            events.add_metric([name], n)
        return [gauge, events]


_collectors: weakref.WeakKeyDictionary[CollectorRegistry, _DirectLineCollector] = weakref.WeakKeyDictionary()


def _collector_for(registry: CollectorRegistry) -> _DirectLineCollector:
    collector = _collectors.get(registry)
    if collector is None:
        collector = _collectors[registry] = _DirectLineCollector()
        registry.register(collector)
    return collector
