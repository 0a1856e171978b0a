"""Several Slack apps and Teams bots in one deployment: how their settings are named (worker and functions alike).

    RELAYBUS_SLACK_APPS=sales,hr          SLACK_APP_TOKEN__SALES=xapp-…   SLACK_CONNECTIONS__SALES=4
                                          SLACK_APP_TOKEN__HR=xapp-…      (the function app: SLACK_BOT_TOKEN__SALES …)
    RELAYBUS_TEAMS_BOTS=support           TEAMS_APP_ID__SUPPORT=…         TEAMS_APP_PASSWORD__SUPPORT=…

- An app's name is 1-32 letters, digits, `-` or `_`, case-insensitive (kept in lower case): it is the
  `Envelope.app` of everything the app receives, the prefix of its connections (`slack/sales/0`), and, in upper
  case with `-` as `_`, the suffix of its settings (`__SALES`).
- Every setting of the single-app form can be given per app with that suffix. A credential (`SECRETS_PER_APP`
  of each platform) must be: it is never taken from the unsuffixed setting. Other settings fall back to the
  unsuffixed value, then to the default (`SLACK_API_URL`, `TEAMS_RING`, timings …).
- A named app's envelopes carry its name in `Envelope.app`, and their stable dedupe key (the queue MessageId) is
  prefixed with it (`sales:Ev123`, `support:<conversation>/<activity>`): two bots in one Teams conversation see
  the same activity ids, and each must get its own message. Replicas of one app share the prefix, so they still
  dedupe against each other.
- Without the list setting, the single-app settings (`SLACK_APP_TOKEN`, `TEAMS_APP_ID` …) describe one app
  with no name (`Envelope.app` None), exactly as before; with it, the unsuffixed credentials are refused
  (which app would they belong to?).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from shared.errors import ConfigurationError

SLACK_APPS = "RELAYBUS_SLACK_APPS"
TEAMS_BOTS = "RELAYBUS_TEAMS_BOTS"
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
MAX_APPS = 500


def suffix(app: str) -> str:
    """The settings suffix of an app: `sales` → `__SALES`, `north-eu` → `__NORTH_EU`."""
    return "__" + app.upper().replace("-", "_")


def app_names(env: Mapping[str, str], setting: str) -> tuple[str, ...]:
    """The app names listed in `setting` (comma-separated), validated; () when it is unset or empty."""
    raw = env.get(setting, "")
    if not raw.strip():
        return ()
    names = [n.strip().lower() for n in raw.split(",")]
    if any(not n for n in names):
        raise ConfigurationError(setting, "lists app names separated by commas, without empty entries")
    for name in names:
        if not _NAME.fullmatch(name):
            raise ConfigurationError(
                setting, f"{name!r} is not an app name (1-32 letters, digits, - or _, starting with a letter or digit)"
            )
    seen: dict[str, str] = {}
    for name in names:
        key = suffix(name)
        if key in seen:
            raise ConfigurationError(setting, f"{name!r} and {seen[key]!r} name the same settings ({key})")
        seen[key] = name
    if len(names) > MAX_APPS:
        raise ConfigurationError(setting, f"lists {len(names)} apps; at most {MAX_APPS} per deployment")
    return tuple(names)


def app_section(
    env: Mapping[str, str], app: str, settings: Iterable[str], per_app_only: Iterable[str] = ()
) -> dict[str, str]:
    """The settings of one app: each of `settings` from `NAME__APP`, else (unless it is in `per_app_only`) from
    the unsuffixed `NAME`. Empty values count as unset. Keys are the unsuffixed names (the models' aliases)."""
    tail = suffix(app)
    only = set(per_app_only)
    section: dict[str, str] = {}
    for name in settings:
        value = env.get(name + tail, "")
        if value == "" and name not in only:
            value = env.get(name, "")
        if value != "":
            section[name] = value
    return section


def unknown_suffixed(env: Mapping[str, str], settings: Iterable[str], apps: Iterable[str]) -> str | None:
    """The first `NAME__X` setting (NAME one of `settings`) whose X is no listed app: a typo to report."""
    known = {suffix(a) for a in apps}
    names = set(settings)
    for key, value in env.items():
        name, sep, rest = key.partition("__")
        if sep and name in names and value != "" and "__" + rest not in known and rest.isupper():
            return key
    return None


def setting_for(name: str, app: str | None) -> str:
    """The setting an app reads `name` from (`SLACK_APP_TOKEN__SALES`; the name itself for the unnamed app)."""
    return name if app is None else name + suffix(app)
