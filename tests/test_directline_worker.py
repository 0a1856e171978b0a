"""The Direct Line connector inside the worker: settings, the connector list, /readyz and /metrics, and
`python -m worker run` as real processes against the sandbox Direct Line (SIGKILL and restart; two replicas
sharing one directory through leases)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from devstack.sandbox.directline import DirectLineSandbox
from shared.directline import want
from shared.errors import ConfigurationError
from tests.directline_helpers import QUEUE, eventually
from worker.directline.connector import DirectLineConnector
from worker.handoff import Handoff
from worker.metrics import Metrics
from worker.publish import EnvelopePublisher
from worker.publish.memory import MemoryBackend
from worker.runtime import Worker, build_connectors, queues_in_use
from worker.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
SECRET = "dl-secret-Zq81xY"


def test_directline_secret_enables_the_section_and_the_platform(tmp_path: Path) -> None:
    env = {
        "DIRECTLINE_SECRET": SECRET,
        "DIRECTLINE_LEASE_SECONDS": "12",
        "RELAYBUS_LOCAL_QUEUE_PATH": str(tmp_path / "q.db"),
    }
    settings = load_settings(env)
    assert settings.directline is not None and settings.directline.lease_seconds == 12.0
    assert settings.platforms == {"directline"}
    assert queues_in_use(settings) == [QUEUE]
    metrics = Metrics()
    handoff = Handoff(EnvelopePublisher(MemoryBackend()), metrics=metrics)
    connectors = build_connectors(settings, handoff, metrics)
    assert [type(c) for c in connectors] == [DirectLineConnector]
    assert load_settings({"RELAYBUS_LOCAL_QUEUE_PATH": str(tmp_path / "q.db")}).directline is None


def test_a_bad_directline_setting_names_the_setting(tmp_path: Path) -> None:
    base = {"DIRECTLINE_SECRET": SECRET, "RELAYBUS_LOCAL_QUEUE_PATH": str(tmp_path / "q.db")}
    with pytest.raises(ConfigurationError) as info:
        load_settings({**base, "DIRECTLINE_REFRESH_FRACTION": "0.9"})
    assert info.value.setting == "DIRECTLINE_REFRESH_FRACTION"
    with pytest.raises(ConfigurationError) as info:
        load_settings({**base, "DIRECTLINE_BASE_URL": "http://directline.example.com/v3/directline"})
    assert info.value.setting == "DIRECTLINE_BASE_URL"


def test_worker_settings_never_prints_the_secret(tmp_path: Path) -> None:
    env = {**_clean_env(), "DIRECTLINE_SECRET": SECRET, "RELAYBUS_LOCAL_QUEUE_PATH": str(tmp_path / "q.db")}
    done = subprocess.run(
        [sys.executable, "-m", "worker", "settings"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert SECRET not in done.stdout + done.stderr
    shown = json.loads(done.stdout)
    assert shown["directline"]["DIRECTLINE_SECRET"] == "**********"
    bad = subprocess.run(
        [sys.executable, "-m", "worker", "settings"],
        cwd=tmp_path,
        env={**env, "DIRECTLINE_LEASE_SECONDS": "-1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "setting DIRECTLINE_LEASE_SECONDS:" in bad.stderr
    assert SECRET not in bad.stdout + bad.stderr


async def test_readyz_and_metrics_count_conversations_per_state(tmp_path: Path) -> None:
    async with DirectLineSandbox() as sandbox:
        cids = [await sandbox.start_conversation() for _ in range(3)]
        store = tmp_path / "directline.db"
        for cid in cids:
            want(store, cid)
        env = {
            "DIRECTLINE_SECRET": sandbox.secret,
            "DIRECTLINE_BASE_URL": sandbox.base_url,
            "DIRECTLINE_STORE_PATH": str(store),
            "DIRECTLINE_SCAN_SECONDS": "0.05",
            "RELAYBUS_LOCAL_QUEUE_PATH": str(tmp_path / "q.db"),
            "RELAYBUS_HTTP_PORT": "0",
        }
        worker = Worker(load_settings(env), backend=MemoryBackend(), replies=None)
        stopping = asyncio.Event()
        task = asyncio.create_task(worker.run(stopping))
        try:
            await eventually(lambda: worker.health is not None and bool(worker.health.port), what="http")
            assert worker.health is not None
            url = f"http://127.0.0.1:{worker.health.port}"
            async with httpx.AsyncClient() as http:

                async def ready() -> httpx.Response:
                    deadline = time.monotonic() + 10
                    while True:
                        answer = await http.get(url + "/readyz")
                        if (answer.status_code == 200 and "Online=3" in answer.text) or time.monotonic() > deadline:
                            return answer
                        await asyncio.sleep(0.05)

                answer = await ready()
                assert answer.status_code == 200, answer.text
                entries = answer.json()["connections"]
                assert [(e["platform"], e["connection"], e["status"]) for e in entries] == [
                    ("directline", "conversations", "Online")
                ]
                assert entries[0]["detail"] == "Online=3"  # counts, no conversation ids
                assert not any(cid in answer.text for cid in cids)
                text = (await http.get(url + "/metrics")).text
            assert 'relaybus_directline_conversations{state="Online"} 3.0' in text
            assert 'relaybus_directline_conversations{state="Parked"} 0.0' in text
            assert 'relaybus_directline_events_total{event="taken"} 3.0' in text
            assert not any(cid in text for cid in cids)  # one series per state, never per conversation
        finally:
            stopping.set()
            async with asyncio.timeout(30):
                result = await task
        assert result.ok


# --- real processes ---------------------------------------------------------------------------------------


def _clean_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLACK_", "TEAMS_", "RELAYBUS_", "DIRECTLINE_", "ServiceBus"))
    }
    env["PYTHONPATH"] = str(ROOT)
    return env


def _worker_env(sandbox: DirectLineSandbox, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        **_clean_env(),
        "DIRECTLINE_SECRET": sandbox.secret,
        "DIRECTLINE_BASE_URL": sandbox.base_url,
        "DIRECTLINE_STORE_PATH": str(tmp_path / "directline.db"),
        "DIRECTLINE_SCAN_SECONDS": "0.1",
        "DIRECTLINE_FLUSH_SECONDS": "0.1",
        "DIRECTLINE_LEASE_SECONDS": "2",
        "DIRECTLINE_RECONNECT_MIN_SECONDS": "0.05",
        "DIRECTLINE_RECONNECT_MAX_SECONDS": "0.2",
        "RELAYBUS_LOCAL_QUEUE_PATH": str(tmp_path / "queue.db"),
        "RELAYBUS_HTTP_PORT": "0",
        "RELAYBUS_LOG_LEVEL": "INFO",
        **extra,
    }


@contextlib.asynccontextmanager
async def worker_process(env: dict[str, str], cwd: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        "run",
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=open(cwd / f"worker-{time.monotonic_ns()}.log", "wb"),  # noqa: SIM115 (the child owns it)
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def queue_dump(queue: Path, cwd: Path) -> list[dict[str, object]]:
    """`python -m worker queue dump directline-activities`, parsed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        "queue",
        "--path",
        str(queue),
        "dump",
        QUEUE,
        cwd=cwd,
        env=_clean_env(),
        stdout=asyncio.subprocess.PIPE,
    )
    lines, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
    return [json.loads(line) for line in lines.decode().splitlines()]


