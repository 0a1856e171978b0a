"""The files generated from the route table (infra/queues.json, the emulator's Config.json) and the CLI."""

from __future__ import annotations

import argparse
import json
from datetime import timedelta
from pathlib import Path

import pytest

from devstack.infra import (
    EMULATOR_CONFIG,
    EMULATOR_LIMITS,
    QUEUES_JSON,
    REPO_ROOT,
    add_infra_parser,
    check_files,
    emulator_adjustments,
    generate_files,
    iso_duration,
    render_files,
    run_infra_command,
)
from shared.routes import REPLIES, ROUTES


def _load(relative: Path) -> dict[str, object]:
    data = json.loads((REPO_ROOT / relative).read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_committed_files_equal_a_fresh_render() -> None:
    assert check_files(REPO_ROOT) == [], "run `python -m devstack infra generate`"
    for relative, text in render_files().items():
        assert (REPO_ROOT / relative).read_text(encoding="utf-8") == text


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (timedelta(seconds=30), "PT30S"),
        (timedelta(seconds=60), "PT1M"),
        (timedelta(minutes=10), "PT10M"),
        (timedelta(hours=1), "PT1H"),
        (timedelta(hours=1, minutes=1, seconds=1), "PT1H1M1S"),
        (timedelta(days=14), "P14D"),
        (timedelta(days=7, hours=2), "P7DT2H"),
    ],
)
def test_iso_durations(value: timedelta, expected: str) -> None:
    assert iso_duration(value) == expected


@pytest.mark.parametrize("value", [timedelta(0), timedelta(seconds=-1), timedelta(milliseconds=1500)])
def test_iso_duration_rejects_what_service_bus_cannot_hold(value: timedelta) -> None:
    with pytest.raises(ValueError, match="positive whole number"):
        iso_duration(value)


def test_queues_json_is_the_route_table() -> None:
    queues = _load(QUEUES_JSON)["queues"]
    assert isinstance(queues, list)
    assert [q["function"] for q in queues] == [r.name for r in ROUTES]
    for route, queue in zip(ROUTES, queues, strict=True):
        assert queue["name"] == route.queue
        assert queue["appSetting"] == route.setting
        assert queue["requiresSession"] is route.sessions
        assert queue["maxDeliveryCount"] == route.max_delivery_count
        assert queue["lockDuration"] == iso_duration(route.lock_duration)
        assert queue["duplicateDetectionHistoryTimeWindow"] == iso_duration(route.duplicate_detection_window)
        assert queue["requiresDuplicateDetection"] is True
        assert queue["deadLetteringOnMessageExpiration"] is True


def test_queues_json_has_the_reply_queue_from_the_contract() -> None:
    reply = _load(QUEUES_JSON)["replyQueue"]
    assert reply == {
        "name": REPLIES.queue,
        "appSetting": REPLIES.setting,
        "requiresSession": True,
        "maxDeliveryCount": REPLIES.max_delivery_count,
        "lockDuration": iso_duration(REPLIES.lock_duration),
        "requiresDuplicateDetection": False,
        "deadLetteringOnMessageExpiration": False,
        "defaultMessageTimeToLive": iso_duration(REPLIES.time_to_live),
        "description": reply["description"],
    }
    assert isinstance(reply["description"], str) and reply["description"]


def test_the_emulator_has_the_reply_queue_after_the_routes() -> None:
    (namespace,) = _load(EMULATOR_CONFIG)["UserConfig"]["Namespaces"]  # type: ignore[index]
    *_, reply = namespace["Queues"]
    assert reply["Name"] == REPLIES.queue
    props = reply["Properties"]
    assert props["RequiresSession"] is True
    assert props["DefaultMessageTimeToLive"] == iso_duration(REPLIES.time_to_live)  # within the emulator's 1 h
    assert props["DeadLetteringOnMessageExpiration"] is False
    assert props["RequiresDuplicateDetection"] is False
    assert props["LockDuration"] == iso_duration(REPLIES.lock_duration)
    assert props["MaxDeliveryCount"] == REPLIES.max_delivery_count
    assert set(props) == set(namespace["Queues"][0]["Properties"])  # the emulator wants every property


