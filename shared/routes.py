"""The route table: which queue each envelope goes to, and how each queue is configured.

This table is the one place to add a route. It drives:

- the worker's publisher (`ROUTES.route_for(envelope)`),
- `function_app.py` (one Service Bus–triggered function per route),
- the local queue (queue settings: sessions, max delivery count, lock duration, dedupe window),
- the Bicep queue list (`infra/`) and the Service Bus emulator's `Config.json` (generated and checked
  against this table by `python -m devstack infra` and by tests).

A queue's *name* can be overridden per deployment through the app setting named by `setting`
(for example `SLACK_EVENTS_QUEUE`), which is also what the function triggers read (`%SLACK_EVENTS_QUEUE%`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from shared.envelope import Envelope, Kind, Platform
from shared.errors import RoutingError


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    """Function name and route id (letters, digits and underscores)."""
    queue: str
    """Default queue name."""
    setting: str
    """App setting that may override the queue name; the function trigger reads `%setting%`."""
    platform: Platform
    kinds: frozenset[Kind]
    sessions: bool = False
    """Ordered per conversation: the envelope's conversation key becomes the SessionId."""
    max_delivery_count: int = 10
    lock_duration: timedelta = timedelta(seconds=60)
    duplicate_detection_window: timedelta = timedelta(minutes=10)
    description: str = ""
    responds: bool = False
    """Its envelopes can be answered synchronously (`Envelope.accepts_response`): the worker waits for the
    function's answer within the platform's deadline, so these functions want always-ready instances."""

    def accepts(self, envelope: Envelope) -> bool:
        return envelope.platform == self.platform and envelope.kind in self.kinds

    def queue_name(self, settings: Mapping[str, str] | None = None) -> str:
        """The queue name in effect: the app setting if set, else the default."""
        if settings is not None:
            value = settings.get(self.setting)
            if value:
                return value
        return self.queue

    def session_id(self, envelope: Envelope) -> str | None:
        """SessionId on session queues (every message there needs one); None elsewhere."""
        if not self.sessions:
            return None
        return envelope.conversation_key or envelope.tenant or "default"


@dataclass(frozen=True)
class RouteTable:
    routes: tuple[Route, ...]
    _by_name: dict[str, Route] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        by_name: dict[str, Route] = {}
        queues: set[str] = set()
        for route in self.routes:
            if route.name in by_name:
                raise ValueError(f"duplicate route name {route.name!r}")
            if route.queue in queues:
                raise ValueError(f"two routes share queue {route.queue!r}")
            if not (timedelta(seconds=20) <= route.duplicate_detection_window <= timedelta(days=7)):
                raise ValueError(f"route {route.name}: duplicate detection window must be 20 s to 7 days")
            if not (timedelta(seconds=5) <= route.lock_duration <= timedelta(minutes=5)):
                raise ValueError(f"route {route.name}: lock duration must be 5 s to 5 minutes")
            by_name[route.name] = route
            queues.add(route.queue)
        object.__setattr__(self, "_by_name", by_name)

    def __iter__(self) -> Iterator[Route]:
        return iter(self.routes)

    def __len__(self) -> int:
        return len(self.routes)

    def get(self, name: str) -> Route:
        return self._by_name[name]

    def route_for(self, envelope: Envelope) -> Route:
        """The route for an envelope; where two take its platform and kind, the one whose `responds`
        matches `envelope.accepts_response`."""
        fallback: Route | None = None
        for route in self.routes:
            if route.accepts(envelope):
                if route.responds == envelope.accepts_response:
                    return route
                fallback = fallback or route
        if fallback is not None:
            return fallback
        raise RoutingError(f"no route for platform={envelope.platform} kind={envelope.kind}")

    def by_queue(self, queue_name: str, settings: Mapping[str, str] | None = None) -> Route:
        for route in self.routes:
            if route.queue_name(settings) == queue_name:
                return route
        raise RoutingError(f"no route uses queue {queue_name!r}")


ROUTES = RouteTable(
    (
        Route(
            name="slack_events",
            queue="slack-events",
            setting="SLACK_EVENTS_QUEUE",
            platform=Platform.SLACK,
            kinds=frozenset({Kind.EVENTS_API}),
            sessions=True,
            description="Slack Events API callbacks, ordered per channel",
        ),
        Route(
            name="slack_interactive",
            queue="slack-interactive",
            setting="SLACK_INTERACTIVE_QUEUE",
            platform=Platform.SLACK,
            kinds=frozenset({Kind.INTERACTIVE}),
            lock_duration=timedelta(seconds=30),
            description="Slack block actions, shortcuts and view submissions",
        ),
        Route(
            name="slack_answers",
            queue="slack-answers",
            setting="SLACK_ANSWERS_QUEUE",
            platform=Platform.SLACK,
            kinds=frozenset({Kind.INTERACTIVE}),
            lock_duration=timedelta(seconds=30),
            responds=True,
            description="Slack interactions answered in the ack: view submissions, external select options",
        ),
        Route(
            name="slack_commands",
            queue="slack-commands",
            setting="SLACK_COMMANDS_QUEUE",
            platform=Platform.SLACK,
            kinds=frozenset({Kind.SLASH_COMMANDS}),
            lock_duration=timedelta(seconds=30),
            responds=True,
            description="Slack slash commands (an instant answer may ride in the ack)",
        ),
        Route(
            name="teams_activities",
            queue="teams-activities",
            setting="TEAMS_ACTIVITIES_QUEUE",
            platform=Platform.TEAMS,
            kinds=frozenset({Kind.ACTIVITY}),
            sessions=True,
            description="Teams message and conversation activities, ordered per conversation",
        ),
        Route(
            name="teams_invokes",
            queue="teams-invokes",
            setting="TEAMS_INVOKES_QUEUE",
            platform=Platform.TEAMS,
            kinds=frozenset({Kind.INVOKE}),
            lock_duration=timedelta(seconds=30),
            responds=True,
            description="Teams invoke activities (Adaptive Card actions, message extensions, task modules)",
        ),
        Route(
            name="directline_activities",
            queue="directline-activities",
            setting="DIRECTLINE_ACTIVITIES_QUEUE",
            platform=Platform.DIRECTLINE,
            kinds=frozenset({Kind.ACTIVITY}),
            sessions=True,
            description="Direct Line bot activities (an agent's answers, cards, typing), ordered per conversation",
        ),
    )
)


@dataclass(frozen=True, slots=True)
class ReplyQueue:
    """The session-enabled queue functions send synchronous answers to; each worker process reads its own
    session (`ReplyAddress.session_id`). Answers expire after `time_to_live`: a dead worker's are never
    delivered to its successor (another session) and vanish quickly."""

    queue: str = "relaybus-replies"
    setting: str = "RELAYBUS_REPLY_QUEUE"
    time_to_live: timedelta = timedelta(seconds=30)
    lock_duration: timedelta = timedelta(seconds=30)
    max_delivery_count: int = 3

    def queue_name(self, settings: Mapping[str, str] | None = None) -> str:
        if settings is not None and settings.get(self.setting):
            return settings[self.setting]
        return self.queue


REPLIES = ReplyQueue()
