"""Figures beside their references: the small API every benchmark module implements.

A benchmark module (`bench/publish.py`, `bench/coldstart.py`, `bench/slack.py`, `bench/teams.py`, ...)
exposes one coroutine and is listed in `bench.__main__.MODULES`:

    async def run(quick: bool) -> list[Table]

`quick` asks for a short smoke run (a few seconds in all: fewer samples, same code paths). Each call
gets its own event loop. A module that cannot measure something (a dependency not written yet) says
so with a note in its table rather than raising; an exception is reported as that module's failure
and the other modules still run.

Building a table:

    table = Table("Publish throughput", ["backend", "publishers", "envelopes/s", "p99"])
    table.add("local", 1, Figure(6200, "/s", Target(">=", 5000)), Figure(3.1, "ms"))
    table.note("local: SQLite WAL, synchronous=FULL")

A `Figure` is a measured value with its unit and, optionally, the `Target` it is judged against: it
renders as `6,200 /s  ≥ 5,000 ✓`. Plain cells (str, int, float) render as they are. `Table.to_json()`
gives what `python -m bench` writes to `bench-results/`.

Helpers: `percentile()` (nearest-rank on sorted samples), `machine()` (what the figures were measured
on), `render()` (tables as aligned text).
"""

from __future__ import annotations

import math
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

CHECK = "✓"
CROSS = "✗"


@dataclass(frozen=True, slots=True)
class Target:
    """A reference a figure must reach: `Target(">=", 5000)` or `Target("<=", 50)`."""

    op: Literal[">=", "<="]
    value: float

    def met(self, measured: float) -> bool:
        return measured >= self.value if self.op == ">=" else measured <= self.value

    def __str__(self) -> str:
        return f"{'≥' if self.op == '>=' else '≤'} {_number(self.value)}"


@dataclass(frozen=True, slots=True)
class Figure:
    """A measured value (None: not measured), its unit, and the target it is judged against."""

    value: float | None
    unit: str = ""
    target: Target | None = None

    @property
    def passed(self) -> bool | None:
        """True/False against the target; None without a target or a value."""
        if self.target is None or self.value is None:
            return None
        return self.target.met(self.value)

    def render(self) -> str:
        if self.value is None:
            return "n/a"
        text = f"{_number(self.value)} {self.unit}".rstrip()
        if self.target is not None:
            text += f"  {self.target} {CHECK if self.passed else CROSS}"
        return text

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"value": self.value, "unit": self.unit}
        if self.target is not None:
            out["target"] = {"op": self.target.op, "value": self.target.value}
            out["passed"] = self.passed
        return out


Cell = str | int | float | Figure | None


@dataclass(slots=True)
class Table:
    """One titled table of results, with free-text notes under it."""

    title: str
    columns: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: Cell) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{self.title}: {len(cells)} cells for {len(self.columns)} columns")
        self.rows.append(list(cells))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def figures(self) -> list[Figure]:
        return [c for row in self.rows for c in row if isinstance(c, Figure)]

    @property
    def failed(self) -> int:
        """How many figures missed their target."""
        return sum(1 for f in self.figures() if f.passed is False)

    def render(self) -> str:
        cells = [[_cell(c) for c in row] for row in self.rows]
        widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(self.columns)]
        lines = [f"== {self.title}", "  ".join(h.ljust(w) for h, w in zip(self.columns, widths, strict=True))]
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
        lines += [f"   note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "columns": self.columns,
            "rows": [[c.to_json() if isinstance(c, Figure) else c for c in row] for row in self.rows],
            "notes": self.notes,
        }


def render(tables: Sequence[Table]) -> str:
    return "\n\n".join(t.render() for t in tables)


def percentile(samples: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of unsorted samples; NaN when there are none."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        model = platform.processor()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model or "unknown",
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "load_average": [round(x, 2) for x in load],
    }


def _cell(value: Cell) -> str:
    if value is None:
        return ""
    if isinstance(value, Figure):
        return value.render()
    if isinstance(value, float):
        return _number(value)
    return str(value)


def _number(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if value == int(value) and abs(value) >= 100:
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"
