"""Worker metrics, exported as Prometheus text on /metrics.

Built on `prometheus_client` with one registry per `Metrics` instance, so tests and several workers in
one process never share counters.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from math import inf as INF

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from worker.lifecycle import ConnectionStatus, StatusBoard

REPLY_OUTCOMES = ("answered", "error", "invalid", "late", "unknown")
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _Counters:
    """Counters bumped once or more per envelope: plain numbers, exported by `collect()`.

    prometheus_client's `labels().inc()` takes a lock and builds the label tuple on every call (7 % of
    the Slack hot path when profiled); the worker updates its counters from one event loop, so a dict
    of numbers does the same job.
    """

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, *labels: str) -> None:
        values = self.values
        values[labels] = values.get(labels, 0.0) + 1.0

    def add(self, labels: tuple[str, ...], n: float) -> None:
        values = self.values
        values[labels] = values.get(labels, 0.0) + n

    def family(self) -> Metric:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, value in list(self.values.items()):
            family.add_metric([str(v) for v in labels], value)
        return family


class _Latency:
    """A histogram with fixed buckets per platform, the same way (Prometheus `le` buckets)."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = tuple(buckets)
        self.counts: dict[str, list[int]] = {}
        self.sums: dict[str, float] = {}

    def observe(self, platform: str, seconds: float) -> None:
        counts = self.counts.get(platform)
        if counts is None:
            counts = self.counts[platform] = [0] * (len(self.bounds) + 1)
            self.sums[platform] = 0.0
        counts[bisect_left(self.bounds, seconds)] += 1
        self.sums[platform] += seconds

    def family(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.documentation, labels=("platform",))
        for platform, counts in list(self.counts.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*self.bounds, INF), counts, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == INF else repr(bound), float(cumulative)))
            family.add_metric([str(platform)], buckets, self.sums[platform])
        return family


class _HotCollector(Collector):
    def __init__(self, parts: Sequence[_Counters | _Latency]) -> None:
        self._parts = parts

    def collect(self) -> Iterable[Metric]:
        return [part.family() for part in self._parts]


