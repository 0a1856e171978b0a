"""Cold start: how long importing the function app takes, next to a bare one-function app.

Each sample is a fresh interpreter (`python -c ...`) that times `import function_app` with
`time.perf_counter()` around the import: the part of a Functions cold start that our code controls
(the host and worker start-up come on top and are the same for both apps). Bytecode caches are warm
(one untimed run first), as they are after the first start of an instance. The figure is the median
of N samples; the target is relaybus ≤ 1.5x the bare app.

The bare app, generated in a temp dir, imports `azure.functions` and registers one Service Bus-triggered
function. A separate `-X importtime` run lists the modules that cost the most in relaybus's import.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

from bench.report import Figure, Table, Target

ROOT = Path(__file__).resolve().parent.parent
RATIO_TARGET = Target("<=", 1.5)

BARE_APP = """\
import azure.functions as func

app = func.FunctionApp()


@app.service_bus_queue_trigger(arg_name="msg", queue_name="%SLACK_EVENTS_QUEUE%", connection="ServiceBusConnection")
def slack_events(msg: func.ServiceBusMessage) -> None:
    pass
"""

_TIMER = "import time; t = time.perf_counter(); import function_app; print(f'{time.perf_counter() - t:.6f}')"


def _env() -> dict[str, str]:
    """A clean environment: no PYTHONPATH, unbuffered; app settings the function app may need."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.setdefault("SLACK_EVENTS_QUEUE", "slack-events")
    return env


async def _python(cwd: Path, *args: str) -> tuple[str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        cwd=cwd,
        env=_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"importing function_app in {cwd} failed: {err.decode(errors='replace')[-2000:]}")
    return out.decode(), err.decode()


async def import_seconds(app_dir: Path, samples: int) -> list[float]:
    """Import time of `function_app` in `app_dir`, one fresh interpreter per sample (after a warm-up)."""
    await _python(app_dir, "-c", _TIMER)
    return [float((await _python(app_dir, "-c", _TIMER))[0].strip()) for _ in range(samples)]


async def heaviest_imports(app_dir: Path, top: int = 6) -> list[tuple[str, float]]:
    """Modules imported directly by `function_app`, by cumulative import time in ms (`-X importtime`)."""
    _, err = await _python(app_dir, "-X", "importtime", "-c", "import function_app")
    entries: list[tuple[int, str, float]] = []  # (depth, module, cumulative ms), children before parents
    for line in err.splitlines():
        parts = line.split("|")
        if not line.startswith("import time:") or len(parts) != 3:
            continue
        try:
            cumulative = int(parts[1].strip())
        except ValueError:
            continue  # the header line
        name = parts[2].rstrip()
        entries.append((len(name) - len(name.lstrip()), name.strip(), cumulative / 1000))
    root = next((i for i, e in enumerate(entries) if e[1] == "function_app"), None)
    if root is None:
        return []
    depth = entries[root][0]
    children: list[tuple[str, float]] = []
    for child_depth, name, ms in reversed(entries[:root]):
        if child_depth <= depth:
            break
        if child_depth == depth + 2:
            children.append((name, ms))
    return sorted(children, key=lambda kv: kv[1], reverse=True)[:top]


async def run(quick: bool) -> list[Table]:
    samples = 3 if quick else 11
    table = Table(
        "Cold start: import function_app (fresh interpreter, median)",
        ["app", "import time", "vs bare app", "samples"],
    )
    if not (ROOT / "function_app.py").is_file():
        table.note("relaybus function_app.py is not there yet: nothing to measure")
        return [table]
    with tempfile.TemporaryDirectory(prefix="bare-app-") as tmp:
        bare_dir = Path(tmp)
        (bare_dir / "function_app.py").write_text(BARE_APP, encoding="utf-8")
        bare = statistics.median(await import_seconds(bare_dir, samples))
    ours_samples = await import_seconds(ROOT, samples)
    ours = statistics.median(ours_samples)
    table.add("relaybus function_app", Figure(ours * 1000, "ms"), Figure(ours / bare, "x", RATIO_TARGET), samples)
    table.add("bare one-function app", Figure(bare * 1000, "ms"), Figure(1.0, "x"), samples)
    heavy = await heaviest_imports(ROOT)
    if heavy:
        table.note("heaviest imports in relaybus: " + ", ".join(f"{name} {ms:.0f} ms" for name, ms in heavy))
    table.note(f"relaybus samples (ms): {', '.join(f'{s * 1000:.0f}' for s in sorted(ours_samples))}")
    return [table]
