"""Your bot: the handlers the function app dispatches envelopes to. Edit these modules, or add your own.

`bot` is the registry. Every module in this folder is imported by `bot.discover` below (no list to
edit): a new `handlers/billing.py` that does `from handlers import bot` and decorates its functions is
found as it is. Modules whose name starts with `_` are skipped (helpers).
"""

from functions import Bot

bot = Bot()
modules = bot.discover(__name__)

__all__ = ["bot", "modules"]