def _directory(path: Path) -> dict[str, tuple[str | None, str | None, float | None]]:
    """{conversation id: (watermark, owner, lease_until)} read from the directory file."""
    if not path.exists():
        return {}
    conn = sqlite3.connect(path, timeout=10)
    try:
        rows = conn.execute("SELECT conversation_id, watermark, owner, lease_until FROM conversations").fetchall()
    except sqlite3.OperationalError:
        return {}
    finally:
        conn.close()
    return {cid: (wm, owner, until) for cid, wm, owner, until in rows}


async def wait_until(predicate: object, within: float, what: str) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.1)


def _texts(messages: list[dict[str, object]]) -> list[str]:
    out = []
    for m in messages:
        body = m["body"]
        envelope = json.loads(body) if isinstance(body, str) else body
        assert isinstance(envelope, dict)
        out.append(str(envelope["payload"].get("text")))
    return out


async def test_a_sigkilled_worker_restarts_from_the_stored_watermark_and_publishes_each_activity_once(
    tmp_path: Path,
) -> None:
    queue, store = tmp_path / "queue.db", tmp_path / "directline.db"
    async with DirectLineSandbox() as sandbox:
        cid = await sandbox.start_conversation()
        want(store, cid)
        env = _worker_env(sandbox, tmp_path)
        said: list[str] = []
        async with worker_process(env, tmp_path) as first:
            await sandbox.wait_for(lambda: sandbox.socket_open(cid), within=30)
            for i in range(20):
                said.append(f"before {i}")
                await sandbox.say(cid, said[-1])
            await wait_until(lambda: (_directory(store)[cid][0] or "0") == "20", 15, "the watermark stored")
            for i in range(10):  # published or not, stored watermark or not: the kill comes in the middle
                said.append(f"racing {i}")
                await sandbox.say(cid, said[-1])
            first.send_signal(signal.SIGKILL)
            await first.wait()
        stored = _directory(store)[cid][0]
        assert stored is not None and int(stored) >= 20
        for i in range(10):
            said.append(f"while down {i}")
            await sandbox.say(cid, said[-1])
        async with worker_process(env, tmp_path) as second:
            # the dead worker's lease lapses (2 s), the new one takes the conversation and resumes
            await wait_until(lambda: _directory(store)[cid][0] == "40", 20, "the watermark after the restart")
            second.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(second.wait(), 30) == 0
    messages = await queue_dump(queue, tmp_path)
    assert _texts(messages) == said  # every activity, in order, exactly once
    assert len({m["message_id"] for m in messages}) == len(said)
    assert {m["session_id"] for m in messages} == {cid}
    logs = "".join(p.read_text() for p in tmp_path.glob("worker-*.log"))
    assert sandbox.secret not in logs


