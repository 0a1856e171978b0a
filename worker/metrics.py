"""Worker metrics, exported as Prometheus text on /metrics.

Built on `prometheus_client` with one registry per `Metrics` instance, so tests and several workers in
one process never share counters.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from worker.lifecycle import ConnectionStatus, StatusBoard

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self, status: StatusBoard | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.status = status or StatusBoard()
        r = self.registry
        self._received = Counter(
            "relaybus_envelopes_received", "Envelopes received from a platform", ["platform", "kind"], registry=r
        )
        self._duplicates = Counter(
            "relaybus_duplicates_dropped", "Envelopes dropped as duplicates", ["platform", "kind"], registry=r
        )
        self._published = Counter(
            "relaybus_envelopes_published", "Envelopes made durable in a queue", ["platform", "route"], registry=r
        )
        self._acked = Counter(
            "relaybus_envelopes_acked", "Envelopes acked to the platform", ["platform", "kind"], registry=r
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
        self._latency = Histogram(
            "relaybus_publish_latency_seconds",
            "Time from publish start to durable",
            ["platform"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self._state = Gauge(
            "relaybus_connection_state",
            "1 for the current state of each connection",
            ["platform", "connection", "state"],
            registry=r,
        )
        # Hot path: `labels()` costs a lock and a tuple build per call, so the bound `inc`/`observe` of
        # each labelled child are cached (label sets are few: platform x kind/route).
        self._children: dict[tuple[str, ...], Callable[..., None]] = {}

    def _child(self, metric: Counter | Histogram, method: str, *labels: str) -> Callable[..., None]:
        key = (str(id(metric)), method, *labels)
        bound = self._children.get(key)
        if bound is None:
            bound = self._children[key] = getattr(metric.labels(*labels), method)
        return bound

    def received(self, platform: str, kind: str) -> None:
        self._child(self._received, "inc", platform, kind)()

    def duplicate(self, platform: str, kind: str) -> None:
        self._child(self._duplicates, "inc", platform, kind)()

    def published(self, platform: str, route: str, seconds: float) -> None:
        self._child(self._published, "inc", platform, route)()
        self._child(self._latency, "observe", platform)(seconds)

    def acked(self, platform: str, kind: str) -> None:
        self._child(self._acked, "inc", platform, kind)()

    def failed(self, platform: str, kind: str, error: str) -> None:
        self._failed.labels(platform, kind, error).inc()

    def invalid(self, platform: str, reason: str) -> None:
        self._invalid.labels(platform, reason).inc()

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