def test_emulator_config_is_the_route_table_within_the_emulator_limits() -> None:
    config = _load(EMULATOR_CONFIG)["UserConfig"]
    assert isinstance(config, dict)
    assert config["Logging"] == {"Type": "Console"}
    (namespace,) = config["Namespaces"]
    assert namespace["Name"] == "sbemulatorns"
    assert [q["Name"] for q in namespace["Queues"]] == [*(r.queue for r in ROUTES), REPLIES.queue]
    limits = EMULATOR_LIMITS
    for route, queue in zip(ROUTES, namespace["Queues"][:-1], strict=True):
        props = queue["Properties"]
        assert set(props) == {
            "DeadLetteringOnMessageExpiration",
            "DefaultMessageTimeToLive",
            "DuplicateDetectionHistoryTimeWindow",
            "ForwardDeadLetteredMessagesTo",
            "ForwardTo",
            "LockDuration",
            "MaxDeliveryCount",
            "RequiresDuplicateDetection",
            "RequiresSession",
        }
        assert props["RequiresSession"] is route.sessions
        assert props["RequiresDuplicateDetection"] is True
        assert props["DeadLetteringOnMessageExpiration"] is True
        assert props["LockDuration"] == iso_duration(route.lock_duration)  # within 5 s..5 min for every route
        assert props["MaxDeliveryCount"] == min(route.max_delivery_count, limits.max_delivery_count)
        window = min(route.duplicate_detection_window, limits.max_duplicate_detection_window)
        assert props["DuplicateDetectionHistoryTimeWindow"] == iso_duration(window)
        assert props["DefaultMessageTimeToLive"] == "PT1H"  # the emulator's maximum
        assert props["ForwardTo"] == props["ForwardDeadLetteredMessagesTo"] == ""


def test_generate_reports_what_the_emulator_clamps() -> None:
    notes = emulator_adjustments()
    clamped = [r for r in ROUTES if r.duplicate_detection_window > EMULATOR_LIMITS.max_duplicate_detection_window]
    assert len(notes) == len(clamped)
    assert all("PT5M" in note for note in notes)


def test_generate_then_check_in_an_empty_tree(tmp_path: Path) -> None:
    assert sorted(map(str, check_files(tmp_path))) == sorted(
        f"{p}: missing (run `python -m devstack infra generate`)" for p in (QUEUES_JSON, EMULATOR_CONFIG)
    )
    assert sorted(generate_files(tmp_path)) == sorted([QUEUES_JSON, EMULATOR_CONFIG])
    assert check_files(tmp_path) == []
    assert generate_files(tmp_path) == []  # idempotent: nothing rewritten


def test_check_lists_a_stale_file_with_a_diff(tmp_path: Path) -> None:
    generate_files(tmp_path)
    path = tmp_path / QUEUES_JSON
    path.write_text(path.read_text().replace('"maxDeliveryCount": 10', '"maxDeliveryCount": 3', 1))
    (problem,) = check_files(tmp_path)
    assert problem.startswith(f"{QUEUES_JSON}: differs from the route table")
    assert '-      "maxDeliveryCount": 3,' in problem
    assert '+      "maxDeliveryCount": 10,' in problem


def _cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_infra_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_generate_and_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_infra_command(_cli(["infra", "check", "--root", str(tmp_path)])) == 1
    assert "missing" in capsys.readouterr().err
    assert run_infra_command(_cli(["infra", "generate", "--root", str(tmp_path)])) == 0
    out = capsys.readouterr().out
    assert f"wrote {QUEUES_JSON}" in out
    assert "note: slack-events: duplicate detection window PT10M is PT5M" in out
    assert run_infra_command(_cli(["infra", "check", "--root", str(tmp_path)])) == 0
    assert "match the route table" in capsys.readouterr().out


def test_cli_defaults_to_this_checkout() -> None:
    args = _cli(["infra", "check"])
    assert args.root == REPO_ROOT
    assert run_infra_command(args) == 0
