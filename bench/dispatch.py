"""Per-invocation overhead on the function side: microseconds per envelope, beside a bare handler call.

Rows, each over the same pre-built Slack `message` envelopes (no I/O anywhere: the handlers do nothing):

- bare handler call: `await handler(ctx)` with a context built beforehand (the floor);
- `Bot.dispatch`, one string-keyed listener: the registry lookup, the self-event check, the context upgrade;
- `Bot.dispatch` with a global middleware, a regex text matcher and the typed `ctx.event` read by the handler;
- `process_message`: what the Service Bus trigger runs per message: the body parsed into an `Envelope`
  (pydantic), the route check, the context, the dispatch, the settlement decision.

    python -m bench.dispatch [--quick]
    python -m bench --only dispatch
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from azure.functions.servicebus import ServiceBusMessage

from bench.report import Figure, Table, render
from functions import Bot, Context, FunctionSettings, ReplyClients, SlackContext
from functions.triggers import process_message
from shared.envelope import Envelope, Kind, Platform, utcnow
from shared.routes import ROUTES


def _envelope(i: int) -> Envelope:
    return Envelope(
        dedupe_key=f"Ev{i:08d}",
        platform=Platform.SLACK,
        kind=Kind.EVENTS_API,
        event_type="message",
        event_id=f"Ev{i:08d}",
        tenant="T1",
        conversation_key="C1",
        received_at=utcnow(),
        payload={
            "type": "event_callback",
            "event_id": f"Ev{i:08d}",
            "api_app_id": "A1",
            "team_id": "T1",
            "event": {"type": "message", "text": f"deploy service-{i} now", "user": "U1", "channel": "C1", "ts": "1.2"},
        },
    )


async def _time(n: int, step: Callable[[int], Awaitable[Any]]) -> float:
    for i in range(min(n, 500)):  # warm-up
        await step(i)
    started = time.perf_counter()
    for i in range(n):
        await step(i)
    return (time.perf_counter() - started) / n * 1e6


async def run(quick: bool) -> list[Table]:
    n = 2_000 if quick else 20_000
    settings = FunctionSettings.from_env({})
    clients = ReplyClients(settings)
    envelopes = [_envelope(i) for i in range(n)]
    contexts = [Context.for_envelope(e, settings, clients) for e in envelopes]
    messages = [
        ServiceBusMessage(
            body=e.to_body(), message_id=e.message_id, delivery_count=1, user_properties={}, application_properties={}
        )
        for e in envelopes
    ]
    route = ROUTES.get("slack_events")

    async def bare(ctx: Context) -> None:
        return None

    plain = Bot()
    plain.slack.event("message")(bare)

    rich = Bot()

    @rich.middleware
    async def tag(ctx: Context, next_: Callable[[], Awaitable[Any]]) -> Any:
        ctx.extras["seen"] = True
        return await next_()

    @rich.slack.message(re.compile(r"^deploy (\S+)"))
    async def deploy(ctx: SlackContext) -> None:
        _ = (ctx.event.user, ctx.extras["matches"][0])

    rows = [
        ("bare handler call", lambda i: bare(contexts[i])),
        ("Bot.dispatch, one string-keyed listener", lambda i: plain.dispatch(contexts[i])),
        (
            "Bot.dispatch + middleware + regex matcher + typed ctx.event",
            lambda i: rich.dispatch(Context.for_envelope(envelopes[i], settings, clients)),
        ),
        (
            "process_message (body parse, route check, dispatch)",
            lambda i: process_message(rich, route, messages[i], settings, clients),
        ),
    ]
    results = [(name, await _time(n, step)) for name, step in rows]
    floor = results[0][1]
    table = Table("Function side: dispatch overhead per envelope", ["path", "µs per envelope", "vs bare call"])
    for name, micros in results:
        table.add(name, Figure(micros, "µs"), Figure(micros / floor if floor else None, "x"))
    table.note(f"{n:,} Slack message envelopes, one event loop, no I/O; the handlers do nothing")
    return [table]


def main() -> None:
    parser = argparse.ArgumentParser(description="function-side dispatch overhead")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(render(asyncio.run(run(args.quick))))


if __name__ == "__main__":
    main()
