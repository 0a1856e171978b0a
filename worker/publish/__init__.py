"""The publishing interface every connector goes through.

The rule this module exists for: `publish()` returns only once the envelope is durable in its queue.
That is the moment a connector may acknowledge the platform (see `worker.handoff`, the one place that
applies this rule). A backend raises `TransientPublishError` or `PermanentPublishError`; it never
returns normally for an envelope it did not store.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from shared.envelope import Envelope
from shared.queue_message import QueueMessage, build_message
from shared.routes import ROUTES, Route, RouteTable

__all__ = ["EnvelopePublisher", "Publisher", "QueueBackend", "QueueMessage", "build_message"]


class QueueBackend(Protocol):
    """Stores messages durably. Implementations: `LocalQueueBackend`, `ServiceBusBackend`."""

    async def send(self, message: QueueMessage) -> None:
        """Return once `message` is durable; raise a `PublishError` otherwise."""
        ...

    async def close(self) -> None: ...


class Publisher(Protocol):
    async def publish(self, envelope: Envelope) -> Route:
        """Return (the route used) only once the envelope is durable in its queue."""
        ...

    async def close(self) -> None: ...


class EnvelopePublisher:
    """Routes envelopes with the route table and hands them to a backend."""

    def __init__(
        self,
        backend: QueueBackend,
        routes: RouteTable = ROUTES,
        queue_settings: Mapping[str, str] | None = None,
    ) -> None:
        self._backend = backend
        self._routes = routes
        self._queue_names = {route.name: route.queue_name(queue_settings) for route in routes}

    @property
    def backend(self) -> QueueBackend:
        return self._backend

    def queue_name(self, route: Route) -> str:
        return self._queue_names[route.name]

    async def publish(self, envelope: Envelope) -> Route:
        route = self._routes.route_for(envelope)
        await self._backend.send(build_message(envelope, route, self._queue_names[route.name]))
        return route

    async def close(self) -> None:
        await self._backend.close()
