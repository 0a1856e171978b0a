"""What the worker expects of a platform connector (Slack, Teams, later Direct Line).

A connector holds its platform's sockets, turns frames into `Envelope`s and passes each one to
`Handoff.deliver(envelope, answer)` together with the action that answers the platform (writes the ack or
the completion): the handoff calls it with the verdict the ack rule allows, so a connector cannot ack by
itself. It reports each connection's lifecycle on the shared `StatusBoard` and counts rejected frames with
`Metrics.invalid()`.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from shared.errors import RelaybusError


class FatalConnectorError(RelaybusError):
    """A connector cannot go on (invalid credentials, Socket Mode disabled): stop with this message."""


class Connector(Protocol):
    platform: str

    async def run(self, stopping: asyncio.Event) -> None:
        """Hold the connections until `stopping` is set, then drain gracefully and return.

        Draining: stop reading new frames, finish in-flight publishes and their acks, close the
        sockets. Anything not acked is redelivered by the platform. Raises `FatalConnectorError`
        when the connector cannot go on; any other exception is a bug.
        """
        ...
