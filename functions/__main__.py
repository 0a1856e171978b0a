"""The function app's command line: `python -m functions settings [--file local.settings.json]`.

    settings  validate the function app's settings, as `function_app.py` does at start, and print them
              as JSON with secrets masked; `--file` reads the `Values` of a `local.settings.json` (what
              `func start` puts in the environment) instead of the process environment

Exit codes: 0 the settings are valid; 2 a wrong setting (`relaybus: setting NAME: problem`), a file that
cannot be used, or a usage error. Never a traceback, never a secret's value.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from functions.settings import FunctionSettings
from shared.errors import ConfigurationError
from shared.redact import redact


class SettingsFileError(Exception):
    """A `local.settings.json` that cannot be read as settings."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m functions",
        description="relaybus function app: check the settings function_app.py validates at start",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{settings}")
    settings = sub.add_parser("settings", help="validate the function app's settings and print them, secrets masked")
    settings.add_argument(
        "--file",
        type=Path,
        default=None,
        metavar="local.settings.json",
        help="read the Values of this file instead of the environment",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        values = read_values(args.file) if args.file is not None else dict(os.environ)
        settings = FunctionSettings.from_env(values)
    except ConfigurationError as exc:
        print(f"relaybus: {redact(str(exc))}", file=sys.stderr)
        return 2
    except SettingsFileError as exc:
        print(f"relaybus: {redact(str(exc))}", file=sys.stderr)
        return 2
    print(redact(json.dumps(describe(settings), indent=2)))
    return 0


def read_values(path: Path) -> dict[str, str]:
    """The `Values` of a `local.settings.json`, as the environment `func start` would give the app."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise SettingsFileError(f"{path}: no such file (copy local.settings.sample.json to start one)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsFileError(f"{path}: cannot read it ({type(exc).__name__})") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SettingsFileError(f"{path}: not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})") from None
    except RecursionError:
        raise SettingsFileError(f"{path}: not valid JSON (nested too deeply)") from None
    if not isinstance(document, dict):
        raise SettingsFileError(f'{path}: expected a JSON object with a "Values" object')
    if document.get("IsEncrypted") is True:
        raise SettingsFileError(f"{path}: its Values are encrypted (run `func settings decrypt` first)")
    values = document.get("Values")
    if not isinstance(values, dict):
        raise SettingsFileError(f'{path}: no "Values" object (the app settings live under "Values")')
    out: dict[str, str] = {}
    for name, value in values.items():
        if not isinstance(value, str):
            raise ConfigurationError(name, f"must be a string in {path} (got a JSON {_json_type(value)})")
        out[name] = value
    return out


def describe(settings: FunctionSettings) -> dict[str, Any]:
    """The settings by app setting name (secrets masked), and under `effective` the allowlists in force
    (defaults filled in) and whether loopback reply targets are allowed (`sandbox`: SLACK_API_URL on loopback)."""
    data: dict[str, Any] = settings.model_dump(mode="json", by_alias=True, exclude={"teams"})
    if settings.teams is not None:
        data.update(settings.teams.model_dump(mode="json", by_alias=True))
    data["effective"] = {
        "SLACK_RESPONSE_URL_ALLOWED_HOSTS": list(settings.response_url_hosts),
        "BOT_CONNECTOR_ALLOWED_HOSTS": list(settings.service_url_hosts),
        "sandbox": settings.sandbox,
    }
    return data


def _json_type(value: object) -> str:
    names: Mapping[type, str] = {bool: "boolean", int: "number", float: "number", list: "array", dict: "object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


if __name__ == "__main__":
    sys.exit(main())
