"""The sandbox Teams hub in a process of its own, driven over stdin/stdout (used by `bench.teams`).

Running the hub apart from the client under test gives every client the same deal: the hub never
shares an event loop (or a core) with the code being measured. Protocol, one JSON object per line:

    -> (on start)                    {"base_url": ..., "app_id": ..., "bot_token": ...}
    <- {"op": "sessions", "n": 1}    -> {"ok": true}            once n sessions are ready
    <- {"op": "burst", "n": 20000}   -> {"rate": per_second}    n activities back to back, until the last 200
    <- {"op": "paced", "seconds": 5, "rate": 1000}
                                     -> {"latencies": [seconds, ...]} send -> status-200 completion

    python -m bench.teams_hub
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from devstack.sandbox.teams import TeamsSandbox


async def burst(sandbox: TeamsSandbox, count: int) -> float:
    """Activities per second: `count` sent back to back, until the last completion."""
    acked = len(sandbox.acked)
    started = time.perf_counter()
    for i in range(count):
        await sandbox.send_activity(sandbox.new_activity(f"burst {i}"))
    await sandbox.wait_acked(acked + count, within=120)
    return count / (sandbox.last_ack_at - started)


async def paced(sandbox: TeamsSandbox, seconds: float, rate: float) -> list[float]:
    """Send at `rate`/s in 10 ms ticks for `seconds`; return the completion latencies (s)."""
    sandbox.latencies.clear()
    acked = len(sandbox.acked)
    per_tick = max(1, int(rate / 100))
    ticks = int(seconds * 100)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for tick in range(ticks):
        for _ in range(per_tick):
            await sandbox.send_activity(sandbox.new_activity("paced"))
        delay = start + (tick + 1) / 100 - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
    await sandbox.wait_acked(acked + ticks * per_tick, within=60)
    return list(sandbox.latencies)


async def serve() -> None:
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)

    def say(data: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(data) + "\n")
        sys.stdout.flush()

    async with TeamsSandbox(deadline_ms=30000) as sandbox:
        say({"base_url": sandbox.base_url, "app_id": sandbox.app_id, "bot_token": sandbox.bot_token})
        while line := await stdin.readline():
            command = json.loads(line)
            op = command["op"]
            if op == "sessions":
                await sandbox.wait_sessions(int(command["n"]), within=20)
                say({"ok": True})
            elif op == "burst":
                say({"rate": await burst(sandbox, int(command["n"]))})
            elif op == "paced":
                say({"latencies": await paced(sandbox, float(command["seconds"]), float(command["rate"]))})
            else:
                say({"error": f"unknown op {op!r}"})


if __name__ == "__main__":
    asyncio.run(serve())