async def test_two_worker_processes_never_hold_the_same_conversation_and_take_over_a_dead_ones(
    tmp_path: Path,
) -> None:
    queue, store = tmp_path / "queue.db", tmp_path / "directline.db"
    lease = 2.0
    async with DirectLineSandbox() as sandbox:
        cids = [await sandbox.start_conversation() for _ in range(8)]
        for cid in cids:
            want(store, cid)
        env = _worker_env(sandbox, tmp_path, DIRECTLINE_LEASE_SECONDS=str(lease))
        async with worker_process(env, tmp_path) as a, worker_process(env, tmp_path) as b:
            pids = {a.pid, b.pid}

            def owners() -> dict[str, str | None]:
                return {cid: row[1] for cid, row in _directory(store).items()}

            def held_by(pid: int) -> list[str]:
                return [cid for cid, owner in owners().items() if owner and f"-{pid}-" in owner]

            await wait_until(lambda: all(owners().get(c) for c in cids), 30, "every conversation held")
            await sandbox.wait_for(lambda: all(sandbox.socket_open(c) for c in cids), within=30)
            # the lease owner is one process per conversation, and only one socket each (no collision)
            for _ in range(20):
                assert all(any(f"-{pid}-" in (o or "") for pid in pids) for o in owners().values())
                await asyncio.sleep(0.05)
            assert sandbox.stats.collisions == 0
            for n, cid in enumerate(cids):
                await sandbox.say(cid, f"first {n}")
            victim = a if held_by(a.pid) else b
            survivor = b if victim is a else a
            taken = held_by(victim.pid)
            assert taken
            victim.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            await victim.wait()
            await wait_until(lambda: sorted(held_by(survivor.pid)) == sorted(cids), lease * 4, "the take-over")
            took = time.monotonic() - killed_at
            assert took < lease + 2.0, f"took {took:.1f} s with a {lease} s lease"
            for n, cid in enumerate(cids):
                await sandbox.say(cid, f"second {n}")
            await wait_until(lambda: all(_directory(store)[c][0] == "2" for c in cids), 20, "every watermark at 2")
            survivor.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(survivor.wait(), 30) == 0
        assert sandbox.stats.collisions == 0
    messages = await queue_dump(queue, tmp_path)
    texts = _texts(messages)
    assert sorted(texts) == sorted([f"first {n}" for n in range(8)] + [f"second {n}" for n in range(8)])
    for cid in cids:  # per conversation, in order
        mine = [t for m, t in zip(messages, texts, strict=True) if m["session_id"] == cid]
        assert [t.split()[0] for t in mine] == ["first", "second"]
