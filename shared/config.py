"""The one settings loader, used by the worker, the function app and the local tools.

    env = environment(dotenv=Path(".env"))           # the process environment over an optional .env
    slack = load_section(SlackSettings, env)         # a pydantic model whose fields have setting aliases

Rules, the same everywhere:

- a setting is read by its alias (the Azure app setting name, e.g. `SLACK_APP_TOKEN`); a setting set to
  the empty string counts as unset (placeholders in `local.settings.json`, `KEY=` in `.env`);
- `.env` is read by python-dotenv (quotes, `export`, inline comments, multi-line values); the process
  environment wins over it;
- every problem is one `ConfigurationError`: `setting NAME: problem`, naming the first bad setting,
  never echoing a secret's value (aliases containing TOKEN, PASSWORD, SECRET, KEY or CONNECTION).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from shared.errors import ConfigurationError
from shared.redact import redact

M = TypeVar("M", bound=BaseModel)

_LEADING_SETTING = re.compile(r"^([A-Z][A-Z0-9_]{2,}(?:__[A-Za-z]+)?) (.+)$", re.DOTALL)
_SECRET_WORDS = ("TOKEN", "PASSWORD", "SECRET", "KEY", "CONNECTION")


def read_dotenv(path: Path) -> dict[str, str]:
    """KEY=VALUE pairs of a .env file (python-dotenv's syntax); {} when there is no such file."""
    if not path.is_file():
        return {}
    from dotenv import dotenv_values

    try:
        values = dotenv_values(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(str(path), f"cannot read the .env file: {type(exc).__name__}") from None
    return {key: value for key, value in values.items() if value is not None}


def environment(env: Mapping[str, str] | None = None, dotenv: Path | None = Path(".env")) -> dict[str, str]:
    """The process environment (or `env`) over an optional .env file: the environment wins."""
    merged = read_dotenv(dotenv) if dotenv is not None else {}
    merged.update(os.environ if env is None else env)
    return merged


def aliases(model: type[BaseModel]) -> set[str]:
    return {field.alias for field in model.model_fields.values() if field.alias}


def section_data(model: type[BaseModel], env: Mapping[str, str]) -> dict[str, Any]:
    """The settings of `env` that `model` reads (empty values dropped)."""
    names = aliases(model)
    return {key: value for key, value in env.items() if key in names and value != ""}


def load_section(model: type[M], env: Mapping[str, str], **extra: Any) -> M:
    """Validate the part of `env` that `model` reads (plus `extra` fields); raise `ConfigurationError`."""
    try:
        return model.model_validate({**section_data(model, env), **extra})
    except ValidationError as exc:
        raise configuration_error(exc, model) from None


def is_secret(setting: str) -> bool:
    upper = setting.upper()
    return any(word in upper for word in _SECRET_WORDS)


def configuration_error(exc: ValidationError, model: type[BaseModel]) -> ConfigurationError:
    """The first validation error as `setting NAME: problem`."""
    err = exc.errors(include_url=False)[0]
    loc = err["loc"]
    if loc:
        setting = str(loc[0])
        field = model.model_fields.get(setting)
        if field is not None and field.alias:
            setting = field.alias
    else:  # a model-level validator: its message starts with the setting it is about, or names the model's
        setting = str(getattr(model, "settings_name", model.__name__))
    problem = err["msg"].removeprefix("Value error, ")
    named = _LEADING_SETTING.match(problem) if not loc else None
    if named is not None:
        setting, problem = named.group(1), named.group(2)
    if err["type"] == "missing":
        problem = "is required"
    elif loc and "input" in err and not is_secret(setting) and isinstance(err["input"], str | int | float):
        problem = f"{problem} (got {err['input']!r})"
    return ConfigurationError(setting, redact(problem))