class Metrics:
    def __init__(self, status: StatusBoard | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.status = status or StatusBoard()
        r = self.registry
        self._received = _Counters(
            "relaybus_envelopes_received", "Envelopes received from a platform", ["platform", "kind"]
        )
        self._duplicates = _Counters(
            "relaybus_duplicates_dropped", "Envelopes dropped as duplicates", ["platform", "kind"]
        )
        self._published = _Counters(
            "relaybus_envelopes_published", "Envelopes made durable in a queue", ["platform", "route"]
        )
        self._acked = _Counters("relaybus_envelopes_acked", "Envelopes acked to the platform", ["platform", "kind"])
        self._latency = _Latency(
            "relaybus_publish_latency_seconds", "Time from publish start to durable", _LATENCY_BUCKETS
        )
        self._app_received = _Counters(
            "relaybus_app_envelopes_received",
            "Envelopes received, by app (only for the named apps of RELAYBUS_SLACK_APPS / RELAYBUS_TEAMS_BOTS)",
            ["platform", "app"],
        )
        self._app_published = _Counters(
            "relaybus_app_envelopes_published",
            "Envelopes made durable, by app (only for the named apps of RELAYBUS_SLACK_APPS / RELAYBUS_TEAMS_BOTS)",
            ["platform", "app"],
        )
        r.register(
            _HotCollector(
                [
                    self._received,
                    self._duplicates,
                    self._published,
                    self._acked,
                    self._latency,
                    self._app_received,
                    self._app_published,
                ]
            )
        )
        self._failed = Counter(
            "relaybus_publish_failed",
            "Publishes that failed (envelope not acked)",
            ["platform", "kind", "error"],
            registry=r,
        )
        self._invalid = Counter(
            "relaybus_invalid_frames", "Frames rejected before becoming envelopes", ["platform", "reason"], registry=r
        )
        self._dropped = Counter(
            "relaybus_retry_buffer_dropped",
            "Envelopes a platform cannot redeliver that were lost because the retry buffer was full",
            ["platform"],
            registry=r,
        )
        self._kept = Gauge(
            "relaybus_retry_buffer_envelopes", "Envelopes kept in memory until durable (not redeliverable)", registry=r
        )
        self._breaker = Gauge(
            "relaybus_publish_breaker_open",
            "1 while publishes pause because the queue backend keeps failing",
            registry=r,
        )
        self._breaker_opened = Counter(
            "relaybus_publish_breaker_opened", "Times the publish circuit breaker opened", registry=r
        )
        self._replies = Counter(
            "relaybus_replies",
            "Replies received on this worker's reply session: answered (sent to the platform), error (the handler "
            "failed: fallback), invalid (wrong shape or too large: fallback), late (after the fallback: dropped), "
            "unknown (no such envelope waits here: dropped)",
            ["outcome"],
            registry=r,
        )
        for outcome in REPLY_OUTCOMES:
            self._replies.labels(outcome)
        self._fallbacks = Counter(
            "relaybus_answer_fallbacks",
            "Synchronous answers replaced by the platform's fallback (Slack: plain ack; Teams: status 500), by reason: "
            "timeout (no reply within the deadline), handler_error, invalid",
            ["platform", "reason"],
            registry=r,
        )
        self._state = Gauge(
            "relaybus_connection_state",
            "1 for the current state of each connection",
            ["platform", "connection", "state"],
            registry=r,
        )

    # Labels may be `StrEnum` members (`Platform.SLACK`): they are strings, and cheaper than `.value`.

    def received(self, platform: str, kind: str) -> None:
        self._received.inc(platform, kind)

    def duplicate(self, platform: str, kind: str) -> None:
        self._duplicates.inc(platform, kind)

    def published(self, platform: str, route: str, seconds: float) -> None:
        self._published.inc(platform, route)
        self._latency.observe(platform, seconds)

    def app_received(self, platform: str, app: str) -> None:
        self._app_received.inc(platform, app)

    def app_published(self, platform: str, app: str) -> None:
        self._app_published.inc(platform, app)

    def acked(self, platform: str, kind: str, n: int = 1) -> None:
        self._acked.add((platform, kind), n)

    def failed(self, platform: str, kind: str, error: str) -> None:
        self._failed.labels(platform, kind, error).inc()

    def invalid(self, platform: str, reason: str) -> None:
        self._invalid.labels(platform, reason).inc()

    def retry_buffer_dropped(self, platform: str) -> None:
        self._dropped.labels(platform).inc()

    def set_retry_buffer(self, kept: int) -> None:
        self._kept.set(kept)

    def reply(self, outcome: str) -> None:
        """A reply received by the inbox: one of `REPLY_OUTCOMES`."""
        self._replies.labels(outcome).inc()

    def answer_fallback(self, platform: str, reason: str) -> None:
        """The platform got the fallback instead of an answer (reason: timeout, handler_error, invalid)."""
        self._fallbacks.labels(platform, reason).inc()

    def breaker(self, is_open: bool) -> None:
        """Called on each breaker transition."""
        self._breaker.set(1 if is_open else 0)
        if is_open:
            self._breaker_opened.inc()

    def value(self, name: str, **labels: str) -> float:
        """Read one sample (for tests and the dev summary); 0 when absent."""
        v = self.registry.get_sample_value(name, labels)
        return v or 0.0

    def total(self, name: str, **labels: str) -> float:
        """Sum of a counter's samples whose labels include `labels`."""
        total = 0.0
        for metric in self.registry.collect():
            for sample in metric.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total

    def render(self) -> bytes:
        """Prometheus text exposition, with connection states refreshed from the status board."""
        self._state.clear()
        for conn in self.status.snapshot():
            for state in ConnectionStatus:
                self._state.labels(conn.platform, conn.name, state.value).set(1 if conn.status is state else 0)
        return generate_latest(self.registry)
