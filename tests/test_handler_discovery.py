"""`Bot.discover`: every module of a handlers package is imported (no list to edit), helpers (`_name`) are
skipped, and a module that cannot be imported is one `HandlerLoadError` line naming the file and line."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import handlers
from functions import Bot, HandlerLoadError
from tests.factories import slack_event

ROOT = Path(__file__).resolve().parent.parent

INIT = """\
from functions import Bot

bot = Bot()
modules = bot.discover(__name__)
"""


def handler_module(event: str, name: str) -> str:
    return textwrap.dedent(
        f"""\
        from functions import Context
        from mybot import bot

        ran: list[str] = []


        @bot.slack.event("{event}")
        async def {name}(ctx: Context) -> None:
            ran.append("{name}")
        """
    )


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[dict[str, str]], Path]]:
    """Write `mybot/` with the given modules into a directory on sys.path; forget it afterwards."""

    def forget() -> None:
        for name in [m for m in sys.modules if m == "mybot" or m.startswith("mybot.")]:
            del sys.modules[name]

    def write(modules: dict[str, str]) -> Path:
        root = tmp_path / "mybot"
        root.mkdir(exist_ok=True)
        (root / "__init__.py").write_text(INIT)
        for name, source in modules.items():
            (root / name).write_text(source)
        importlib.invalidate_caches()
        forget()
        return root

    monkeypatch.syspath_prepend(str(tmp_path))
    forget()
    yield write
    forget()


def test_every_module_is_found_without_a_list_and_helpers_are_skipped(
    package: Callable[[dict[str, str]], Path],
) -> None:
    root = package(
        {
            "alpha.py": handler_module("app_mention", "alpha_listener"),
            "_helpers.py": "raise RuntimeError('helpers are not imported by discovery')\n",
            "zeta.py": handler_module("app_mention", "zeta_listener"),
        }
    )
    mybot = importlib.import_module("mybot")
    assert mybot.modules == ["mybot.alpha", "mybot.zeta"]
    assert "mybot._helpers" not in sys.modules

    (root / "billing.py").write_text(handler_module("reaction_added", "billing_listener"))
    package({})  # re-import the package, as a new function app process would
    mybot = importlib.import_module("mybot")
    assert mybot.modules == ["mybot.alpha", "mybot.billing", "mybot.zeta"]
    assert mybot.bot.listeners() == [
        "slack event app_mention -> mybot.alpha.alpha_listener",
        "slack event app_mention -> mybot.zeta.zeta_listener",
        "slack event reaction_added -> mybot.billing.billing_listener",
    ]


async def test_listeners_of_one_key_in_several_modules_run_in_module_name_order(
    package: Callable[[dict[str, str]], Path],
) -> None:
    from functions import Context, ReplyClients
    from functions.settings import FunctionSettings

    package({"zeta.py": handler_module("app_mention", "zeta"), "alpha.py": handler_module("app_mention", "alpha")})
    mybot = importlib.import_module("mybot")
    settings = FunctionSettings.from_env({})
    assert await mybot.bot.dispatch(Context(slack_event(), settings, ReplyClients(settings)))
    alpha, zeta = sys.modules["mybot.alpha"], sys.modules["mybot.zeta"]
    assert (alpha.ran, zeta.ran) == (["alpha"], ["zeta"])
    assert [line.rsplit(".", 1)[1] for line in mybot.bot.listeners()] == ["alpha", "zeta"]


def load_error(package: Callable[[dict[str, str]], Path], modules: dict[str, str]) -> str:
    package(modules)
    with pytest.raises(HandlerLoadError) as err:
        importlib.import_module("mybot")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("cannot load handlers: ")
    return message


def test_a_name_error_names_the_file_and_line(package: Callable[[dict[str, str]], Path]) -> None:
    broken = "from mybot import bot\n\n\n@bot.slack.event('app_mention')\nasync def h(ctx): ...\n\nx = undefined_name\n"
    message = load_error(package, {"alpha.py": handler_module("app_mention", "a"), "broken.py": broken})
    assert message == ("cannot load handlers: mybot/broken.py line 7: NameError: name 'undefined_name' is not defined")


def test_a_syntax_error_names_the_file_and_line(package: Callable[[dict[str, str]], Path]) -> None:
    message = load_error(package, {"syntax.py": "from mybot import bot\n\ndef f(:\n    pass\n"})
    assert message.startswith("cannot load handlers: mybot/syntax.py line 3: SyntaxError: ")


def test_a_failure_inside_a_helper_names_the_helper(package: Callable[[dict[str, str]], Path]) -> None:
    modules = {
        "_shared.py": "import os\n\nLIMIT = int(os.environ.get('RELAYBUS_TEST_NOT_SET', 'ten'))\n",
        "uses_helper.py": "from mybot import bot\nfrom mybot._shared import LIMIT\n",
    }
    message = load_error(package, modules)
    assert message.startswith("cannot load handlers: mybot/_shared.py line 3: ValueError: invalid literal")


def test_a_registration_mistake_names_the_decorator_line(package: Callable[[dict[str, str]], Path]) -> None:
    source = "from mybot import bot\n\n\n@bot.slack.command('ticket')\nasync def h(ctx): ...\n"
    message = load_error(package, {"commands.py": source})
    assert message == "cannot load handlers: mybot/commands.py line 4: ValueError: slash commands start with '/'"


def test_the_message_is_one_line_and_redacted(package: Callable[[dict[str, str]], Path]) -> None:
    source = "raise RuntimeError('bad token\\nxoxb-1-2-Zq7secret\\n  on two lines')\n"
    message = load_error(package, {"leaky.py": source})
    assert message == "cannot load handlers: mybot/leaky.py line 1: RuntimeError: bad token *** on two lines"


def test_the_functions_host_sees_one_last_line(tmp_path: Path, package: Callable[[dict[str, str]], Path]) -> None:
    package({"broken.py": "from mybot import bot\nbot.slack.event('x')(undefined)\n"})
    proc = subprocess.run(
        [sys.executable, "-c", "import mybot"],
        env={"PYTHONPATH": f"{ROOT}:{tmp_path}", "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "functions.bot.HandlerLoadError: cannot load handlers: mybot/broken.py line 2: "
        "NameError: name 'undefined' is not defined"
    )


def test_the_shipped_handlers_are_discovered() -> None:
    assert handlers.modules == ["handlers.bridge", "handlers.slack", "handlers.teams", "handlers.tickets"]
    listeners = handlers.bot.listeners()
    assert "slack command /ticket -> handlers.tickets.open_ticket_modal" in listeners
    assert "teams activity message -> handlers.teams.echo" in listeners


def test_discovering_a_module_not_a_package_finds_nothing() -> None:
    assert Bot().discover("functions.settings") == []
