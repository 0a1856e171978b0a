"""`python -m bench`: run every benchmark module in one go, print the figures beside their references,
and write them to `bench-results/<timestamp>.json`.

    python -m bench                     # everything, full length
    python -m bench --quick             # a short smoke run of everything
    python -m bench --only publish      # some modules (names as in MODULES, without "bench.")

A module listed here that does not exist yet is reported as skipped. The exit status is 1 when a module
crashed (or, with `--strict`, when a figure missed its target), else 0.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any, cast

from bench.report import Table, machine, render

MODULES: tuple[str, ...] = (
    "bench.publish",
    "bench.slack",
    "bench.teams",
    "bench.replies",
    "bench.dispatch",
    "bench.coldstart",
    "bench.efficiency",
    "bench.fleet",
    "bench.directline",
    "bench.live",
)
"""Every benchmark module, in the order they run (each exposes `async def run(quick: bool) -> list[Table]`)."""

RESULTS_DIR = Path("bench-results")


def _load(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            return None
        raise


def run_module(name: str, quick: bool) -> dict[str, Any]:
    """Run one module in its own event loop; never raises (a failure is part of the result)."""
    started = time.perf_counter()
    try:
        module = _load(name)
        if module is None:
            return {"status": "skipped", "reason": "module not written yet", "tables": []}
        run = cast(Callable[[bool], Awaitable[list[Table]]], module.run)
        tables = asyncio.run(_as_coroutine(run, quick))
    except Exception as exc:
        return {
            "status": "error",
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
            "tables": [],
            "seconds": round(time.perf_counter() - started, 2),
        }
    return {"status": "ok", "tables": tables, "seconds": round(time.perf_counter() - started, 2)}


async def _as_coroutine(run: Callable[[bool], Awaitable[list[Table]]], quick: bool) -> list[Table]:
    return await run(quick)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these modules (e.g. publish coldstart)")
    parser.add_argument("--json", type=Path, help="results file (default bench-results/<timestamp>.json)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a figure misses its target")
    args = parser.parse_args(argv)

    names = list(MODULES)
    if args.only:
        wanted = {n if n.startswith("bench.") else f"bench.{n}" for n in args.only}
        unknown = wanted - set(names)
        if unknown:
            parser.error(f"unknown module(s): {', '.join(sorted(unknown))}; known: {', '.join(MODULES)}")
        names = [n for n in names if n in wanted]

    host = machine()
    started_at = datetime.now(UTC)
    print(
        f"relaybus benchmarks{' (quick)' if args.quick else ''}: {host['cpus']} CPUs ({host['cpu_model']}), "
        f"Python {host['python']}, load average {host['load_average']}\n",
        flush=True,
    )
    results: dict[str, Any] = {}
    crashed = missed = 0
    for name in names:
        result = run_module(name, args.quick)
        tables: list[Table] = result["tables"]
        if result["status"] == "skipped":
            print(f"== {name}: skipped ({result['reason']})\n", flush=True)
        elif result["status"] == "error":
            crashed += 1
            print(f"== {name}: FAILED {result['error']}\n{result['traceback']}", flush=True)
        else:
            print(render(tables) + f"\n   ({name} took {result['seconds']} s)\n", flush=True)
            missed += sum(t.failed for t in tables)
        results[name] = {**result, "tables": [t.to_json() for t in tables]}

    path = args.json or RESULTS_DIR / f"{started_at:%Y%m%dT%H%M%SZ}{'-quick' if args.quick else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"started_at": started_at.isoformat(), "quick": args.quick, "machine": host, "modules": results}
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{missed} figure(s) missed their target, {crashed} module(s) failed; results in {path}")
    if crashed or (args.strict and missed):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
