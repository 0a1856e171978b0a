"""The README's handler examples run as tests, so they cannot rot.

Every ```python block of README.md whose first line is `# handlers/<name>.py` is written, as it is, into a
temporary handlers package (its `from handlers import bot` pointing at that package's own `Bot`), imported,
and driven with envelopes through the sandboxes.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from devstack.sandbox.slack import SlackSandbox
from devstack.sandbox.teams import TeamsSandbox
from functions import Context, FunctionSettings, ReplyClients
from shared.envelope import Envelope, Kind, Platform, utcnow
from tests.factories import slack_event

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"```python\n(# handlers/(\w+)\.py\n.*?)```", re.DOTALL)


def readme_modules() -> dict[str, str]:
    return {name: code for code, name in BLOCK.findall((ROOT / "README.md").read_text(encoding="utf-8"))}


@pytest.fixture
def readme_bot(tmp_path: Path) -> Iterator[ModuleType]:
    package = tmp_path / "readme_handlers"
    package.mkdir()
    (package / "__init__.py").write_text("from functions import Bot\n\nbot = Bot()\nmodules = bot.discover(__name__)\n")
    modules = readme_modules()
    assert modules, "README.md has no `# handlers/…` examples"
    for name, code in modules.items():
        (package / f"{name}.py").write_text(code.replace("from handlers import bot", "from readme_handlers import bot"))
    sys.path.insert(0, str(tmp_path))
    try:
        yield importlib.import_module("readme_handlers")
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m == "readme_handlers" or m.startswith("readme_handlers.")]:
            del sys.modules[name]


def test_every_readme_example_module_imports_and_registers(readme_bot: ModuleType) -> None:
    assert readme_bot.modules == [f"readme_handlers.{name}" for name in sorted(readme_modules())]
    assert readme_bot.bot.listeners(), "the examples register listeners"


def _slack(kind: str, payload: dict[str, Any]) -> Envelope:
    return Envelope.model_validate({**slack_event().model_dump(), "kind": kind, "payload": payload})


async def test_the_billing_example_against_the_sandboxes(readme_bot: ModuleType) -> None:
    bot = readme_bot.bot
    async with SlackSandbox() as slack, TeamsSandbox() as teams:
        settings = FunctionSettings.from_env(
            {
                "SLACK_BOT_TOKEN": slack.bot_token,
                "SLACK_API_URL": slack.api_url,
                "TEAMS_STATIC_TOKEN": teams.bot_token,
                "BOT_CONNECTOR_ALLOWED_HOSTS": "127.0.0.1",
            }
        )
        clients = ReplyClients(settings)
        try:

            async def run(envelope: Envelope) -> Any:
                return await bot.dispatch(Context.for_envelope(envelope, settings, clients))

            url = slack.new_response_url()
            await run(_slack("slash_commands", {"command": "/invoice", "text": "INV-7", "response_url": url}))
            event = slack_event().model_dump()
            event["payload"]["event"].update(type="message", text="refund 42", ts="9.9")
            event["payload"]["event"].pop("bot_id", None)
            await run(Envelope.model_validate(event))
            activity = teams.new_activity("invoice please")
            activity["conversation"]["conversationType"] = "personal"
            await run(
                Envelope(
                    dedupe_key="c/a",
                    platform=Platform.TEAMS,
                    kind=Kind.ACTIVITY,
                    received_at=utcnow(),
                    payload=activity,
                )
            )
        finally:
            await clients.aclose()
        said = {(c.method, str(c.body.get("text"))) for c in slack.replies}
        assert ("response_url", "Invoice INV-7: paid") in said
        assert ("chat.postMessage", "Refund of 42 noted") in said
        assert [r.body.get("type") for r in teams.replies if r.body] == ["typing", "message"]
