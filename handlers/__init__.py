"""Your bot: the handlers the function app dispatches envelopes to. Edit these modules.

`bot` is the registry; `handlers/slack.py` and `handlers/teams.py` register the example handlers on
it with decorators such as `@bot.slack.event("app_mention")` and `@bot.teams.message`.
"""

from shared.dispatch import Bot

bot = Bot()

# Importing the modules registers their handlers on `bot`.
from handlers import slack, teams  # noqa: E402

__all__ = ["bot", "slack", "teams"]
